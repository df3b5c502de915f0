"""An optional access code for a studio opened to a network (``TL_STUDIO_ACCESS_CODE``).

When the variable is set, each browser session must give the code once before the app shows
or does anything; without it the app is open to whoever can reach the server (by default only
this computer: ``.streamlit/config.toml`` binds to localhost).

Guessing is slowed down for the whole server, not per tab (:class:`Limiter`, one per server
process): tries from one address are checked one at a time and at most one a second (six
tabs guess no faster than one), each wrong code doubles the wait before the next, five wrong
codes in a row lock the address out for a minute (each later lock-out twice as long, up to an
hour), and all other computers together get at most :data:`GLOBAL_WRONG_PER_MINUTE` wrong
codes a minute. A try refused for any of these is not checked at all. This computer (the
loopback address, where the teacher sits) has an allowance of its own, so a storm of wrong
codes from the network never keeps the teacher from typing the right one. Each lock-out is
one line on the server's output and in the workspace's ``logs/access.log``.

A session that has not given the code sees nothing but the prompt: the prompt runs before
anything else, Streamlit keeps only the prompt's own widget values for it and takes no other
request from it (:func:`guard_streamlit`; a crafted message can send any id with any value),
and anything unexpected is answered with one plain sentence. No browser is ever sent a
traceback (``client.showErrorDetails = "none"`` in ``.streamlit/config.toml``).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st

from tl_core.runs.store import default_workspace

ENV = "TL_STUDIO_ACCESS_CODE"
LOOPBACK = "this computer"  # how the limiter names 127.0.0.1 and ::1
GLOBAL_WRONG_PER_MINUTE = 30
_IN_FLIGHT_S = 30.0  # an admitted try never settled (it cannot happen) frees its turn then
_UNLOCKED = "_tl_access_granted"  # no widget has this key (widget keys are the studio's own)
_GRANTED = object()  # the value: only this module can put it there, no widget value is it
WRONG = "That access code is not right. Check it with whoever started the studio."
TROUBLE = "The studio could not read what this page sent. Reload the page and give the code."


@dataclass
class _Address:
    """What the limiter knows of one address (or one IPv6 /64 network)."""

    wrong: int = 0  # wrong codes in a row (a right code or a lock-out starts again)
    locks: int = 0  # lock-outs so far; each lasts twice as long as the one before
    locked_until: float = 0.0
    next_try: float = 0.0  # no code from this address is checked before this time
    last_seen: float = 0.0
    wrong_total: int = 0


@dataclass(frozen=True)
class Turn:
    """The limiter's answer to one try: check it after ``wait_s`` seconds, or not at all
    (``refused_s`` > 0: try again after that many seconds; ``reason``: "address" when this
    address is slowed down or locked out, "studio" when all computers together are)."""

    wait_s: float = 0.0
    refused_s: float = 0.0
    reason: str = ""


def bucket(address: str) -> tuple[str, bool]:
    """The name wrong codes from ``address`` are counted under, and whether it is this
    computer. IPv6 addresses count by their /64 network (one computer can hold many)."""
    if address == LOOPBACK:
        return LOOPBACK, True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address, False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return LOOPBACK, True
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False)), False
    return str(ip), False


class Limiter:
    """Wrong access codes counted across every session of the server: per address, and all
    other computers together (see the module's text). Thread-safe; the clock and the log
    line's destination can be given for tests."""

    def __init__(
        self,
        *,
        gap_s: float = 1.0,
        max_wait_s: float = 5.0,
        lock_after: int = 5,
        lock_s: float = 60.0,
        max_lock_s: float = 3600.0,
        global_wrong: int = GLOBAL_WRONG_PER_MINUTE,
        window_s: float = 60.0,
        forget_s: float = 3600.0,
        max_addresses: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.gap_s, self.max_wait_s = gap_s, max_wait_s
        self.lock_after, self.lock_s, self.max_lock_s = lock_after, lock_s, max_lock_s
        self.global_wrong, self.window_s, self.forget_s = global_wrong, window_s, forget_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._log = log or log_line
        self._lock = threading.Lock()
        self._addresses: dict[str, _Address] = {}
        self._recent: deque[float] = deque()  # times of wrong codes from other computers
        # Tries admitted and not yet settled: one per address at a time, until when at most.
        self._in_flight: dict[str, tuple[float, bool]] = {}
        self._studio_logged_until = 0.0
        self.wrong_total = 0
        self.lockouts = 0

    # ------------------------------------------------------------------ asking, answering

    def waiting(self, address: str) -> Turn:
        """Whether ``address`` is locked out now, or all other computers are (nothing is
        reserved; the short waits between single tries are left out)."""
        with self._lock:
            return self._refusal(address, self._clock(), reserve=False) or Turn()

    def turn(self, address: str) -> Turn:
        """Reserve a try for ``address``: its wait before the check, or its refusal. Every
        admitted try must be :meth:`settle`-d."""
        with self._lock:
            now = self._clock()
            refused = self._refusal(address, now, reserve=True)
            if refused is not None:
                return refused
            key, local = bucket(address)
            entry = self._entry(key, now)
            start = max(now, entry.next_try)
            entry.next_try = start + self.gap_s
            self._in_flight[key] = (start + self.gap_s + _IN_FLIGHT_S, local)
            return Turn(wait_s=start - now)

    def settle(self, address: str, right: bool) -> bool:
        """Count the outcome of an admitted try; whether ``address`` is now locked out."""
        with self._lock:
            now = self._clock()
            key, local = bucket(address)
            entry = self._entry(key, now)
            self._in_flight.pop(key, None)
            if right:
                entry.wrong = 0
                return False
            entry.wrong += 1
            entry.wrong_total += 1
            self.wrong_total += 1
            if not local:
                self._recent.append(now)
            if entry.wrong < self.lock_after:
                delay = self.gap_s * 2 ** (entry.wrong - 1)
                entry.next_try = max(entry.next_try, now + delay)
                return False
            self._lock_out(key, entry, now)
            return True

    # ------------------------------------------------------------------------- inside

    def _refusal(self, address: str, now: float, *, reserve: bool) -> Turn | None:
        key, local = bucket(address)
        entry = self._addresses.get(key)
        if entry is not None:
            self._forget(entry, now)
            if entry.locked_until > now:
                return Turn(refused_s=entry.locked_until - now, reason="address")
            ahead = entry.next_try - now
            if reserve and (ahead > self.max_wait_s or self._busy(key, now)):
                return Turn(refused_s=max(ahead, self.gap_s, 0.1), reason="address")
        if local:
            return None
        while self._recent and self._recent[0] <= now - self.window_s:
            self._recent.popleft()
        pending = sum(1 for until, near in self._in_flight.values() if until > now and not near)
        if len(self._recent) + pending < self.global_wrong:
            return None
        wait = self._recent[0] + self.window_s - now if self._recent else self.gap_s
        if reserve and now >= self._studio_logged_until:
            self._studio_logged_until = now + wait
            self._log(
                f"access code: {len(self._recent)} wrong codes from other computers in the "
                f"last {self.window_s:.0f} s; their tries are refused for {wait:.0f} s "
                f"({self.wrong_total} wrong in all)"
            )
        return Turn(refused_s=max(wait, 0.1), reason="studio")

    def _busy(self, key: str, now: float) -> bool:
        """Whether a try of ``key`` is admitted and not yet settled (one at a time: tabs that
        try together wait for each other's answer, and its growing delay)."""
        until, _ = self._in_flight.get(key, (0.0, False))
        if until <= now:
            self._in_flight.pop(key, None)
            return False
        return True

    def _forget(self, entry: _Address, now: float) -> None:
        """An address quiet for ``forget_s`` (after its last try or lock-out) starts afresh."""
        if now - max(entry.last_seen, entry.locked_until) > self.forget_s:
            entry.wrong = entry.locks = 0

    def _entry(self, key: str, now: float) -> _Address:
        entry = self._addresses.get(key)
        if entry is None:
            if len(self._addresses) >= self.max_addresses:
                self._drop_oldest(now)
            entry = self._addresses[key] = _Address()
        entry.last_seen = now
        return entry

    def _drop_oldest(self, now: float) -> None:
        free = [
            k
            for k, e in self._addresses.items()
            if e.locked_until <= now and k not in self._in_flight
        ]
        for key in sorted(free, key=lambda k: self._addresses[k].last_seen)[: len(free) // 2 + 1]:
            del self._addresses[key]

    def _lock_out(self, key: str, entry: _Address, now: float) -> None:
        entry.locks += 1
        self.lockouts += 1
        seconds = min(self.lock_s * 2 ** (entry.locks - 1), self.max_lock_s)
        entry.locked_until = entry.next_try = now + seconds
        entry.wrong = 0
        self._log(
            f"access code: {key} locked out for {seconds:.0f} s after {self.lock_after} wrong "
            f"codes in a row (lock-out {entry.locks} of this address, {entry.wrong_total} wrong "
            f"from it, {self.wrong_total} wrong on this server)"
        )


def log_line(line: str) -> None:
    """One line for the teacher: on the server's output and in the workspace's
    ``logs/access.log`` (when it can be written)."""
    stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
    print(stamped, file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        folder = default_workspace() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "access.log", "a", encoding="utf-8") as log:
            log.write(stamped + "\n")


LIMITER = Limiter()


# ------------------------------------------------------------------------------ the prompt


def access_code() -> str | None:
    """The code the server asks for, or None when the app is open (variable unset or blank)."""
    code = os.environ.get(ENV, "").strip()
    return code or None


def code_matches(given: object, code: str) -> bool:
    """Whether ``given`` is the code, compared in constant time (anything but text is not)."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.strip().encode(), code.encode())


def client_address() -> str:
    """This session's browser address, :data:`LOOPBACK` for this computer (Streamlit reports
    127.0.0.1 and ::1 as no address)."""
    try:
        address = st.context.ip_address
    except Exception:  # no server: this computer
        address = None
    return address if isinstance(address, str) and address else LOOPBACK  # AppTest: a mock


def waiting_sentence(turn: Turn) -> str:
    """One sentence: why a try is refused and how long to wait."""
    who = "from this computer" if turn.reason == "address" else "on this studio just now"
    return (
        f"Too many wrong access codes were tried {who}: wait {duration(turn.refused_s)} "
        "before trying again."
    )


def duration(seconds: float) -> str:
    """``seconds`` in words, rounded up: "1 second", "45 seconds", "2 minutes", "2 hours"."""
    if seconds <= 90:
        n, unit = max(1, math.ceil(seconds)), "second"
    elif seconds <= 90 * 60:
        n, unit = math.ceil(seconds / 60), "minute"
    else:
        n, unit = math.ceil(seconds / 3600), "hour"
    return f"{n} {unit}{'s' if n != 1 else ''}"


def unlocked() -> bool:
    """Whether this session gave the code (a value only :func:`require_access_code` sets)."""
    try:
        return st.session_state.get(_UNLOCKED) is _GRANTED
    except Exception:
        return False


def require_access_code() -> None:
    """Ask for the access code when one is set; stop the script until it is given."""
    code = access_code()
    if code is None or unlocked():
        return
    guard_streamlit()  # app.py did it already; `streamlit run studio.py` gets it here
    try:
        _prompt(code)
    except Exception:  # a crafted message: one sentence, never the details
        with contextlib.suppress(Exception):
            _forget_widget_states(keep_known=False)
        st.error(TROUBLE)
    st.stop()


def _prompt(code: str) -> None:
    _forget_widget_states(keep_known=True)
    st.set_page_config(
        page_title="Transfer Learning Studio", page_icon="🧠", initial_sidebar_state="collapsed"
    )
    st.title("Transfer Learning Studio")
    notice = st.empty()
    with st.form("access_code_form"):
        given = st.text_input(
            "Access code",
            type="password",
            key="access_code",
            help="Whoever started the studio set this code; ask them for it.",
        )
        sent = st.form_submit_button("Open the studio", type="primary")
    address = client_address()
    if sent:
        sentence = _try_code(address, given, code)
    else:
        turn = LIMITER.waiting(address)
        sentence = waiting_sentence(turn) if turn.refused_s > 0 else None
    if sentence:
        notice.error(sentence)


def _try_code(address: str, given: object, code: str) -> str:
    """Check ``given`` when the limiter allows it; open the studio (a rerun) when right,
    else the sentence to show."""
    turn = LIMITER.turn(address)
    if turn.refused_s > 0:
        return waiting_sentence(turn)  # not checked at all
    right = False
    try:
        time.sleep(turn.wait_s)  # the script's own thread: other sessions go on meanwhile
        right = code_matches(given, code)
    finally:
        locked = LIMITER.settle(address, right)
    if right:
        st.session_state[_UNLOCKED] = _GRANTED
        st.session_state.pop("access_code", None)
        st.rerun()
    if locked:
        return f"{WRONG} {waiting_sentence(LIMITER.waiting(address))}"
    return WRONG


def _forget_widget_states(*, keep_known: bool) -> None:
    """Drop the widget values this session holds for widgets it never drew (all of them
    when ``keep_known`` is False): a browser sends only the prompt's own two, a crafted
    message may send any id with any value."""
    from streamlit.runtime.state.session_state_proxy import get_session_state

    safe = get_session_state()
    state = getattr(safe, "_state", None)
    widgets = getattr(state, "_new_widget_state", None)
    states, known = getattr(widgets, "states", None), getattr(widgets, "widget_metadata", None)
    if not isinstance(states, dict) or not isinstance(known, dict):
        return
    with getattr(safe, "_lock", contextlib.nullcontext()):
        for widget_id in list(states):
            if not (keep_known and widget_id in known):
                del states[widget_id]


# ------------------------------------------------------------------- Streamlit's own parts


_OPEN_MESSAGES = frozenset({"rerun_script", "app_heartbeat", "stop_script"})


def guard_streamlit() -> None:
    """Three changes to Streamlit's session handling, once per process (``app.py`` makes
    them at start): a session that has not given the code keeps only the prompt's own widget
    values, of the kind each sends, so a crafted value fails nowhere, not even in Streamlit's
    handling before the script runs (:func:`_prompt_values_only`); it may send nothing but
    reruns, heartbeats and stops (no cache clearing for everyone, no git details, no file
    links); and no session is told the main script's path on the server (Streamlit sends it
    with every run; the browser only hashes it)."""
    from streamlit.runtime.app_session import AppSession
    from streamlit.runtime.state.session_state import SessionState

    _wrap(SessionState, "on_script_will_rerun", _filtered_rerun)
    _wrap(AppSession, "handle_backmsg", _filtered_message)
    _wrap(AppSession, "_create_new_session_message", _pathless_new_session)


def _wrap(cls: type, name: str, wrapper: Callable[..., Any]) -> None:
    """Replace ``cls.name`` with ``wrapper(original, self, ...)``, once."""
    original = getattr(cls, name, None)
    if original is None or getattr(original, "_tl_guarded", False):
        return

    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        return wrapper(original, self, *args, **kwargs)

    guarded._tl_guarded = True  # type: ignore[attr-defined]
    setattr(cls, name, guarded)


def _filtered_rerun(original: Callable[..., Any], state: Any, fresh: Any, **kwargs: Any) -> Any:
    if access_code() is not None and not _granted(state):
        fresh = _prompt_values_only(state, fresh)
        replay = kwargs.get("replay_trigger_states")
        if replay is not None:
            kwargs["replay_trigger_states"] = _prompt_values_only(state, replay)
    return original(state, fresh, **kwargs)


def _filtered_message(original: Callable[..., Any], session: Any, msg: Any) -> Any:
    locked = access_code() is not None and not _granted(getattr(session, "_session_state", None))
    if locked and msg.WhichOneof("type") not in _OPEN_MESSAGES:
        return None  # a locked session's browser never sends it
    return original(session, msg)


def _pathless_new_session(original: Callable[..., Any], session: Any, *a: Any, **k: Any) -> Any:
    msg = original(session, *a, **k)
    msg.new_session.ClearField("main_script_path")
    return msg


def _granted(state: Any) -> bool:
    """Whether the session whose Streamlit state is ``state`` gave the code (read without
    its lock: from the server's thread while the script's may be running)."""
    for part in ("_new_session_state", "_old_state"):
        values = getattr(state, part, None)
        if isinstance(values, dict) and values.get(_UNLOCKED) is _GRANTED:
            return True
    return False


def _prompt_values_only(state: Any, widget_states: Any) -> Any:
    """``widget_states`` (a WidgetStates message, or None) less every value for a widget this
    session never drew, or of another kind than the one that widget sends."""
    if widget_states is None:
        return None
    from streamlit.proto.WidgetStates_pb2 import WidgetStates

    known = getattr(getattr(state, "_new_widget_state", None), "widget_metadata", {})
    kept = WidgetStates()
    for widget in widget_states.widgets:
        meta = known.get(widget.id) if isinstance(known, dict) else None
        if meta is not None and widget.WhichOneof("value") == meta.value_type:
            kept.widgets.append(widget)
    return kept
