"""A one-machine Ray cluster for the tests and the benches: a head on 127.0.0.1, stopped on
exit (only this head: ``ray stop`` would end every Ray cluster of the machine)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
# This environment on every node (no `uv run` re-creation), no token to hand around.
ENV = {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_cluster(num_cpus: int | None = None, timeout_s: float = 120) -> Iterator[str]:
    """``ray start --head --block`` in its own process group; yields its address."""
    os.environ.update(ENV)  # the driver (this process) connects with the same settings
    port = _free_port()
    cmd = [str(RAY), "start", "--head", "--block", f"--port={port}"]
    cmd += ["--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats"]
    cmd += [f"--temp-dir=/tmp/tl-ray-{os.getpid()}"]  # short: socket paths have a length cap
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    head = subprocess.Popen(
        cmd,
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:  # the head answers once its GCS listens
            assert head.poll() is None, "ray start --head failed"
            with socket.socket() as s, contextlib.suppress(OSError):
                s.settimeout(1)
                s.connect(("127.0.0.1", port))
                break
            assert time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.25)
        time.sleep(2)  # the raylet registers with the GCS
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait()
