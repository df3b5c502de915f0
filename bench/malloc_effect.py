"""Does the training worker's glibc malloc tuning pay off? Same run, with and without it.

Trains the same configuration twice per setting, each in a fresh process (allocator settings
only act from a process's start), alternating, and prints one JSON object as its last line.

    uv run python bench/malloc_effect.py [FOLDER] [--trainable-groups 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from cli_run import train_cli

from tl_core.runs.executor import WORKER_ENV

ROOT = Path(__file__).resolve().parent.parent


def _one(folder: Path, groups: int, epochs: int, tuned: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tuned:
        env.update(WORKER_ENV)
    summary = train_cli(
        folder / "train",
        folder / "val",
        "--epochs",
        str(epochs),
        "--trainable-groups",
        str(groups),
        env=env,
    )
    return float(summary["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "folder", nargs="?", type=Path, default=ROOT / "assets" / "demo" / "fashion_mnist"
    )
    parser.add_argument("--trainable-groups", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    started = time.perf_counter()
    for _ in range(args.repeats):
        for tuned in (False, True):
            times[tuned].append(_one(args.folder, args.trainable_groups, args.epochs, tuned))
    plain, tuned = min(times[False]), min(times[True])
    print(
        json.dumps(
            {
                "plain_seconds": plain,
                "tuned_seconds": tuned,
                "speedup": round(plain / tuned, 2),
                "runs": times[False] + times[True],
                "bench_seconds": round(time.perf_counter() - started, 1),
                "trainable_groups": args.trainable_groups,
                "epochs": args.epochs,
            }
        )
    )


if __name__ == "__main__":
    main()
