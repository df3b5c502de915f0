"""What a running job reports, typed: its progress, log lines, metrics, start and end.

The engine and the tasks report :class:`Progress` objects (a phase, and how far it is when it
counts its work), the job's context passes them on with the other events, and the store keeps
their figures in columns of their own. Across a process boundary (a pool worker's pipe, the
Ray channel) an event travels as its wire form: a plain dict whose ``"t"`` key names its type
(:meth:`to_dict`; :func:`from_dict` builds the event back). The sentence a user reads for a
phase is chosen here, by :func:`describe`, for the pages and the command line alike: no
number is ever read back out of a sentence. Standard library only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from tl_core.config import EpochRow, StepRow

__all__ = [
    "PHASES",
    "End",
    "Epoch",
    "Event",
    "Log",
    "Progress",
    "Rewind",
    "Started",
    "Step",
    "describe",
    "from_dict",
    "label",
]

# The phases a job reports, by key, with the words a user reads for each.
PHASES: dict[str, str] = {
    "start": "Preparing",  # the job's process took it; nothing reported yet
    # a training run (tl_core.training)
    "load": "Loading the model",
    "decode": "Preparing your images once",
    "frozen": "Running your images through the frozen layers once",
    "train": "Training",
    "score": "Scoring the best model on the validation images",
    "familiar": "Learning what your pictures look like",
    # the other jobs (tl_core.runs.tasks)
    "files": "Looking at the files",
    "import": "Checking and preparing images",
    "features": "Looking at your images",
    "headstart": "Scoring the head start",
    "recommend": "Scoring",
    "verify": "Checking the saved model against its predictions",
    "export": "Exporting the model",
    "predict": "Looking at your pictures",
    "map": "Drawing the map of your pictures",
    "label_issues": "Looking for labels that may be wrong",
}
_COUNT_SHOWN = frozenset({"decode", "frozen", "features", "recommend", "predict"})


@dataclass(frozen=True)
class Progress:
    """Where a job stands in one of its :data:`PHASES`.

    ``done`` of ``total`` when the phase counts its work (images, batches); both None when
    it does not (loading the model). A phase that knows its size but counts nothing (the
    unfamiliar check's training pictures) gives ``total`` alone. ``detail`` names what it
    works on now (the model being scored, the export's current step), ``rate`` the items per
    second measured so far. ``part`` = (index, count) when the phase is one of ``count``
    equal parts of the job (the models of a comparison): its fraction is the whole job's.
    """

    T: ClassVar[str] = "progress"
    phase: str
    done: int | None = None
    total: int | None = None
    detail: str = ""
    rate: float | None = None
    part: tuple[int, int] | None = None

    @property
    def counted(self) -> bool:
        """True when the phase counts its work (``done`` of ``total``)."""
        return self.done is not None and self.total is not None

    @property
    def fraction(self) -> float | None:
        """0..1 of the job's work in this phase (or of the whole job, with ``part``)."""
        if self.done is None or self.total is None:
            return None
        own = self.done / max(self.total, 1)
        if self.part is None:
            return own
        index, count = self.part
        return (index + own) / max(count, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.T, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Progress:
        part = d.get("part")
        return cls(
            str(d["phase"]),
            None if d.get("done") is None else int(d["done"]),
            None if d.get("total") is None else int(d["total"]),
            str(d.get("detail") or ""),
            None if d.get("rate") is None else float(d["rate"]),
            None if part is None else (int(part[0]), int(part[1])),
        )


@dataclass(frozen=True)
class Log:
    """A line for the run's log."""

    T: ClassVar[str] = "log"
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.T, "text": self.text}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Log:
        return cls(str(d["text"]))


@dataclass(frozen=True)
class Step:
    """One optimiser step of a training run: the store's step row."""

    T: ClassVar[str] = "step"
    row: StepRow

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.T, **_row_dict(StepRow, self.row)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        return cls(StepRow(**{f.name: d[f.name] for f in fields(StepRow)}))


@dataclass(frozen=True)
class Epoch:
    """One finished epoch of a training run: the store's epoch row."""

    T: ClassVar[str] = "epoch"
    row: EpochRow

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.T, **_row_dict(EpochRow, self.row)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Epoch:
        return cls(EpochRow(**{f.name: d[f.name] for f in fields(EpochRow)}))


@dataclass(frozen=True)
class Rewind:
    """A resumed run goes on from ``epoch``: what was recorded after it is trained again."""

    T: ClassVar[str] = "rewind"
    epoch: int

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.T, "epoch": self.epoch}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rewind:
        return cls(int(d["epoch"]))


@dataclass(frozen=True)
class Started:
    """The job's process took it: its process id, and where it runs (machine and device)."""

    T: ClassVar[str] = "started"
    pid: int
    placement: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.T, "pid": self.pid, "placement": self.placement}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Started:
        return cls(int(d["pid"]), d.get("placement"))


@dataclass(frozen=True)
class End:
    """How the job ended: ``finished``, ``stopped``, ``interrupted`` or ``failed``.

    ``message`` is the short state shown beside it, ``error`` a failure's sentence,
    ``result`` what a finished (or stopped) job returned, ``signal`` the signal that cut it
    short (its process should then exit). The wire form leaves out what is None: an end
    without a result leaves the one recorded before in place.
    """

    T: ClassVar[str] = "end"
    status: str
    message: str = ""
    error: str | None = None
    result: dict[str, Any] | None = None
    signal: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": self.T, "status": self.status, "message": self.message}
        for key in ("error", "result", "signal"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> End:
        signal = d.get("signal")
        return cls(
            str(d["status"]),
            str(d.get("message") or ""),
            d.get("error"),
            d.get("result"),
            None if signal is None else int(signal),
        )


Event = Progress | Log | Step | Epoch | Rewind | Started | End
_TYPES: dict[str, Any] = {cls.T: cls for cls in (Progress, Log, Step, Epoch, Rewind, Started, End)}


def from_dict(d: dict[str, Any]) -> Event:
    """The event a wire form holds (its ``"t"`` key names the type; other keys are ignored)."""
    cls = _TYPES.get(str(d.get("t")))
    if cls is None:
        raise ValueError(f"not a job event: {d.get('t')!r}")
    event: Event = cls.from_dict(d)
    return event


def _row_dict(cls: type, row: Any) -> dict[str, Any]:
    """The fields of ``cls`` that ``row`` holds (an engine's row may carry more)."""
    return {f.name: getattr(row, f.name) for f in fields(cls)}


# ---------------------------------------------------------------------------- the words


def _eta(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{seconds / 60:.0f} min"


def label(progress: Progress) -> str:
    """The phase's name as a user reads it, without its count ("Preparing your images
    once"): a progress bar's label."""
    words = PHASES.get(progress.phase, progress.phase)
    if progress.phase == "export":
        return progress.detail or words  # the step the export is at, in its own words
    return f"{words} {progress.detail}" if progress.detail else words


def describe(progress: Progress) -> str:
    """The sentence a user reads for ``progress``: its phase, and its count where the phase
    shows one ("Preparing your images once: 12/300")."""
    words = label(progress)
    done, total = progress.done, progress.total
    if progress.phase == "familiar" and total is not None:
        return f"{words}: {total} training pictures"
    if done is None or total is None:
        return words
    if progress.phase == "import":
        text = f"{words}: {done:,}/{total:,}"
        if progress.rate and 0 < done < total:
            left = _eta((total - done) / progress.rate)
            text += f" · {progress.rate:,.0f} images/s · about {left} left"
        return text
    return f"{words}: {done}/{total}" if progress.phase in _COUNT_SHOWN else words
