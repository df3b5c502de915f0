"""The job registry: one entry per kind says its parameters, task, lane, place, GPU and what
travels with it; a job's typed parameters cross the pipe and Ray as JSON and come back equal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tl_core.config import RunSpec, SplitSettings, TrainConfig
from tl_core.errors import RunError
from tl_core.events import End
from tl_core.runs import endings, kinds, tasks, worker
from tl_core.runs.kinds import (
    ExportParams,
    FeaturesParams,
    ImportParams,
    JobSpec,
    PredictParams,
    RecommendParams,
    SurveyParams,
    UnknownKindError,
    VerifyParams,
)
from tl_core.runs.store import Store

ROOT = Path(__file__).resolve().parent.parent

# Every kind with parameters that differ from their defaults wherever they can.
SAMPLES = {
    "train": RunSpec(
        TrainConfig(epochs=3, lr=0.002, seed=4, val_fraction=0.3),
        baseline_of="r1",
        sweep="s1",
        corrections={"relabel": {"a.png": "cat"}},
    ),
    "import": ImportParams("demo", path="/pics", reuse="/ws/imports"),
    "features": FeaturesParams("resnet18", SplitSettings(0.25, 3)),
    "recommend": RecommendParams(("resnet18", "efficientnet_lite0"), SplitSettings(0.1, 2)),
    "survey": SurveyParams("/ws/runs/r1", "efficientnet_lite0"),
    "verify": VerifyParams("/ws/runs/r1"),
    "export": ExportParams("/ws/runs/r1", "cats.zip", {"exclude": ["b.png"]}),
    "predict": PredictParams("/ws/runs/r1", 1.5),
}

# What the registry says of each kind: (task, lane, where, gpu, ships, typical seconds), and
# (resumable, home, keeps_record).
EVERYTHING = ("data", "features", "folder")
DOCUMENTED = {
    "train": (worker.train, "queue", "any", True, EVERYTHING, 60.0),
    "import": (tasks.import_images, "quick", "local", False, (), 10.0),
    "features": (tasks.features, "queue", "any", True, EVERYTHING, 20.0),
    "recommend": (tasks.recommend, "queue", "any", True, EVERYTHING, 60.0),
    "survey": (tasks.survey, "queue", "any", True, (*EVERYTHING, "source"), 30.0),
    "verify": (tasks.verify, "queue", "any", False, (*EVERYTHING, "source"), 10.0),
    "export": (tasks.export, "queue", "any", False, (*EVERYTHING, "source"), 30.0),
    "predict": (tasks.predict, "queue", "any", True, (*EVERYTHING, "source"), 60.0),
}
KEPT = {
    "train": (True, "runs", True),
    "import": (False, "jobs", False),
    "features": (False, "jobs", False),
    "recommend": (False, "jobs", False),
    "survey": (False, "jobs", False),
    "verify": (False, "jobs", False),
    "export": (False, "jobs", False),
    "predict": (False, "jobs", False),
}


def _spec(kind: str, params=None, **extra) -> JobSpec:
    params = SAMPLES[kind] if params is None else params
    return JobSpec("j1", kind, "p1", params, "/ws/data-1", "/ws/jobs/j1", **extra)


def test_the_registry_holds_every_kind_once() -> None:
    assert tuple(DOCUMENTED) == kinds.NAMES == tuple(KEPT)
    assert set(SAMPLES) == set(kinds.KINDS)
    assert len({k.params for k in kinds.KINDS.values()}) == len(kinds.KINDS)
    for name, params in SAMPLES.items():
        assert kinds.entry(name).name == name
        assert kinds.entry_for(params) is kinds.entry(name)
        assert isinstance(params, kinds.entry(name).params)


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_params_cross_the_pipe_as_json_and_come_back_equal(kind: str) -> None:
    spec = _spec(kind, resume=kind == "train", threads=3)
    raw = json.loads(json.dumps(spec.to_dict()))  # what a pipe or Ray carries
    assert raw["params"] == SAMPLES[kind].to_dict()
    back = JobSpec.from_dict(raw)
    assert back == spec and type(back.params) is type(spec.params)
    assert kinds.entry(kind).read(json.loads(json.dumps(SAMPLES[kind].to_dict()))) == SAMPLES[kind]


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_rows_of_older_versions_still_read(kind: str) -> None:
    """A stored row's ``config`` that lacks keys gets the defaults (the split's from
    SplitSettings); unknown keys are left out."""
    params = kinds.entry(kind).read({"written_by": "a newer version"})
    assert type(params) is kinds.entry(kind).params
    if hasattr(params, "split"):
        assert params.split == SplitSettings()
    assert kinds.entry(kind).read(None) == params


def test_the_stored_dict_forms_are_what_earlier_versions_wrote() -> None:
    """The store's ``config`` column keeps the params' dict form: pages and older rows read
    the same keys as before the parameters were typed."""
    assert ImportParams("folder", path="/p").to_dict() == {"way": "folder", "path": "/p"}
    assert ImportParams("zip").to_dict() == {"way": "zip"}
    assert ImportParams("files", grow=True, label="cat").to_dict() == {
        "way": "files",
        "grow": True,
        "label": "cat",
    }
    assert SAMPLES["features"].to_dict() == {"model": "resnet18", "val_fraction": 0.25, "seed": 3}
    assert SAMPLES["recommend"].to_dict()["keys"] == ["resnet18", "efficientnet_lite0"]
    assert SAMPLES["predict"].to_dict() == {"run_dir": "/ws/runs/r1", "temperature": 1.5}
    assert set(SAMPLES["export"].to_dict()) == {"run_dir", "name", "corrections"}
    assert SAMPLES["train"].to_dict() == {
        **RunSpec(SAMPLES["train"].config).to_dict(),
        "baseline_of": "r1",
        "sweep": "s1",
        "corrections": {"relabel": {"a.png": "cat"}},
    }


def test_an_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(UnknownKindError, match="cannot run 'label' jobs"):
        kinds.entry("label")
    assert issubclass(UnknownKindError, RunError)  # a job of it fails with that sentence
    with pytest.raises(UnknownKindError):
        JobSpec.from_dict({**_spec("verify").to_dict(), "kind": "label"})
    assert not kinds.in_quick_lane("label") and endings.what("label") == "The job"


def test_a_spec_takes_only_its_own_kind_of_params() -> None:
    with pytest.raises(TypeError, match="VerifyParams"):
        _spec("verify", params=PredictParams("/r"))
    with pytest.raises(TypeError, match="RunSpec"):
        _spec("train", params=TrainConfig().__dict__)
    with pytest.raises(TypeError):
        kinds.entry_for({"run_dir": "/r"})


@pytest.mark.parametrize("kind", list(DOCUMENTED))
def test_each_entry_is_as_documented(kind: str) -> None:
    task, lane, where, gpu, ships, typical = DOCUMENTED[kind]
    entry = kinds.entry(kind)
    loaded = entry.load_task()
    assert callable(loaded) and loaded is task
    assert (entry.lane, entry.where, entry.gpu) == (lane, where, gpu)
    assert entry.ships == ships and set(ships) <= set(kinds.SHIPPED)
    assert entry.typical_s == typical
    assert ("source" in ships) == issubclass(entry.params, kinds.ReadsRun)
    assert entry.reports_status == (kind == "train")
    assert kinds.in_quick_lane(kind) == (lane == "quick")
    assert endings.what(kind) == entry.title and entry.title.startswith("The ")
    assert (entry.resumable, entry.home, entry.keeps_record) == KEPT[kind]
    assert kinds.resumable(kind) == entry.resumable


def test_a_kinds_entry_says_where_its_folder_lives_and_how_a_cut_off_job_ends(tmp_path) -> None:
    """A job's folder is under its kind's home; a job of a resumable kind whose worker is
    lost (or that was ended from outside) ends interrupted, any other failed, with the
    sentence as its error; run.json is kept only by the kinds that keep a record."""
    from tl_core.runs.executor import ended_event, lost_end

    store = Store(tmp_path / "ws")
    project = store.create_project()
    for kind, params in SAMPLES.items():
        resumable, home, keeps_record = KEPT[kind]
        job = store.create_job(project.id, params.to_dict(), tmp_path, kind=kind)
        assert Path(job.run_dir).parent == (store.workspace / home).resolve()
        assert (Path(job.run_dir) / "run.json").exists() == keeps_record
        end = lost_end(kind, -9, None)
        assert end.status == ("interrupted" if resumable else "failed")
        assert end.error == (None if resumable else end.message)
        assert ("press Resume" in end.message) == resumable
        cut = ended_event(kind, End("failed", error="x", result={"n": 1}), "stalled")
        assert (cut.status, cut.message) == (end.status, endings.lost(kind, None, "stalled"))
        assert cut.error == (None if resumable else cut.message) and cut.result == {"n": 1}
        finished = End("finished", "Finished", result={"n": 2})
        assert ended_event(kind, finished, "stop") is finished  # it ended by itself
        assert lost_end(kind, None, "stop").status == "stopped"
    assert not kinds.resumable("label")  # a kind not known here


def test_a_ray_node_gets_the_folders_its_kind_ships(tmp_path) -> None:
    from tl_core.runs.ray_executor import RayExecutor

    executor = RayExecutor.__new__(RayExecutor)
    executor._archive = lambda name, root: ("key", [name])  # type: ignore[method-assign]
    for kind, params in SAMPLES.items():
        inputs, paths = executor._inputs(_spec(kind, params), 2)
        assert tuple(paths) == kinds.entry(kind).ships, kind
        if "source" in paths:
            assert paths["source"] == Path("/ws/runs/r1")
        assert set(inputs["archives"]) == set(paths)


def test_the_store_reads_a_row_back_as_its_kinds_params(tmp_path) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project()
    for kind, params in SAMPLES.items():
        job = store.create_job(project.id, params.to_dict(), tmp_path, kind=kind)
        assert store.job(job.id).params == params


def test_the_registry_loads_no_task_and_no_torch() -> None:
    code = (
        "import sys, tl_core.runs.kinds as k; assert k.NAMES; "
        "print([m for m in ('torch', 'timm', 'tl_core.runs.tasks', 'tl_core.runs.worker') "
        "if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
