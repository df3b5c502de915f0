"""Ctrl-C (SIGINT) and SIGTERM in a command-line or worker process: a clean stop, no traceback.

While a run trains, the first signal asks it to stop at the next step (the engine then saves
``last.pt``, so Resume continues from the latest epoch); if that takes longer than
``GRACE_S``, or a second signal comes, or nothing is training, :class:`Interrupted` is raised
at once. The process exits with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

GRACE_S = 10.0  # how long a stopping run may take to save its epoch before it is cut short

Role = Literal["cli", "worker"]

_MESSAGES: dict[tuple[Role, int], str] = {
    ("cli", signal.SIGINT): "Stopped from the command line (Ctrl-C).",
    ("cli", signal.SIGTERM): "Stopped by a termination signal.",
    ("worker", signal.SIGINT): "Interrupted: the server was stopped.",
    ("worker", signal.SIGTERM): "Interrupted: the server stopped the training process.",
}


class Interrupted(KeyboardInterrupt):
    """A signal ended the work; ``exit_code`` is what the process should return."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return message(self.signum)


_role: Role = "worker"
_installed = False
_stopper: Callable[[int], None] | None = None
_asked: int | None = None  # the signal a stopping run was asked to stop for


def message(signum: int, kind: str = "train") -> str:
    """The message of a job of ``kind`` that ``signum`` ended, in this process's role."""
    text = _MESSAGES.get((_role, signum), _MESSAGES[(_role, signal.SIGTERM)])
    if kind != "train" and "training process" in text:
        from tl_core.runs.endings import what

        subject = what(kind)
        text = text.replace(
            "training process", f"process that ran {subject[:1].lower()}{subject[1:]}"
        )
    return text


def signum_of(exc: BaseException) -> int:
    return exc.signum if isinstance(exc, Interrupted) else signal.SIGINT


def _on_signal(signum: int, _frame: object) -> None:
    global _asked
    if _stopper is not None and _asked is None:
        _asked = signum
        _stopper(signum)
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, GRACE_S)
        return
    raise Interrupted(_asked or signum)


def _on_alarm(_signum: int, _frame: object) -> None:
    raise Interrupted(_asked or signal.SIGINT)


def install(role: Role) -> None:
    """Handle SIGINT and SIGTERM in this process (main thread only)."""
    global _role, _installed
    _role = role
    if threading.current_thread() is threading.main_thread():
        _installed = True
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)


def hold() -> None:
    """Ignore further signals while the process cleans up and exits (after ``install``)."""
    if _installed and threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextmanager
def graceful(stop: Callable[[int], None]) -> Iterator[None]:
    """Within the block, the first signal calls ``stop(signum)`` instead of raising."""
    global _stopper, _asked
    _stopper, _asked = stop, None
    try:
        yield
    finally:
        _stopper = None
        if threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)
