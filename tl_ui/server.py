"""The web server's start-up (``app.py``): every page through the studio's navigation, and
small answers without delay.

Streamlit (1.67) binds its listening socket itself and hands it to uvicorn; the socket is made
without naming TCP as its protocol, so asyncio does not switch off Nagle's algorithm on the
connections it accepts (it does so only for sockets whose protocol is ``IPPROTO_TCP``). Each
HTTP answer is written in two parts (head, then body), and on a kept-alive connection the
second part then waits for the browser's delayed acknowledgement of the first: 40 ms on
Linux for every answer after a connection's first, measured on ``/_stcore/health`` (3.7 ms,
then 41.7, 44.0, 44.0 ms). A live guess takes 30 ms to compute, so that wait more than
doubled its round trip. Accepted sockets inherit ``TCP_NODELAY`` from the listening socket,
so :func:`lifespan` sets it there once, before the first connection.

The server imports torch, torchvision and timm once at start (``tl_ui.session``); with them
Python's collector tracks about 437,000 objects, and one full collection walks them all
(0.3 s here). None of them is ever garbage: :func:`freeze_startup_objects` moves them out of
the collector's sight (``gc.freeze``), so a full collection walks only what came later.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["freeze_startup_objects", "lifespan", "no_delay_on_listeners"]


def freeze_startup_objects() -> int:
    """Collect once, then have the collector ignore every object alive now (the imported
    modules and what they built); how many it froze."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _open_fds() -> list[int]:
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return [int(name) for name in os.listdir(folder) if name.isdigit()]
    return []


def no_delay_on_listeners() -> int:
    """Switch off Nagle's algorithm on this process's listening TCP sockets (and so on every
    connection they accept from then on); how many it set."""
    done = 0
    for fd in _open_fds():
        try:
            sock = socket.socket(fileno=os.dup(fd))  # a second handle: closing it keeps fd
        except OSError:
            continue  # not a socket, or gone
        with sock:
            try:
                if sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                if sock.type != socket.SOCK_STREAM:
                    continue
                if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                done += 1
            except OSError:
                continue
    return done


@contextlib.asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[None]:
    """``st.App``'s lifespan: runs once when the server starts, its socket already bound."""
    no_delay_on_listeners()
    yield
