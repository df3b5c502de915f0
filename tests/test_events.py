"""A job's typed events: each crosses a pipe as plain data and comes back equal; the words a
user reads are chosen from the phase; the store keeps the figures, not a sentence to parse."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tl_core import events
from tl_core.config import EpochRow, StepRow
from tl_core.events import (
    PHASES,
    End,
    Epoch,
    Log,
    Progress,
    Rewind,
    Started,
    Step,
    describe,
    from_dict,
    label,
)
from tl_core.runs.kinds import JobSpec, entry
from tl_core.runs.recording import record
from tl_core.runs.store import Store
from tl_core.runs.worker import JobContext

EVERY_EVENT = [
    Progress("decode", 12, 300),
    Progress("load"),
    Progress("familiar", total=24),
    Progress("import", 200, 1000, rate=100.0),
    Progress("recommend", 3, 10, detail="resnet18", part=(1, 4)),
    Progress("export", 2, 3, detail="Writing the zip"),
    Log("Decoded images: 12 take 1 MB on disk."),
    Step(StepRow(1, 3, 30, 0.5, 0.75, 0.001, 1.5)),
    Epoch(EpochRow(2, 12, 0.4, 0.8, 0.5, 0.7, 3.25)),
    Rewind(4),
    Started(1234, "this machine (host), CPU with 4 threads"),
    Started(99),
    End("finished", "Finished", result={"val_accuracy": 0.9, "notes": ["a"]}),
    End("failed", "Failed", error="The disk is full."),
    End("interrupted", "Interrupted: Ctrl-C", signal=2),
    End("stopped"),
]


@pytest.mark.parametrize("event", EVERY_EVENT, ids=lambda e: f"{e.T}-{e}"[:60])
def test_every_event_crosses_a_pipe_as_plain_data_and_comes_back_equal(event) -> None:
    wire = json.loads(json.dumps(event.to_dict()))
    assert wire["t"] == type(event).T
    back = from_dict(wire)
    assert back == event and type(back) is type(event)


def test_every_event_type_has_a_wire_name_of_its_own() -> None:
    kinds = {type(e) for e in EVERY_EVENT}
    assert kinds == {Progress, Log, Step, Epoch, Rewind, Started, End}
    assert len({k.T for k in kinds}) == len(kinds)


def test_a_wire_form_keeps_its_old_keys_and_ignores_extra_ones() -> None:
    """Steps and epochs carry the store's row fields at the top level (as the server's
    record reads them); the pipe's job id and an engine's extra fields are left aside."""

    @dataclass(frozen=True)
    class Scored(EpochRow):
        is_best: bool

    row = Scored(2, 12, 0.4, 0.8, 0.5, 0.7, 3.25, is_best=True)
    wire = Epoch(row).to_dict()
    assert "is_best" not in wire and wire["val_accuracy"] == 0.7
    assert from_dict({**wire, "id": "job-1"}) == Epoch(EpochRow(2, 12, 0.4, 0.8, 0.5, 0.7, 3.25))
    assert Log("x").to_dict() == {"t": "log", "text": "x"}
    assert Rewind(3).to_dict() == {"t": "rewind", "epoch": 3}


def test_an_end_leaves_out_what_it_does_not_carry() -> None:
    """An end without a result leaves the one recorded before (a resumed run's) in place."""
    assert End("failed", "Failed", error="x").to_dict() == {
        "t": "end",
        "status": "failed",
        "message": "Failed",
        "error": "x",
    }
    assert "result" not in End("stopped", "Stopped").to_dict()


def test_what_is_not_an_event_is_refused() -> None:
    with pytest.raises(ValueError, match="not a job event"):
        from_dict({"t": "ready", "pid": 1})


# ---------------------------------------------------------------------------- the words


@pytest.mark.parametrize(
    ("progress", "sentence"),
    [
        (Progress("start"), "Preparing"),
        (Progress("load"), "Loading the model"),
        (Progress("decode", 12, 300), "Preparing your images once: 12/300"),
        (
            Progress("frozen", 5, 40),
            "Running your images through the frozen layers once: 5/40",
        ),
        (Progress("train"), "Training"),
        (Progress("score"), "Scoring the best model on the validation images"),
        (
            Progress("familiar", total=24),
            "Learning what your pictures look like: 24 training pictures",
        ),
        (Progress("files", 0, 1), "Looking at the files"),
        (
            Progress("import", 200, 1000, rate=100.0),
            "Checking and preparing images: 200/1,000 · 100 images/s · about 8 s left",
        ),
        (
            Progress("import", 1000, 20000, rate=10.0),
            "Checking and preparing images: 1,000/20,000 · 10 images/s · about 32 min left",
        ),
        (Progress("import", 1000, 1000), "Checking and preparing images: 1,000/1,000"),
        (Progress("features", 7, 70), "Looking at your images: 7/70"),
        (Progress("headstart", 1, 1), "Scoring the head start"),
        (Progress("recommend", 3, 10, detail="resnet18", part=(1, 4)), "Scoring resnet18: 3/10"),
        (Progress("verify", 0, 1), "Checking the saved model against its predictions"),
        (Progress("export", 2, 3, detail="Writing the zip"), "Writing the zip"),
        (Progress("predict", 64, 300), "Looking at your pictures: 64/300"),
    ],
    ids=lambda v: v.phase if isinstance(v, Progress) else "",
)
def test_the_sentence_of_each_phase(progress: Progress, sentence: str) -> None:
    assert describe(progress) == sentence


def test_every_phase_has_its_words() -> None:
    for phase, words in PHASES.items():
        assert describe(Progress(phase)) == words
        assert label(Progress(phase, 1, 2)) == words


def test_a_bar_label_is_its_sentence_without_the_count() -> None:
    assert label(Progress("decode", 12, 300)) == "Preparing your images once"
    assert label(Progress("recommend", 3, 10, detail="vit")) == "Scoring vit"


def test_the_fraction_of_a_phase_and_of_a_part_of_the_job() -> None:
    assert Progress("decode", 75, 300).fraction == 0.25
    assert Progress("load").fraction is None and not Progress("load").counted
    assert Progress("familiar", total=24).fraction is None
    assert Progress("decode", 0, 0).fraction == 0.0
    # the second of four models, half done: 1.5 of 4 parts
    assert Progress("recommend", 5, 10, part=(1, 4)).fraction == pytest.approx(1.5 / 4)


# ---------------------------------------------------------------------------- the way through


class _Sink:
    def __init__(self) -> None:
        self.events: list[events.Event] = []

    def emit(self, event: events.Event) -> None:
        self.events.append(event)

    def stop_asked(self) -> bool:
        return False


def test_the_job_context_passes_progress_on_as_it_came_thinning_counts(monkeypatch) -> None:
    from tl_core.runs import worker

    clock = iter([10.0, 10.05, 10.1, 10.3])
    monkeypatch.setattr(worker.time, "monotonic", lambda: next(clock))
    sink = _Sink()
    params = entry("features").read({"model": "test_efficientnet"})
    ctx = JobContext(JobSpec("j", "features", "p", params, "", ""), sink)
    ctx.on_progress(Progress("load"))  # no count: always, and no clock read
    ctx.progress(Progress("decode", 1, 300))  # 10.0: sent
    ctx.progress(Progress("decode", 2, 300))  # 10.05: too soon, dropped
    ctx.progress(Progress("decode", 300, 300))  # 10.1: a phase's last count, sent
    ctx.progress(Progress("decode", 3, 300))  # 10.3: sent
    ctx.on_resume(4)
    assert sink.events == [
        Progress("load"),
        Progress("decode", 1, 300),
        Progress("decode", 300, 300),
        Progress("decode", 3, 300),
        Rewind(4),
    ]


def test_the_store_keeps_the_figures_and_the_sentence(tmp_path: Path) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project()
    run = store.create_job(project.id, {}, tmp_path / "data")
    folder = Path(run.run_dir)
    record(store, run.id, folder, Started(1, "here"))
    started = store.job(run.id)
    assert started is not None and started.message == "Preparing"
    assert started.reported == Progress("start") and started.progress is None
    record(store, run.id, folder, Progress("frozen", 30, 120))
    now = store.job(run.id)
    assert now is not None
    assert (now.phase, now.done, now.total) == ("frozen", 30, 120)
    assert now.progress == 0.25
    assert now.message == "Running your images through the frozen layers once: 30/120"
    assert now.reported == Progress("frozen", 30, 120)
    record(store, run.id, folder, Progress("train"))
    training = store.job(run.id)
    assert training is not None and training.progress is None and training.message == "Training"
    assert training.reported == Progress("train")
    record(store, run.id, folder, End("stopped", "Stopped"))
    ended = store.job(run.id)
    assert ended is not None and ended.reported is None  # only while it runs
