"""Guessing the access code is slowed down for the whole server (tl_ui.access.Limiter): per
address however many tabs it opens, for all other computers together, with lock-outs that are
logged, and with an allowance of its own for this computer (the teacher's)."""

from __future__ import annotations

import heapq
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tl_ui import access

ROOT = Path(__file__).resolve().parent.parent
CODE = "blue-heron-42"
STUDENT = "10.1.2.3"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limiter(clock: Clock, lines: list[str], **kwargs) -> access.Limiter:
    return access.Limiter(clock=clock, log=lines.append, **kwargs)


def _wrong(limiter: access.Limiter, clock: Clock, address: str) -> bool:
    """One wrong code from ``address``, waiting as long as the limiter asks (told to wait, or
    to come back later); whether it locked the address out."""
    turn = limiter.turn(address)
    while turn.refused_s > 0:
        assert turn.reason == "address" and turn.refused_s <= 10, turn
        clock.now += turn.refused_s
        turn = limiter.turn(address)
    clock.now += turn.wait_s
    return limiter.settle(address, right=False)


# ------------------------------------------------------------------------------ one address


def test_five_wrong_codes_lock_an_address_out_and_each_lockout_doubles() -> None:
    clock, lines = Clock(), []
    limiter = _limiter(clock, lines)
    checked_at = []
    for n in range(1, 6):
        locked = _wrong(limiter, clock, STUDENT)
        checked_at.append(clock.now - 1000.0)
        assert locked is (n == 5)
    assert checked_at == [0.0, 1.0, 3.0, 7.0, 15.0]  # a growing delay, then the lock-out
    refused = limiter.turn(STUDENT)
    assert refused.reason == "address" and refused.refused_s == pytest.approx(60)
    assert access.waiting_sentence(refused) == (
        "Too many wrong access codes were tried from this computer: wait 60 seconds before "
        "trying again."
    )
    assert len(lines) == 1 and STUDENT in lines[0] and "5 wrong" in lines[0]
    clock.now += 30
    assert limiter.turn(STUDENT).refused_s == pytest.approx(30)  # still locked
    clock.now += 30.5
    for _ in range(5):
        locked = _wrong(limiter, clock, STUDENT)
    assert locked
    assert limiter.turn(STUDENT).refused_s == pytest.approx(120)  # the second is twice as long
    assert len(lines) == 2 and "lock-out 2" in lines[1]


def test_a_right_code_starts_the_count_again_and_other_addresses_are_not_touched() -> None:
    clock, lines = Clock(), []
    limiter = _limiter(clock, lines)
    for _ in range(4):
        _wrong(limiter, clock, STUDENT)
    turn = limiter.turn(STUDENT)
    clock.now += turn.wait_s
    limiter.settle(STUDENT, right=True)
    for _ in range(4):
        assert not _wrong(limiter, clock, STUDENT)
    assert limiter.turn("10.1.2.4").wait_s == 0  # a neighbour is not slowed down
    assert not lines


def _checks(sessions: int, seconds: float) -> int:
    """How many codes ``sessions`` tabs of one address get checked in ``seconds``, each tab
    trying again as soon as it is told it may (all wrong)."""
    clock, lines = Clock(), []
    limiter = _limiter(clock, lines)
    start = clock.now
    events = [(start, n, "try") for n in range(sessions)]
    checked = 0
    while events:
        when, n, what = heapq.heappop(events)
        if when > start + seconds:
            break
        clock.now = when
        if what == "check":
            checked += 1
            limiter.settle(STUDENT, right=False)
            heapq.heappush(events, (when, n, "try"))
            continue
        turn = limiter.turn(STUDENT)
        if turn.refused_s > 0:
            heapq.heappush(events, (when + turn.refused_s, n, "try"))
        else:
            heapq.heappush(events, (when + turn.wait_s, n, "check"))
    return checked


# checked at 0, 1, 3, 7 and 15 s, locked out until 75 s, then 76, 78, 82, 90 and locked out
# for two minutes; 90+120+15: locked out for four minutes; 225+240+15: for eight
@pytest.mark.parametrize(("seconds", "most"), [(3, 3), (10, 4), (60, 5), (600, 20)])
def test_six_tabs_of_one_address_get_no_more_tries_than_one(seconds, most) -> None:
    one, six = _checks(1, seconds), _checks(6, seconds)
    assert one == most
    assert six <= one


# --------------------------------------------------------------------- all other computers


def test_all_other_computers_together_have_a_budget_and_this_computer_its_own() -> None:
    clock, lines = Clock(), []
    limiter = _limiter(clock, lines, global_wrong=30)
    admitted = refused = 0
    for n in range(60):  # sixty computers, one wrong code each, within a second
        address = f"10.0.{n // 250}.{n % 250 + 1}"
        turn = limiter.turn(address)
        if turn.refused_s > 0:
            assert turn.reason == "studio"
            refused += 1
            continue
        admitted += 1
        limiter.settle(address, right=False)
        clock.now += 0.01
    assert admitted == 30 and refused == 30
    assert any("30 wrong codes" in line for line in lines)
    assert "on this studio just now" in access.waiting_sentence(limiter.turn("10.9.9.9"))
    for local in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.1.1"):
        assert access.bucket(local) == (access.LOOPBACK, True)
    assert limiter.turn("::1") == access.Turn()  # the teacher's code is checked at once
    limiter.settle("::1", right=True)
    clock.now += 61
    assert limiter.turn("10.9.9.9").refused_s == 0  # the budget comes back


def test_this_computer_can_be_locked_only_by_its_own_wrong_codes() -> None:
    clock, lines = Clock(), []
    limiter = _limiter(clock, lines, global_wrong=10)
    for n in range(40):  # the budget of other computers spent, and one of them locked out
        address = f"192.168.1.{n + 2}"
        if limiter.turn(address).refused_s == 0:
            limiter.settle(address, right=False)
    clock.now += 61
    for _ in range(5):
        _wrong(limiter, clock, STUDENT)
    assert limiter.turn(STUDENT).reason == "address"
    assert limiter.waiting(access.LOOPBACK) == access.Turn()
    for _ in range(5):
        _wrong(limiter, clock, access.LOOPBACK)
    assert limiter.turn(access.LOOPBACK).reason == "address"  # its own five: locked out
    assert limiter.turn("192.168.2.1").refused_s == 0  # and they cost the others nothing


def test_addresses_are_counted_as_one_computer_holds_them() -> None:
    assert access.bucket("2001:db8:1:2::5") == access.bucket("2001:db8:1:2:ffff::9")
    assert access.bucket("2001:db8:1:2::5") != access.bucket("2001:db8:1:3::5")
    assert access.bucket("::ffff:10.1.2.3") == (STUDENT, False)
    assert access.bucket("127.0.0.2") == (access.LOOPBACK, True)
    clock, lines = Clock(), []
    limiter = _limiter(clock, lines)
    for n in range(5):  # a new address of the same /64 network for every try
        _wrong(limiter, clock, f"2001:db8:1:2::{n + 1}")
    assert limiter.turn("2001:db8:1:2::99").reason == "address"


def test_a_lockout_is_written_for_the_teacher(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    clock = Clock()
    limiter = access.Limiter(clock=clock)
    for _ in range(5):
        turn = limiter.turn(STUDENT)
        clock.now += turn.wait_s
        limiter.settle(STUDENT, right=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and STUDENT in err[0] and "locked out for 60 s" in err[0]
    logged = (tmp_path / "ws" / "logs" / "access.log").read_text().strip().splitlines()
    assert logged == err


def test_durations_read_as_words() -> None:
    assert access.duration(0.2) == "1 second"
    assert access.duration(45) == "45 seconds"
    assert access.duration(60) == "60 seconds"
    assert access.duration(120) == "2 minutes"
    assert access.duration(3600) == "60 minutes"
    assert access.duration(7200) == "2 hours"


# -------------------------------------------------------------------------- the prompt


@pytest.fixture
def gate(tmp_path, monkeypatch):
    """The studio with a code, a limiter of its own and a count of the codes checked."""
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(access.ENV, CODE)
    st.cache_resource.clear()
    st.cache_data.clear()
    lines: list[str] = []
    monkeypatch.setattr(access, "LIMITER", access.Limiter(gap_s=0.0, log=lines.append))
    checked: list[str] = []
    real = access.code_matches

    def spy(given, code):
        checked.append(given)
        return real(given, code)

    monkeypatch.setattr(access, "code_matches", spy)
    return checked, lines


def _session(monkeypatch, address: str) -> AppTest:
    monkeypatch.setattr(access, "client_address", lambda: address)
    at = AppTest.from_file(str(ROOT / "studio.py"), default_timeout=120)
    at.run()
    return at


def _give(at: AppTest, monkeypatch, address: str, given: str) -> AppTest:
    monkeypatch.setattr(access, "client_address", lambda: address)
    at.text_input(key="access_code").input(given)
    at.button[0].click().run()
    assert not at.exception
    return at


def _opened(at: AppTest) -> bool:
    return "access_code" not in [t.key for t in at.text_input]


def test_a_locked_out_address_is_told_how_long_and_its_code_is_not_checked(
    gate, monkeypatch
) -> None:
    checked, lines = gate
    at = _session(monkeypatch, STUDENT)
    for n in range(5):
        _give(at, monkeypatch, STUDENT, f"guess-{n}")
        assert "not right" in at.error[0].value
    assert "wait 60 seconds" in at.error[0].value
    assert len(checked) == 5 and len(lines) == 1 and STUDENT in lines[0]
    _give(at, monkeypatch, STUDENT, CODE)
    assert not _opened(at)
    assert at.error[0].value == (
        "Too many wrong access codes were tried from this computer: wait 60 seconds before "
        "trying again."
    )
    assert len(checked) == 5  # the right code was not even looked at
    fresh = _session(monkeypatch, STUDENT)  # a new tab of the same computer: told at once
    assert "wait 60 seconds" in fresh.error[0].value and not _opened(fresh)


def test_six_tabs_of_one_computer_get_one_check_between_two_allowed_tries(
    gate, monkeypatch
) -> None:
    checked, _ = gate
    monkeypatch.setattr(access, "LIMITER", access.Limiter(gap_s=30.0, log=lambda line: None))
    tabs = [_session(monkeypatch, STUDENT) for _ in range(6)]
    for n, at in enumerate(tabs):
        _give(at, monkeypatch, STUDENT, f"guess-{n}")
    assert len(checked) == 1
    assert ["not right" in at.error[0].value for at in tabs] == [True] + [False] * 5
    assert all("from this computer" in at.error[0].value for at in tabs[1:])


def test_the_teacher_s_right_code_gets_through_a_storm_from_other_computers(
    gate, monkeypatch
) -> None:
    for n in range(200):  # a storm: the studio-wide budget is spent, several are locked out
        address = f"10.2.{n // 100}.{n % 100 + 1}"
        turn = access.LIMITER.turn(address)
        if turn.refused_s == 0:
            access.LIMITER.settle(address, right=False)
    for _ in range(5):
        turn = access.LIMITER.turn(STUDENT)
        if turn.refused_s == 0:
            access.LIMITER.settle(STUDENT, right=False)
    student = _give(_session(monkeypatch, "10.3.0.1"), monkeypatch, "10.3.0.1", CODE)
    assert not _opened(student) and "on this studio just now" in student.error[0].value
    teacher = _give(
        _session(monkeypatch, access.LOOPBACK), monkeypatch, access.LOOPBACK, f" {CODE} "
    )
    assert _opened(teacher) and teacher.button(key="use_demo")


def _show_address() -> None:
    import streamlit as st

    from tl_ui import access

    st.markdown(access.client_address())


def test_in_a_test_session_the_browser_is_this_computer() -> None:
    at = AppTest.from_function(_show_address)
    at.run()
    assert not at.exception and at.markdown[0].value == access.LOOPBACK


def test_anything_unexpected_in_the_prompt_is_one_plain_sentence(gate, monkeypatch) -> None:
    def broken(address: str) -> access.Turn:
        raise RuntimeError("/srv/secret/tl_ui/access.py line 12")

    monkeypatch.setattr(access.LIMITER, "waiting", broken)
    at = _session(monkeypatch, STUDENT)
    assert not at.exception
    assert [e.value for e in at.error] == [access.TROUBLE]
    assert "secret" not in repr(at.main)
    assert "use_demo" not in [b.key for b in at.button]
