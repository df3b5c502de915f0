"""Run ``python -m tl_core train`` in a fresh process and workspace; return its JSON summary."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path


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
