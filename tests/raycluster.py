"""A one-machine Ray cluster for the tests and the benches, on 127.0.0.1 only: a head, and
worker nodes that may be kept from seeing folders of this machine; each node is stopped on
exit (only its own processes: ``ray stop`` would end every Ray cluster of the machine).

Loopback only. On Linux ``ray start --node-ip-address=127.0.0.1`` alone is not enough: Ray
replaces a loopback address with the machine's network address (so that other machines can
reach the node) and its servers then listen on all addresses. Ray's setting
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (what Ray does on Windows and macOS) keeps 127.0.0.1:
the GCS, the raylets and the agents then listen on 127.0.0.1 only, and every Ray process
and driver (this process, once :func:`loopback_only` ran) connects there. The same setting
makes ``ray start`` refuse to add a worker node, so :func:`worker_nodes` starts each through
:data:`JOIN`: ``ray start`` with that refusal lifted and the loopback address kept as given
(its own processes still read the setting, so they too stay on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
# This environment on every node (no `uv run` re-creation), no token to hand around, and
# every node and driver on 127.0.0.1 (see the module's docstring).
ENV = {
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # A node told to stop stops at once: no draining of its tasks first (30 s by default).
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
}
# `ray start` for a worker node under ENV (see the module's docstring): Ray's refusal of a
# worker node under that setting lifted, the loopback address kept as given.
JOIN = """
import sys
from ray._private import ray_constants, services
from ray.scripts.scripts import main

ray_constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
sys.argv[0] = "ray"
main()
"""
COMMON = ["--node-ip-address=127.0.0.1", "--disable-usage-stats", "--block"]


def loopback_only() -> None:
    """Set ENV in this process, so that its driver connects over 127.0.0.1 (also when Ray
    was imported before)."""
    os.environ.update(ENV)
    loaded = sys.modules.get("ray._private.ray_constants")
    if loaded is not None:
        loaded.ENABLE_RAY_CLUSTER = False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            found.setdefault(ppid, []).append(int(stat.parent.name))
    return found


@dataclass
class RayNode:
    """One ``ray start --block`` of the cluster, in its own process group."""

    name: str
    process: subprocess.Popen
    address: str  # the cluster's (its head's) address
    temp_dir: Path

    def pids(self) -> list[int]:
        """Its processes: ``ray start`` and everything under it (Ray's worker processes run
        in process groups of their own)."""
        children, found, todo = _children(), [], [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def kill(self) -> None:
        """SIGKILL its process group: the node is gone at once (its worker processes end
        when their raylet does)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL after 30 s; then any of its processes left."""
        left = self.pids()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _start(cmd: list[str], name: str, address: str, temp_dir: Path, env: dict[str, str]) -> RayNode:
    temp_dir.mkdir(parents=True, exist_ok=True)
    with open(temp_dir / "start.log", "wb") as log:
        process = subprocess.Popen(
            cmd,
            env={**os.environ, **ENV, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return RayNode(name, process, address, temp_dir)


@contextlib.contextmanager
def head_node(num_cpus: int | None = None, timeout_s: float = 120) -> Iterator[RayNode]:
    """``ray start --head`` on 127.0.0.1 (no dashboard); yields it once its GCS answers."""
    loopback_only()  # the driver (this process) connects with the same settings
    port = _free_port()
    cmd = [str(RAY), "start", "--head", f"--port={port}", "--include-dashboard=false", *COMMON]
    cmd += [f"--temp-dir=/tmp/tl-ray-{os.getpid()}"]  # short: socket paths have a length cap
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    head = _start(cmd, "head", f"127.0.0.1:{port}", Path(f"/tmp/tl-ray-{os.getpid()}"), {})
    try:
        deadline = time.monotonic() + timeout_s
        while True:  # the head answers once its GCS listens
            assert head.process.poll() is None, "ray start --head failed"
            with socket.socket() as s, contextlib.suppress(OSError):
                s.settimeout(1)
                s.connect(("127.0.0.1", port))
                break
            assert time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.25)
        time.sleep(2)  # the raylet registers with the GCS
        yield head
    finally:
        head.stop()


@contextlib.contextmanager
def local_cluster(num_cpus: int | None = None, timeout_s: float = 120) -> Iterator[str]:
    """A head alone (it runs the tasks); yields its address."""
    with head_node(num_cpus, timeout_s) as head:
        yield head.address


def can_hide() -> str | None:
    """Why :func:`worker_nodes` cannot hide folders here, or None when it can."""
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not installed"
    with tempfile.TemporaryDirectory() as folder:
        mount = ["mount", "-t", "tmpfs", "tl-hidden", folder]
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", *mount],
            capture_output=True,
            text=True,
        )
    if probe.returncode != 0:
        return f"`unshare --mount` with a tmpfs mount fails here ({probe.stderr.strip()})"
    return None


def _join(address: str, name: str, num_cpus: int, hidden: Iterable[Path]) -> RayNode:
    temp_dir = Path(f"/tmp/tl-ray-{os.getpid()}-{name}")  # short: socket paths are capped
    ray = [sys.executable, "-c", JOIN, "start", f"--address={address}", *COMMON]
    ray += [f"--num-cpus={num_cpus}", f"--node-name={name}", f"--temp-dir={temp_dir}"]
    mounts = [f"mount -t tmpfs -o size=1m tl-hidden {shlex.quote(str(p))}" for p in hidden]
    script = " && ".join([*mounts, f"exec {shlex.join(ray)}"])
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    return _start(cmd, name, address, temp_dir, {"TMPDIR": str(temp_dir)})


@contextlib.contextmanager
def worker_nodes(
    address: str,
    names: Iterable[str],
    num_cpus: int,
    hidden: Iterable[Path] = (),
    timeout_s: float = 120,
) -> Iterator[dict[str, RayNode]]:
    """Worker nodes joined to the cluster at ``address`` (started together), by name, for
    which the ``hidden`` folders do not exist: each runs in a mount namespace of its own
    where they are covered by an empty tmpfs (``unshare --mount``, as root). Each node's
    temporary folder (Ray's session, and TMPDIR for its jobs' scratch) is its own."""
    nodes: dict[str, RayNode] = {}
    try:
        for name in names:
            nodes[name] = _join(address, name, num_cpus, list(hidden))
        deadline = time.monotonic() + timeout_s
        for name, node in nodes.items():
            log = node.temp_dir / "start.log"
            while b"Ray runtime started" not in log.read_bytes():
                assert node.process.poll() is None, f"{name} failed: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"{name} did not join the cluster"
                time.sleep(0.25)
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()
            shutil.rmtree(node.temp_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- sockets


@dataclass(frozen=True)
class Socket:
    """A TCP socket of a process: its local and remote address and its state."""

    pid: int
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str  # "LISTEN", "ESTABLISHED", ...

    def loopback(self) -> bool:
        """Bound to a loopback address (0.0.0.0 and :: are all addresses, not loopback) and,
        when connected, talking to one."""
        hosts = [self.local[0]] if self.state == "LISTEN" else [self.local[0], self.remote[0]]
        return all(_is_loopback(host) for host in hosts)


STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "0A": "LISTEN"}


def _is_loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _address(hexed: str) -> tuple[str, int]:
    host, port = hexed.split(":")
    raw = bytes.fromhex(host)
    if sys.byteorder == "little":  # /proc/net/tcp* prints each 32-bit word in host order
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw)), int(port, 16)


def _socket_owners(pids: Iterable[int]) -> dict[int, int]:
    owners = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target.startswith("socket:["):
                        owners[int(target[8:-1])] = pid
    return owners


def sockets_of(pids: Iterable[int]) -> list[Socket]:
    """The TCP sockets (IPv4 and IPv6) of the processes ``pids`` that listen or connect,
    read from /proc (what ``ss -tanp`` shows)."""
    owners = _socket_owners(pids)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                state, inode = STATES.get(fields[3]), int(fields[9])
                if state and inode in owners:
                    local, remote = _address(fields[1]), _address(fields[2])
                    found.append(Socket(owners[inode], local, remote, state))
    return found
