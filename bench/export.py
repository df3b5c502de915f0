"""Every export format, side by side: size, pictures per second on this CPU, top-1 agreement
with the app and accuracy, per data set (tl_core.export).

    uv run --group test --extra export python bench/export.py [DATASET ...]
        [--cache DIR] [--epochs 4] [--formats onnx,int8,web,tflite,coreml]

Default data sets: every ``<name>/`` with ``train/`` and ``test/`` folders under
../shared/datasets, and the bundled demo set (assets/demo) unless it is one of them (it is
fashion_mnist_demo50's pictures). Each is trained once with EfficientNet-Lite0
(the two top layer groups learning, ``--epochs``; the ``test/`` part is the validation set)
with the ``train`` command, in a workspace under ``--cache`` (reused by later runs), then
exported with every format with the ``export`` command. The numbers are the export's own
table (the Export page's): each format loaded from the files written and run on every
validation picture, one at a time, reading the picture included, in this one process, so
the formats' speeds are measured side by side on the same pictures. The app's own speed
(PyTorch, full precision, batches) is the first row, for scale.

Prints progress on standard error, then a markdown table per data set and one summary table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"


def _sets(names: list[str]) -> list[tuple[str, Path, Path | None]]:
    """(name, training folder, validation folder or None) of each data set to run."""
    if names:
        out = []
        for name in names:
            folder = Path(name)
            if (folder / "train").is_dir():
                out.append((folder.name, folder / "train", folder / "test"))
            else:
                out.append((folder.name, folder, None))
        return out
    out: list[tuple[str, Path, Path | None]] = []
    for folder in sorted(SHARED.iterdir()) if SHARED.is_dir() else []:
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            out.append((folder.name, folder / "train", folder / "test"))
    demo = ROOT / "assets" / "demo" / "fashion_mnist"
    if not any(_same_pictures(demo / "train", train) for _, train, _ in out):
        out.insert(0, ("demo", demo / "train", demo / "val"))
    return out


def _same_pictures(a: Path, b: Path) -> bool:
    """Whether two folders hold pictures of the same names and sizes (the demo set is a copy
    of one of the shared sets: measured once)."""

    def names(folder: Path) -> set[tuple[str, int]]:
        return {(p.name, p.stat().st_size) for p in folder.rglob("*.png")}

    found = names(a)
    return bool(found) and len(found & names(b)) >= 0.9 * len(found)


def _cli(*args: str) -> dict:
    """Run ``python -m tl_core ARGS`` and return its last line's JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "tl_core", *args], cwd=ROOT, capture_output=True, text=True
    )
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"tl_core {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def _trained(cache: Path, name: str, train: Path, val: Path | None, epochs: int) -> Path:
    run_dir = cache / "runs" / name
    if (run_dir / "best.pt").is_file():
        return run_dir
    print(f"[{name}] training EfficientNet-Lite0 ({epochs} epochs)", file=sys.stderr)
    args = ["--workspace", str(cache / "ws"), "train", "--quiet", "--data", str(train)]
    args += ["--val", str(val)] if val is not None else []
    args += ["--model", "efficientnet_lite0", "--trainable-groups", "2", "--epochs", str(epochs)]
    summary = _cli(*args, "--out", str(run_dir), "--overwrite")
    if summary.get("status") != "finished":
        raise SystemExit(f"[{name}] training did not finish: {summary}")
    return run_dir


def _row(name: str, r: dict) -> str:
    size = f"{r['megabytes']:.1f}" if r["megabytes"] else "-"
    speed = f"{r['images_per_second']:.1f}" if r["images_per_second"] else "-"
    status = "offered" if r["offered"] else f"not offered: {r['note']}"
    if r["offered"] and r["note"] and r["status"] == "checked offline":
        status = "offered (checked offline)"
    return (
        f"| {name} | {r['title']} | {size} | {speed} | {r['agreement']} | {r['accuracy']} | "
        f"{status} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="*")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "tl-bench-export"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--formats", default=None)
    args = parser.parse_args()
    header = [
        "| data set | format | MB | pictures/s | same top class as the app (95% CI) | accuracy "
        "| offered |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    rows: list[str] = []
    for name, train, val in _sets(args.datasets):
        run_dir = _trained(args.cache, name, train, val, args.epochs)
        print(f"[{name}] exporting every format", file=sys.stderr)
        export = ["--workspace", str(args.cache / "ws"), "export", "--quiet", str(run_dir)]
        export += ["--out", str(args.cache / f"{name}.zip")]
        export += ["--format", args.formats] if args.formats else []
        summary = _cli(*export)
        app = summary.get("app_images_per_second")
        measured = [r for r in summary["table"] if r["pictures"]]
        right = (
            f"{measured[0]['app_correct']} of {measured[0]['pictures']} right" if measured else "-"
        )
        speed = f"{app:.1f}" if app else "-"
        rows.append(
            f"| {name} | the app (PyTorch, fp32, batches) | - | {speed} | - | {right} | - |"
        )
        rows += [_row(name, r) for r in summary["table"]]
        print("\n".join([*header, *rows[-len(summary["table"]) - 1 :]]), file=sys.stderr)
    print("\n".join([*header, *rows]))


if __name__ == "__main__":
    main()
