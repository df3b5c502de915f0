"""Running queued jobs in the test process: what a worker does, without a worker."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tl_core.errors import StudioError
from tl_core.events import End, Progress, describe
from tl_core.runs.kinds import entry
from tl_core.runs.recording import job_spec, record
from tl_core.runs.store import Job, Store

WAITING = ("queued", "starting", "running")


@dataclass
class FakeContext:
    """A JobContext that records what the task reports (progress as done, total and the
    sentence a user reads)."""

    stop: bool = False
    steps: list[tuple[int, int, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def progress(self, progress: Progress) -> None:
        assert progress.done is not None and progress.total is not None
        self.steps.append((progress.done, progress.total, describe(progress)))

    def log(self, text: str) -> None:
        self.lines.append(text)

    def should_stop(self) -> bool:
        return self.stop


def run_job(store: Store, job: Job) -> Job:
    """Run one job's task here and write its end as the worker would."""
    try:
        result = entry(job.kind).load_task()(job_spec(store, job), FakeContext())
    except StudioError as exc:
        end = End("failed", "Failed", error=str(exc))
    else:
        end = End("finished", "Finished", result=result)
    record(store, job.id, Path(job.run_dir), end)  # as the server does: an import's data moves
    return store.job(job.id)  # type: ignore[return-value]


def finish_jobs(workspace: Path, kinds: tuple[str, ...] | None = None) -> list[Job]:
    """Run every waiting job that is not a training run (or of ``kinds``); return them."""
    store = Store(workspace)
    done = []
    for job in store.runs(statuses=WAITING, kind=None):
        if job.kind != "train" and (kinds is None or job.kind in kinds):
            done.append(run_job(store, job))
    return done


def inline_spawn(monkeypatch) -> list[str]:
    """Workers replaced: a claimed training run is only recorded (its id in the list
    returned); any other job runs to its end right away, in this process."""
    from tl_core.runs import supervisor

    spawned: list[str] = []

    def spawn(store: Store, run: Job) -> None:
        if run.kind == "train":
            spawned.append(run.id)
        else:
            run_job(store, run)

    monkeypatch.setattr(supervisor, "_spawn", spawn)
    return spawned


def wait_for(store: Store, run_id: str, statuses: tuple[str, ...], timeout: float = 240) -> Job:
    """The job once its status is one of ``statuses`` (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = store.job(run_id)
        if run is not None and run.status in statuses:
            return run
        time.sleep(0.1)
    raise AssertionError(f"{run_id} is still {store.job(run_id)}")


ENDED = ("finished", "failed", "stopped", "interrupted")


def wait_for_epoch(store: Store, run_id: str, n: int = 1, timeout: float = 300) -> None:
    """Until the run has recorded ``n`` epochs; fails if it ends first or takes too long."""
    deadline = time.monotonic() + timeout
    while len(store.epochs(run_id)) < n:
        run = store.job(run_id)
        assert run is not None and run.status not in ENDED, run
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
