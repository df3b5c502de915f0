"""Run one queued training run to its end, writing everything to the store.

``python -m tl_core worker RUN_ID`` calls ``run_worker``; so does the ``train`` command, in
its own process. The page never trains: it reads what this writes.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict
from pathlib import Path

from tl_core import diskspace
from tl_core.data import review
from tl_core.data.dataset import DatasetManifest, split_dataset
from tl_core.errors import DiskFullError, StudioError
from tl_core.runs import interrupt
from tl_core.runs.store import Store
from tl_core.training.engine import EpochMetrics, StepMetrics, TrainConfig, TrainResult, fit

STOP_POLL_S = 0.25  # how often the stop flag is read: Stop acts within about a second


class StoreCallbacks:
    """Engine callbacks that write progress to the store and read the stop flag from it."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._checked = 0.0
        self._stop = False
        self.interrupted: int | None = None  # the signal that asked this run to stop

    def interrupt(self, signum: int) -> None:
        """A signal came: stop at the next step; the run is then marked interrupted."""
        self.interrupted = signum
        self._stop = True

    def on_status(self, message: str) -> None:
        self.store.update_run(self.run_id, message=message, heartbeat=time.time())

    def on_log(self, message: str) -> None:
        """A line of the run's log (what the engine decided and why), kept beside its files."""
        run = self.store.run(self.run_id)
        if run is not None:
            with (
                diskspace.guard(Path(run.run_dir), len(message) + diskspace.MB),
                open(Path(run.run_dir) / "run.log", "a", encoding="utf-8") as log,
            ):
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def on_step(self, m: StepMetrics) -> None:
        self.store.add_step(
            self.run_id, m.epoch, m.step, m.total_steps, m.loss, m.accuracy, m.lr, m.elapsed_s
        )

    def on_epoch(self, m: EpochMetrics) -> None:
        self.store.add_epoch(
            self.run_id,
            m.epoch,
            m.step,
            m.train_loss,
            m.train_accuracy,
            m.val_loss,
            m.val_accuracy,
            m.elapsed_s,
        )

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._checked >= STOP_POLL_S:
            self._checked = now
            run = self.store.run(self.run_id)
            self._stop = run is None or run.stop_requested
        return self._stop


def _record(store: Store, run_id: str, run_dir: Path, **fields: object) -> None:
    """``store.update_run``; on a full disk free the run's temporary files and try once more."""
    try:
        store.update_run(run_id, **fields)
    except DiskFullError:
        diskspace.remove_temporary(run_dir)
        store.update_run(run_id, **fields)


def _mark_failed(store: Store, run_id: str, run_dir: Path, error: str) -> None:
    _record(
        store, run_id, run_dir, status="failed", error=error, finished=time.time(), message="Failed"
    )


def _check_disk(run_dir: Path, manifest: DatasetManifest, config: TrainConfig) -> None:
    """A first check before the model loads: checkpoints and results must fit.

    The engine checks again before it writes the decoded images, with the model's own sizes.
    """
    from tl_core.models.catalog import get_spec

    params = int(get_spec(config.model).params_m * 1e6)
    n = len(manifest.items)
    need = diskspace.run_need(
        n,
        int(n * config.val_fraction),
        len(manifest.classes),
        0,  # the decoded images: counted by the engine, which knows their size
        params,
        params if config.trainable_groups else 0,
        config.epochs * max(n // config.batch_size, 1),
    )
    diskspace.check_free(run_dir, need)


def run_worker(store: Store, run_id: str) -> TrainResult | None:
    """Train the run ``run_id``; its final status and result land in the store."""
    import os

    run = store.run(run_id)
    if run is None:
        raise StudioError(f"No run with id {run_id}.")
    run_dir = Path(run.run_dir)
    try:
        store.update_run(
            run_id,
            status="running",
            pid=os.getpid(),
            heartbeat=time.time(),
            started=run.started or time.time(),
            message="Preparing",
        )
    except DiskFullError as exc:
        _mark_failed(store, run_id, run_dir, str(exc))
        return None
    config = TrainConfig.from_dict(run.config)
    callbacks = StoreCallbacks(store, run_id)

    def interrupted(signum: int) -> interrupt.Interrupted:
        _record(
            store,
            run_id,
            run_dir,
            status="interrupted",
            pid=None,
            finished=time.time(),
            message=interrupt.message(signum),
        )
        return interrupt.Interrupted(signum)

    try:
        with interrupt.graceful(callbacks.interrupt):
            manifest = DatasetManifest.load(Path(run.data_dir))
            _check_disk(run_dir, manifest, config)
            split = split_dataset(manifest, config.val_fraction, config.seed)
            corrections = review.Corrections.from_dict(run.config.get("corrections"))
            if corrections:
                split = review.apply(split, corrections, manifest.classes)
                callbacks.on_log(f"Label review applied: {corrections.describe()}.")
            if run.resume:  # forget the steps of the epoch that was cut off; it is replayed
                done = [m["epoch"] for m in store.metrics(run_id, "epoch")]
                store.drop_metrics_after(run_id, max(done, default=0))
            result = fit(
                config,
                split,
                manifest.root,
                manifest.classes,
                Path(run.run_dir),
                callbacks,
                resume=run.resume,
            )
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM, cut short: last.pt is from before
        interrupt.hold()
        raise interrupted(callbacks.interrupted or interrupt.signum_of(exc)) from None
    except Exception as exc:
        if callbacks.interrupted is not None:  # the stop a signal asked for ended it
            interrupt.hold()
            raise interrupted(callbacks.interrupted) from None
        if isinstance(exc, StudioError):
            _mark_failed(store, run_id, run_dir, str(exc))
            return None
        if diskspace.is_disk_full(exc):  # a write no guard covered
            diskspace.remove_temporary(run_dir)
            _mark_failed(store, run_id, run_dir, str(diskspace.disk_full_error(run_dir)))
            return None
        traceback.print_exc()
        _mark_failed(
            store,
            run_id,
            run_dir,
            f"Training failed unexpectedly ({type(exc).__name__}: {exc}). "
            f"Details are in {run_dir / 'worker.log'}.",
        )
        return None
    if callbacks.interrupted is not None and result.status == "stopped":  # last.pt saved
        interrupt.hold()
        raise interrupted(callbacks.interrupted)
    _record(
        store,
        run_id,
        run_dir,
        status=result.status,
        result=asdict(result),
        finished=time.time(),
        message="Finished" if result.status == "finished" else "Stopped",
        stop_requested=0,
    )
    return result
