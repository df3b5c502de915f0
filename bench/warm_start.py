"""Click to first curve point and click to finish: a cold worker process against a warm one.

    uv run python bench/warm_start.py [DATA_FOLDER]   (default: the bundled demo set)

Each case is one press of Train with the page's defaults (EfficientNet-Lite0, head only,
20 epochs) on a fresh project of the same images:
- ``cold``: no server serves the queue, so the run gets a new ``python -m tl_core worker``
  process (import torch, build the model, decode, frozen pass): the path every run took
  before warm workers;
- ``warm``: the app server's runtime (``supervisor.serve``) with its worker already started, after
  the Model page's head start has run (as in the wizard, where it comes before Train);
- ``warm again``: a second run of the same project.
Prints one JSON object with the seconds and the ratios, measured side by side in one run.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tl_core import service  # noqa: E402
from tl_core.config import RunSpec, TrainConfig  # noqa: E402
from tl_core.data.dataset import import_folder  # noqa: E402
from tl_core.runs import supervisor  # noqa: E402
from tl_core.runs.store import Store  # noqa: E402


def _project(store: Store, source: Path) -> tuple[str, Path]:
    project = store.create_project("bench")
    data = store.new_data_dir(project.id)
    import_folder(source, data)
    store.set_data_dir(project.id, data)
    store.update_settings(project.id, model="efficientnet_lite0")
    return project.id, data


def _click(store: Store, project_id: str, data: Path) -> dict[str, float | str]:
    """Press Train; wait for the first epoch's point and the end."""
    clicked = time.perf_counter()
    run = service.submit_job(store, project_id, RunSpec(TrainConfig()), data)
    first = None
    while True:
        now = store.job(run.id)
        assert now is not None
        if first is None and store.epochs(run.id):
            first = time.perf_counter() - clicked
        if not now.active:
            break
        time.sleep(0.02)
    return {
        "first_point_s": round(first or float("nan"), 2),
        "finish_s": round(time.perf_counter() - clicked, 2),
        "status": now.status,
        "val_accuracy": (now.result or {}).get("val_accuracy"),
    }


def _head_start(store: Store, project_id: str) -> float:
    """The Model page's head start (a features job), as the wizard runs it before Train."""
    project = store.project(project_id)
    assert project is not None
    started = time.perf_counter()
    job = service.submit_features(store, project, "efficientnet_lite0", 0.2, 0)
    assert job is not None
    while (now := store.job(job.id)) is not None and now.active:
        time.sleep(0.05)
    assert now is not None and now.status == "finished", now
    return round(time.perf_counter() - started, 2)


def serve_warm(workspace: Path) -> tuple[Store, float]:
    """A store whose queue this process serves, once its warm worker is ready; and the
    seconds that took."""
    store = Store(workspace)
    started = time.perf_counter()
    supervisor.serve(store, prewarm=True)
    sup = supervisor.running_here(store.workspace)
    assert sup is not None
    while not sup.executor.ready_count():  # type: ignore[attr-defined]
        time.sleep(0.05)
    return store, round(time.perf_counter() - started, 2)


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "assets" / "demo" / "fashion_mnist"
    out: dict[str, object] = {"data": str(source)}
    with tempfile.TemporaryDirectory() as tmp:
        cold_store = Store(Path(tmp) / "cold")
        out["cold"] = _click(cold_store, *_project(cold_store, source))

        store, out["worker_warm_up_s"] = serve_warm(Path(tmp) / "warm")
        project_id, data = _project(store, source)
        out["head_start_s"] = _head_start(store, project_id)
        out["warm"] = _click(store, project_id, data)
        out["warm_again"] = _click(store, project_id, data)
        supervisor.shutdown_all()
    cold, warm = out["cold"], out["warm"]
    assert isinstance(cold, dict) and isinstance(warm, dict)
    out["first_point_speedup"] = round(cold["first_point_s"] / warm["first_point_s"], 1)
    out["finish_speedup"] = round(cold["finish_s"] / warm["finish_s"], 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
