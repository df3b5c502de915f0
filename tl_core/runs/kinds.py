"""The job kinds: one registry entry per kind of long job, and the spec a job runs from.

Each :class:`JobKind` says everything the runtime needs to know about a kind: its typed
parameters (a dataclass with ``to_dict``/``from_dict``; their dict form is what the store's
``config`` column and the pipes to the workers carry), the task that runs it, the lane it
waits in, where it may run, whether it wants a GPU, what travels to a Ray node with it, how
long it typically takes, how its end is worded, whether a job cut short can be resumed,
and where in the workspace its folder lives. Submitting, claiming, executing on
either executor and showing a job read the entry of its kind and nothing else; a new kind
is a new entry here, its task and its page.

Nothing here imports torch: a task is named as ``"module:function"`` and loaded when a job
of its kind runs (:meth:`JobKind.load_task`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal, Protocol

from tl_core.config import RunSpec, SplitSettings
from tl_core.errors import RunError

__all__ = [
    "KINDS",
    "NAMES",
    "SHIPPED",
    "ExportParams",
    "FeaturesParams",
    "Home",
    "ImportParams",
    "JobKind",
    "JobParams",
    "JobSpec",
    "Lane",
    "PredictParams",
    "ReadsRun",
    "RecommendParams",
    "SurveyParams",
    "UnknownKindError",
    "VerifyParams",
    "Where",
    "entry",
    "entry_for",
    "in_quick_lane",
    "resumable",
]

Lane = Literal["quick", "queue"]  # quick: a lane of its own beside the queue's slots
Where = Literal["local", "any"]  # local: on this machine's workers, even beside a cluster
Home = Literal["runs", "jobs"]  # the workspace folder that holds its jobs' own folders
# What can travel to a Ray node with a job: the data version's images ("data"), its cached
# frozen features ("features"), the job's own folder ("folder"), the trained run it reads
# ("source", named by its parameters' ``run_dir``).
SHIPPED = ("data", "features", "folder", "source")


class JobParams(Protocol):
    """A kind's typed parameters: a frozen dataclass that reads and writes its dict form."""

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Any: ...


class UnknownKindError(RunError):
    """A job of a kind this version of the app does not know (a newer version queued it)."""


# ---------------------------------------------------------------------------- the parameters


@dataclass(frozen=True)
class ImportParams:
    """An import into a new data version. ``way``: ``demo`` or ``folder`` (``path``, a folder
    or .zip on this machine), ``zip`` or ``files`` (what the page saved in the job's upload
    folder). ``reuse``: where a demo import keeps its decoded copy for the next one. ``grow``:
    the project's current images are kept and these added; ``label``: the class every added
    image goes into (None: the class of its folder). ``model``: the model the project trains
    (the default one when empty), whose inputs the import makes while it decodes."""

    way: str = "folder"
    path: str = ""
    reuse: str | None = None
    grow: bool = False
    label: str | None = None
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"way": self.way}
        if self.model:
            out["model"] = self.model
        if self.way in ("demo", "folder"):
            out["path"] = self.path
        if self.reuse is not None:
            out["reuse"] = self.reuse
        if self.grow:
            out.update(grow=True, label=self.label)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ImportParams:
        label, reuse = raw.get("label"), raw.get("reuse")
        return cls(
            way=str(raw.get("way") or "folder"),
            path=str(raw.get("path") or ""),
            reuse=str(reuse) if reuse else None,
            grow=bool(raw.get("grow")),
            label=str(label) if label else None,
            model=str(raw.get("model") or ""),
        )


@dataclass(frozen=True)
class FeaturesParams:
    """The frozen features of ``model`` on the data version, split by ``split``."""

    model: str
    split: SplitSettings = field(default_factory=SplitSettings)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, **self.split.to_dict()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeaturesParams:
        return cls(str(raw.get("model") or ""), SplitSettings.from_dict(raw))


@dataclass(frozen=True)
class RecommendParams:
    """The model comparison over ``keys`` (none: every model available offline)."""

    keys: tuple[str, ...] = ()
    split: SplitSettings = field(default_factory=SplitSettings)

    def to_dict(self) -> dict[str, Any]:
        return {"keys": list(self.keys), **self.split.to_dict()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RecommendParams:
        return cls(tuple(str(k) for k in raw.get("keys") or ()), SplitSettings.from_dict(raw))


@dataclass(frozen=True)
class ReadsRun:
    """The parameters of a job that reads a trained run: its folder, ``run_dir``."""

    run_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Any:
        return cls(str(raw.get("run_dir") or ""))


@dataclass(frozen=True)
class VerifyParams(ReadsRun):
    """The check that the run's saved model gives its recorded predictions again."""


@dataclass(frozen=True)
class ExportParams(ReadsRun):
    """The run's bundle, as the zip ``name``, with the label review it was trained with."""

    name: str = "model.zip"
    corrections: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExportParams:
        return cls(
            str(raw.get("run_dir") or ""),
            str(raw.get("name") or "model.zip"),
            raw.get("corrections") or None,
        )


@dataclass(frozen=True)
class PredictParams(ReadsRun):
    """Many pictures (the job's ``inputs/``) through the run's model at ``temperature``."""

    temperature: float = 1.0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PredictParams:
        return cls(str(raw.get("run_dir") or ""), float(raw.get("temperature", 1.0)))


@dataclass(frozen=True)
class SurveyParams(ReadsRun):
    """The survey of every picture (map, space of the label suggestions, likely wrong
    labels) with the pretrained ``model``, or with the trained run in ``run_dir`` when one
    is named (empty: none)."""

    model: str = ""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SurveyParams:
        return cls(str(raw.get("run_dir") or ""), str(raw.get("model") or ""))


# ---------------------------------------------------------------------------- the registry

Task = Callable[["JobSpec", Any], dict[str, Any]]  # (spec, its JobContext) -> the result


@dataclass(frozen=True)
class JobKind:
    """One kind of job, as every part of the runtime sees it."""

    name: str
    params: type  # the parameters' dataclass (JobParams)
    task: str  # "module:function": task(spec, ctx) -> a JSON-able result
    title: str  # the job as the subject of a sentence ("The import")
    lane: Lane = "queue"
    where: Where = "any"
    gpu: bool = False  # asks for a GPU on a cluster that has one
    ships: tuple[str, ...] = ("data", "features", "folder")  # to a Ray node (SHIPPED)
    typical_s: float = 60.0  # seconds it takes, until the workspace has measured its own
    # Its task's result says whether it finished or stopped (``status``, a training run's
    # TrainResult); any other job stopped when its task returns STOPPED or Stop was asked.
    reports_status: bool = False
    # A job cut short (its process lost, ended from outside, the server gone) ends
    # ``interrupted`` and Resume goes on from its last checkpoint; any other kind's ends
    # ``failed`` (Try again), and its partial work is recomputed.
    resumable: bool = False
    home: Home = "jobs"
    # Its folder keeps a record of the job (run.json: the spec, the end, the epochs) from
    # which the store's row is rebuilt; other jobs are recomputed, never repaired.
    keeps_record: bool = False

    def load_task(self) -> Task:
        """The task function (its module is imported now, with what it needs)."""
        module, _, name = self.task.partition(":")
        return getattr(importlib.import_module(module), name)

    def read(self, raw: dict[str, Any] | None) -> Any:
        """The typed parameters of a dict form (a stored row's ``config``, a spec's params);
        keys an older version did not write take their defaults."""
        return self.params.from_dict(dict(raw or {}))


_TASKS = "tl_core.runs.tasks"

KINDS: Mapping[str, JobKind] = MappingProxyType(
    {
        k.name: k
        for k in (
            JobKind(
                "train",
                RunSpec,
                "tl_core.runs.worker:train",
                "The training run",
                gpu=True,
                reports_status=True,
                resumable=True,
                home="runs",
                keeps_record=True,
            ),
            JobKind(
                "import",
                ImportParams,
                f"{_TASKS}:import_images",
                "The import",
                lane="quick",
                where="local",  # reads this machine's disk: a typed path, a saved upload
                ships=(),
                typical_s=10.0,
            ),
            JobKind(
                "features",
                FeaturesParams,
                f"{_TASKS}:features",
                "The head-start check",
                gpu=True,
                typical_s=20.0,
            ),
            JobKind(
                "recommend",
                RecommendParams,
                f"{_TASKS}:recommend",
                "The model comparison",
                gpu=True,
            ),
            JobKind(
                "survey",
                SurveyParams,
                f"{_TASKS}:survey",
                "The map of the pictures",
                gpu=True,
                ships=SHIPPED,
                typical_s=30.0,
            ),
            JobKind(
                "verify",
                VerifyParams,
                f"{_TASKS}:verify",
                "The check of the saved model",
                ships=SHIPPED,
                typical_s=10.0,
            ),
            JobKind(
                "export",
                ExportParams,
                f"{_TASKS}:export",
                "The export",
                ships=SHIPPED,
                typical_s=30.0,
            ),
            JobKind(
                "predict",
                PredictParams,
                f"{_TASKS}:predict",
                "The batch of guesses",
                gpu=True,
                ships=SHIPPED,
            ),
        )
    }
)
NAMES = tuple(KINDS)


def entry(name: str) -> JobKind:
    """The registry entry of the kind ``name``; UnknownKindError for a kind not known here."""
    found = KINDS.get(name)
    if found is None:
        raise UnknownKindError(f"This version of the app cannot run '{name}' jobs.")
    return found


def entry_for(params: Any) -> JobKind:
    """The entry whose parameters ``params`` are (TypeError for anything else)."""
    for kind in KINDS.values():
        if type(params) is kind.params:
            return kind
    raise TypeError(f"{type(params).__name__} are not the parameters of any job kind")


def in_quick_lane(name: str) -> bool:
    """True for a kind with a lane of its own beside the queue's slots (an unknown kind
    waits in the queue)."""
    found = KINDS.get(name)
    return found is not None and found.lane == "quick"


def resumable(name: str) -> bool:
    """True for a kind whose jobs cut short can be resumed from their last checkpoint (they
    end ``interrupted``, not ``failed``); an unknown kind cannot."""
    found = KINDS.get(name)
    return found is not None and found.resumable


# ---------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class JobSpec:
    """One job as an executor receives it: everything the worker may use, nothing more.

    ``params`` are the typed parameters of ``kind`` (for ``train``, the :class:`RunSpec`);
    ``data_dir`` is the data version it reads, ``folder`` the job's own folder for what it
    writes (a run's checkpoints and predictions, an export's bundle); ``threads`` how many
    CPU threads it may use; ``resume`` continues a training run from its last checkpoint.
    Its dict form (:meth:`to_dict`) is JSON: it crosses the worker's pipe and Ray.
    """

    id: str
    kind: str
    project_id: str
    params: JobParams
    data_dir: str
    folder: str
    resume: bool = False
    threads: int = 1

    def __post_init__(self) -> None:
        expected = entry(self.kind).params
        if type(self.params) is not expected:
            raise TypeError(
                f"a {self.kind} job takes {expected.__name__}, not {type(self.params).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        raw = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**raw, "params": self.params.to_dict()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JobSpec:
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in raw.items() if k in known}
        return cls(**{**given, "params": entry(str(raw["kind"])).read(raw.get("params"))})
