"""From a raw folder to a trained model, the whole process, against an independent floor.

    uv run --group bench python bench/end_to_end.py [--sizes 400,4000] [--source DIR]
        [--work DIR] [--model efficientnet_lite0] [--epochs N]

For each N it builds N camera-style JPEGs (about 500x375, like ordinary photos; the same ones
``bench/scale.py`` makes, kept under ``--work`` for the next run), then times two processes
one after the other on the same photos, each from process start to exit:

- ``cli``: what a user runs, ``python -m tl_core train --data PHOTOS`` in a fresh workspace
  with the command's defaults (the backbone frozen; import, training, final scores);
- ``floor``: decode each photo once and run one inference pass of the same pretrained model
  over it, as fast as this machine allows (every core decoding, channels_last, bf16 where the
  CPU has it, the workers' glibc allocator settings: ``bench/train_speed.py``'s
  ``single_pass_files``), with nothing of the app's import, caches or training.

Both run with Python's compiled-module cache on and filled first, as on a user's machine
after the app's first start. It prints a markdown table (seconds, milliseconds per photo, the
ratio cli / floor, and the cost per photo next to the smallest N) and one JSON object as its
last line. The target of
issue 28: the ratio within 1.3x at 400 and 4,000 photos.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import DEMO, make_photos  # noqa: E402

from tl_core.runs.executor import WORKER_ENV  # noqa: E402

SIZES = (400, 4000)
TARGET = 1.3


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Both processes' environment: offline, and Python's compiled-module cache on, as on a
    user's machine after the first start (a ``PYTHONDONTWRITEBYTECODE`` here would make
    every process compile torch's and timm's sources again, about 5 s each)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(extra or {})}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _warm_module_cache() -> None:
    """Import once what both processes import, so neither pays for compiling it."""
    code = "import tl_core.cli, tl_core.training.engine, train_speed"
    cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); {code}"]
    subprocess.run(cmd, cwd=ROOT, env=_env(), check=True)


def _timed(cmd: list[str], log: Path, env_extra: dict[str, str] | None = None) -> float:
    """Seconds from starting ``cmd`` to its exit; SystemExit with its log when it fails."""
    env = _env(env_extra)
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{log.read_text()[-3000:]}")
    return seconds


def _floor(photos: Path, model: str) -> None:
    """The floor's process: decode every photo once, one inference pass."""
    from train_speed import single_pass_files

    files = sorted(p for p in photos.rglob("*.jpg"))
    seconds, _ = single_pass_files(files, model)
    print(json.dumps({"photos": len(files), "inner_seconds": round(seconds, 2)}))


def measure(n: int, source: Path, work: Path, model: str, epochs: int | None) -> dict:
    photos = make_photos(source, work / "pool", n, work / f"photos-{n}")
    count = sum(1 for _ in photos.rglob("*.jpg"))
    floor = _timed(  # with the allocator settings that make inference fastest here
        [sys.executable, __file__, "--floor", str(photos), "--model", model],
        work / f"floor-{n}.log",
        WORKER_ENV,
    )
    ws = work / f"ws-{n}"
    shutil.rmtree(ws, ignore_errors=True)
    cmd = [sys.executable, "-m", "tl_core", "--workspace", str(ws), "train", "--quiet"]
    cmd += ["--data", str(photos), "--model", model, "--out", str(work / f"run-{n}"), "--overwrite"]
    cmd += ["--epochs", str(epochs)] if epochs is not None else []
    cli = _timed(cmd, work / f"cli-{n}.log")
    summary = json.loads((work / f"cli-{n}.log").read_text().strip().splitlines()[-1])
    shutil.rmtree(ws, ignore_errors=True)
    return {
        "n": count,
        "floor_s": round(floor, 2),
        "cli_s": round(cli, 2),
        "ratio": round(cli / floor, 2),
        "cli_ms_per_photo": round(1000 * cli / count, 2),
        "val_accuracy": summary.get("val_accuracy"),
        "epochs": summary.get("epochs"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--source", type=Path, default=DEMO)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=None, help="default: the command's")
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        _floor(args.floor, args.model)
        return
    work = args.work or Path(tempfile.gettempdir()) / "tl-bench-end-to-end"
    work.mkdir(parents=True, exist_ok=True)
    _warm_module_cache()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"[{n}] photos, floor, then the train command", file=sys.stderr)
        rows.append(measure(n, args.source, work, args.model, args.epochs))
        print(json.dumps(rows[-1]), file=sys.stderr)
    base = rows[0]["cli_ms_per_photo"]
    print("| photos | floor (s) | train command (s) | ratio | ms per photo | vs smallest N |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['n']} | {r['floor_s']} | {r['cli_s']} | {r['ratio']}x | "
            f"{r['cli_ms_per_photo']} | {r['cli_ms_per_photo'] / base:.2f}x |"
        )
    verdict = {"target_ratio": TARGET, "met": all(r["ratio"] <= TARGET for r in rows)}
    print(json.dumps({"rows": rows, **verdict}))


if __name__ == "__main__":
    main()
