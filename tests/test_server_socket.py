"""The server's start-up step (tl_ui.server): every connection its listening socket accepts
sends small answers at once (Nagle's algorithm off), and nothing else is touched."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from tl_ui import server


def _nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_connections_accepted_after_start_up_have_nagle_off(family) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    try:
        listener = socket.socket(family)  # as Streamlit makes it: no protocol named
        listener.bind((host, 0))
    except OSError:
        pytest.skip(f"no {host} on this machine")  # the IPv4 case always runs
    listener.listen()
    before_client = socket.create_connection(listener.getsockname()[:2])
    before, _ = listener.accept()
    assert _nodelay(listener) == 0 and _nodelay(before) == 0  # the default this fixes
    asyncio.run(_start_up())
    assert _nodelay(listener) == 1
    client = socket.create_connection(listener.getsockname()[:2])
    accepted, _ = listener.accept()
    assert _nodelay(accepted) == 1
    for s in (listener, before_client, before, client, accepted):
        s.close()


async def _start_up() -> None:
    async with server.lifespan(None):
        pass


def test_other_sockets_and_files_are_left_alone(tmp_path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    path = tmp_path / "f"
    path.write_text("x")
    fd = os.open(path, os.O_RDONLY)
    server.no_delay_on_listeners()
    assert _nodelay(client) == 0  # a connection is not a listening socket: as it was
    assert os.read(fd, 1) == b"x"  # still open: only its own second handles are closed
    assert udp.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_DGRAM
    os.close(fd)
    for s in (listener, client, udp):
        s.close()
