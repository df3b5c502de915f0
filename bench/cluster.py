"""The same clicks on this machine's warm workers and on a Ray cluster, side by side.

    uv run --group test python bench/cluster.py [DATA_FOLDER] [--address HOST:PORT]

Without ``--address`` it starts a one-machine Ray cluster (``ray start --head`` on
127.0.0.1) for the run and stops it afterwards. For each executor, on a fresh project of the
same images (default: the bundled demo set): the Model page's head start (a features job),
then Train with the page's defaults twice (EfficientNet-Lite0, head only, 20 epochs), each
timed from the click to the first curve point and to the finish (bench/warm_start.py's
clicks). On Ray every input and output travels through the object store and the server's
actor, so the difference is what the cluster path costs. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from raycluster import local_cluster  # noqa: E402
from warm_start import _click, _head_start, _project  # noqa: E402

from tl_core.runs import supervisor  # noqa: E402
from tl_core.runs.store import Store  # noqa: E402


def _clicks(workspace: Path, source: Path) -> dict[str, object]:
    store = Store(workspace)
    started = time.perf_counter()
    supervisor.serve(store, prewarm=True)
    project_id, data = _project(store, source)
    out: dict[str, object] = {"head_start_s": _head_start(store, project_id)}
    out["serve_to_head_start_done_s"] = round(time.perf_counter() - started, 2)
    out["train"] = _click(store, project_id, data)
    out["train_again"] = _click(store, project_id, data)
    run = store.runs(project_id)[-1]
    out["placement"] = run.placement
    supervisor.shutdown_all()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT / "assets/demo/fashion_mnist")
    parser.add_argument("--address", default=None, help="a running cluster (default: start one)")
    args = parser.parse_args()
    out: dict[str, object] = {"data": str(args.folder)}
    with contextlib.ExitStack() as stack:
        address = args.address or stack.enter_context(local_cluster())
        out["address"] = address
        with tempfile.TemporaryDirectory() as tmp:
            os.environ.pop("TL_STUDIO_RAY_ADDRESS", None)
            out["local"] = _clicks(Path(tmp) / "local", args.folder)
            os.environ["TL_STUDIO_RAY_ADDRESS"] = address
            out["ray"] = _clicks(Path(tmp) / "ray", args.folder)
    local, ray = out["local"], out["ray"]
    assert isinstance(local, dict) and isinstance(ray, dict)
    for key in ("first_point_s", "finish_s"):
        out[f"ray_over_local_{key}"] = round(ray["train_again"][key] / local["train_again"][key], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
