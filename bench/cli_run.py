"""Shared by the bench scripts: the data sets to measure, and ``python -m tl_core train`` run in a
fresh process and workspace."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def data_sets(argv: list[str]) -> list[Path]:
    """The data sets named on the command line; else every ``<name>/train`` under
    ../shared/datasets when present; else the bundled demo set."""
    if argv:
        return [Path(a) for a in argv]
    shared = ROOT.parent / "shared" / "datasets"
    if shared.is_dir():
        return sorted(p for p in shared.iterdir() if (p / "train").is_dir())
    return [ROOT / "assets" / "demo" / "fashion_mnist"]


def train_cli(train: Path, val: Path, *extra: str, env: dict[str, str] | None = None) -> dict:
    with tempfile.TemporaryDirectory() as ws:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tl_core",
                "--workspace",
                ws,
                "train",
                "--data",
                str(train),
                "--val",
                str(val),
                *extra,
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])
