"""Progress bars of the command line: on a terminal's standard error only, never with --quiet or
without a terminal, and the JSON summary is always the last line of standard output."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest
from helpers import make_shapes

FAST = ("--model", "test_efficientnet", "--batch-size", "8")
BAR = re.compile(r"(\d+)/(\d+) \[")  # tqdm's "12/60 [00:01<00:03, ...]"
LABELLED = re.compile(r"(?P<label>.*?): +\d+%\|.*?(?P<done>\d+)/(?P<total>\d+) \[")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes") / "src", per_class=12)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory) -> tuple[Path, str, str, str]:
    """(workspace, run folder, stdout, stderr) of a run without a terminal; the commands
    that read a run use it."""
    ws = tmp_path_factory.mktemp("ws")
    stdout, stderr = _run(["train", "--data", str(shapes), *FAST, "--epochs", "1"], ws, tty=False)
    return ws, json.loads(stdout.strip().splitlines()[-1])["run_dir"], stdout, stderr


def _run(args: list[str], ws: Path, tty: bool, sized: bool = False) -> tuple[str, str]:
    """(stdout, stderr) of ``python -m tl_core``; stderr is a pseudo-terminal with ``tty``
    (``sized``: one that says it has 120x40 characters, as a terminal window does)."""
    cmd = [sys.executable, "-m", "tl_core", "--workspace", str(ws), *args]
    env = {**os.environ, "COLUMNS": "120"}
    if not tty:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, proc.stderr
    master, slave = pty.openpty()
    if sized:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other end closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env
    )
    os.close(slave)
    out, _ = proc.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    err = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, err
    return out.decode(), err


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _finished_bars(stderr: str) -> dict[str, tuple[int, int]]:
    """Each bar's label and its last count, from what the terminal was sent."""
    bars: dict[str, tuple[int, int]] = {}
    for frame in re.split(r"[\r\n]", stderr):
        m = LABELLED.match(frame.strip())
        if m:
            bars[m["label"]] = (int(m["done"]), int(m["total"]))
    return bars


def _no_bars(stdout: str, stderr: str) -> None:
    assert len(stdout.strip().splitlines()) == 1  # the JSON summary only
    assert not BAR.search(stderr) and "\r" not in stderr, stderr


def test_train_on_a_terminal_shows_import_frozen_and_epoch_bars(shapes, tmp_path):
    stdout, stderr = _run(
        ["train", "--data", str(shapes), *FAST, "--epochs", "2"],
        tmp_path / "ws",
        tty=True,
        sized=True,
    )
    summary = _last_json(stdout)
    assert summary["epochs"] == 2
    bars = _finished_bars(stderr)
    n = summary["train_images"] + summary["val_images"]
    assert bars["Importing your images"] == (36, 36)
    assert "Preparing your images once" not in bars  # the squares were made while importing
    assert bars["Running your images through the frozen layers once"] == (n, n)
    steps = bars["Training"]
    assert steps[0] == steps[1] > 0  # every step of both epochs
    assert "epoch 2/2" in stderr and "loss" in stderr and "val acc" in stderr
    assert "epoch 1: train loss" in stderr and "epoch 2: train loss" in stderr
    assert "<" in stderr  # tqdm's ETA ("elapsed<remaining")
    assert "Loading the model" in stderr
    assert "{" not in stderr  # the summary goes to standard output only


def test_train_without_a_terminal_prints_no_bar(trained):
    _, _, stdout, stderr = trained
    assert _last_json(stdout)["epochs"] == 1
    _no_bars(stdout, stderr)
    assert "Importing" not in stderr and "Training" not in stderr


def test_train_quiet_on_a_terminal_prints_no_bar(shapes, tmp_path):
    args = ["train", "--data", str(shapes), *FAST, "--epochs", "1", "--quiet"]
    stdout, stderr = _run(args, tmp_path / "ws", tty=True)
    assert _last_json(stdout)["epochs"] == 1
    _no_bars(stdout, stderr)
    assert "Importing" not in stderr and "Training" not in stderr


@pytest.mark.parametrize(
    ("command", "tty"),
    [
        (["evaluate"], True),
        (["evaluate", "--data", "SHAPES"], True),
        (["evaluate"], False),
        (["evaluate", "--quiet"], True),
    ],
    ids=["terminal", "folder-on-a-terminal", "no-terminal", "quiet-on-a-terminal"],
)
def test_evaluate_scoring_bar_on_a_terminal_only(trained, shapes, command, tty):
    ws, run_dir, _, _ = trained
    args = [command[0], run_dir, *(str(shapes) if a == "SHAPES" else a for a in command[1:])]
    stdout, stderr = _run(args, ws, tty)
    summary = _last_json(stdout)
    assert "accuracy" in summary
    bars = _finished_bars(stderr)
    if tty and "--quiet" not in command:
        n = 36 if "--data" in command else summary["images"]
        assert bars["Scoring your images"] == (n, n), stderr
        assert "Loading the model" in stderr
    else:
        _no_bars(stdout, stderr)
        assert stderr.strip() == "", stderr


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "no-terminal"])
def test_export_steps_as_bars_on_a_terminal_and_as_lines_without(trained, tmp_path, tty):
    ws, run_dir, _, _ = trained
    stdout, stderr = _run(
        ["export", run_dir, "--out", str(tmp_path / "m.zip"), "--format", "onnx"], ws, tty
    )
    assert "parity_ok" in _last_json(stdout)
    after = stderr.split("Writing the zip")[1]
    assert after.startswith(" (") == tty  # a bar shows the phase's time: "(00:01)"
    if not tty:
        _no_bars(stdout, stderr)  # the plain status lines, as before


def test_recommend_on_a_terminal_shows_a_bar_per_model(shapes, tmp_path):
    stdout, stderr = _run(["recommend", "--data", str(shapes)], tmp_path / "ws", tty=True)
    summary = _last_json(stdout)
    bars = _finished_bars(stderr)
    assert bars["Importing your images"] == (36, 36)
    n = summary["images"]
    for model in summary["ranking"]:
        assert bars[f"{model['key']}: running your images through it"] == (n, n), bars
