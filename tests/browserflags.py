"""How the browser walks start the app and Chromium: tests/test_browser.py,
tests/test_camera_browser.py and bench/classroom.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_listening(proc: subprocess.Popen, port: int, log_path: Path) -> None:
    """Until the app started as ``proc`` accepts connections on ``port`` (60 s at most);
    AssertionError with its log when it exits or does not start."""
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"streamlit did not start: {log_path.read_text()}"
            time.sleep(0.3)


@contextmanager
def serve_app(workspace: Path, log_path: Path, script: str = "app.py") -> Iterator[str]:
    """The real app on a free local port, serving the queue with warm workers as for users;
    its URL while the block runs. Its output goes to ``log_path``. ``script``: "studio.py"
    serves the pages without the studio's own routes (tl_ui.live_route)."""
    port = free_port()
    env = {
        **os.environ,
        "TL_STUDIO_HOME": str(workspace),
        "HF_HUB_OFFLINE": "1",
        "TL_STUDIO_SERVE": "1",
        "TL_STUDIO_PREWARM": "1",
    }
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "streamlit", "run", script),
                *("--server.port", str(port), "--server.address", "127.0.0.1"),
                *("--server.headless", "true", "--browser.gatherUsageStats", "false"),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_listening(proc, port, log_path)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=20)


@contextmanager
def camera_browser(video: Path, url: str, height: int = 1100) -> Iterator[Any]:
    """A new page of a fresh Chromium whose fake camera plays ``video`` (a .y4m file), the
    camera allowed for ``url``'s address; the browser closes when the block ends."""
    from playwright.sync_api import sync_playwright

    flags = [
        *FLAGS,
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    ]
    origin = "/".join(url.split("/")[:3])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            context = browser.new_context(viewport={"width": 1300, "height": height})
            context.grant_permissions(["camera"], origin=origin)
            yield context.new_page()
        finally:
            browser.close()
