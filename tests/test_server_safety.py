"""The server is safe by default: localhost only, the upload limit the importer accepts, and an
optional access code that guards every page."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from browserflags import free_port, wait_until_listening
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from tl_core.data.dataset import MAX_IMPORT_MB
from tl_ui import access, live_route

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".streamlit" / "config.toml"
CODE = "blue-heron-42"


def _config() -> dict:
    return tomllib.loads(CONFIG.read_text(encoding="utf-8"))


def test_config_binds_to_localhost_and_sends_nothing() -> None:
    cfg = _config()
    assert cfg["server"]["address"] == "localhost"
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["showErrorDetails"] == "none"  # no traceback ever reaches a browser
    assert cfg["client"]["toolbarMode"] == "viewer"  # no "Deploy" button, no developer items
    assert cfg["server"].get("enableXsrfProtection", True) is True
    assert cfg["server"].get("enableCORS", True) is True
    assert cfg["server"].get("enableStaticServing", False) is False


def test_upload_limit_is_what_the_importer_accepts() -> None:
    import inspect

    from tl_core.data.dataset import import_zip

    assert _config()["server"]["maxUploadSize"] == MAX_IMPORT_MB
    default = inspect.signature(import_zip).parameters["max_total_bytes"].default
    assert default == MAX_IMPORT_MB * 1024**2
    assert MAX_IMPORT_MB > 200  # more than Streamlit's own default


# ------------------------------------------------------------------------------ access code


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(access, "LIMITER", access.Limiter(gap_s=0.0, log=lambda line: None))
    st.cache_resource.clear()
    st.cache_data.clear()
    return tmp_path / "ws"


def _app(script: str = "studio.py") -> AppTest:
    at = AppTest.from_file(str(ROOT / script), default_timeout=120)
    at.run()
    return at


def _only_the_prompt(at: AppTest) -> None:
    assert not at.exception
    assert [t.label for t in at.text_input] == ["Access code"]
    assert not at.metric and not at.radio and not at.sidebar.code
    assert not [b for b in at.button if b.key == "use_demo"]


@pytest.mark.parametrize("code", ["", "   "])
def test_without_a_code_the_app_opens_directly(workspace, monkeypatch, code) -> None:
    monkeypatch.setenv(access.ENV, code)
    at = _app()
    assert not at.exception
    assert "access_code" not in [t.key for t in at.text_input]
    assert at.button(key="use_demo")


def test_with_a_code_the_app_shows_only_the_prompt(workspace, monkeypatch) -> None:
    monkeypatch.setenv(access.ENV, CODE)
    _only_the_prompt(_app())


@pytest.mark.parametrize(
    "page", ["app_pages/evaluate.py", "app_pages/data.py", "app_pages/try_it.py"]
)
def test_a_page_opened_by_its_own_address_asks_for_the_code_too(
    workspace, monkeypatch, page
) -> None:
    monkeypatch.setenv(access.ENV, CODE)
    _only_the_prompt(_app(page))


@pytest.mark.parametrize("wrong", ["", "blue-heron-4", "BLUE-HERON-42", "blue-heron-42x", "42"])
def test_a_wrong_code_is_refused(workspace, monkeypatch, wrong) -> None:
    monkeypatch.setenv(access.ENV, CODE)
    at = _app()
    at.text_input(key="access_code").input(wrong)
    at.button[0].click().run()
    _only_the_prompt(at)
    assert "not right" in at.error[0].value


@pytest.mark.parametrize("given", [CODE, f"  {CODE} "])
def test_the_right_code_opens_the_app_for_the_session(workspace, monkeypatch, given) -> None:
    monkeypatch.setenv(access.ENV, CODE)
    at = _app()
    at.text_input(key="access_code").input(given)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert at.button(key="use_demo")
    at.run()  # later reruns of the same session do not ask again
    assert at.button(key="use_demo") and "access_code" not in [t.key for t in at.text_input]


def test_code_matches_compares_exactly() -> None:
    assert access.code_matches(CODE, CODE)
    assert access.code_matches(f"{CODE}\n", CODE)
    assert not access.code_matches(CODE.upper(), CODE)
    assert not access.code_matches("é" + CODE, CODE)  # non-ASCII input is no error


# ------------------------------------------------------------------------------- the server


def _other_address() -> str | None:
    """A non-loopback IPv4 address of this machine, or None when it has none."""
    candidates: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent for UDP
            candidates.append(s.getsockname()[0])
        except OSError:
            pass
    with contextlib.suppress(OSError):
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    return next((a for a in candidates if not a.startswith("127.") and a != "0.0.0.0"), None)


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def _start_app(port: int, log: Path, env: dict[str, str], *flags: str) -> subprocess.Popen:
    """``streamlit run app.py`` as the README starts it, on ``port``, its output in ``log``."""
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    with open(log, "w") as out:
        return subprocess.Popen(
            [*command, "--server.port", str(port), *flags],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_the_readme_start_command_listens_on_localhost_only(tmp_path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != access.ENV}
    env |= {"TL_STUDIO_HOME": str(tmp_path / "ws"), "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "streamlit.log"
    proc = _start_app(port, log, env)  # the README's command: no address given
    try:
        wait_until_listening(proc, port, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as r:
            assert r.read() == b"ok"
        # the live camera's route is served beside the pages, and refuses a page it did not draw
        guess = urllib.request.Request(f"http://127.0.0.1:{port}{live_route.ROUTE}", b"x")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(guess, timeout=10)
        assert refused.value.code == 403
        assert json.loads(refused.value.read()) == {"error": live_route.EXPIRED}
        other = _other_address()
        if other is not None:
            assert not _reachable(other, port), f"the server answers on {other}"
        if shutil.which("ss"):
            listening = subprocess.run(
                ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
            ).stdout.split("\n")
            local = [line.split()[3] for line in listening if line.strip()]
            assert local, "ss lists no listening socket"
            for address in local:
                host = address.rsplit(":", 1)[0].strip("[]")
                assert host in ("127.0.0.1", "::1"), address
        else:
            assert other is not None, "neither another address nor ss to check the binding"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ----------------------------------------------------- a raw websocket client without the code

PROMPT_BUTTON = "FormSubmitter:access_code_form"
NOT_RIGHT = "That access code is not right."
_EARLY = ForwardMsg.FINISHED_EARLY_FOR_RERUN
_PROMPT_ELEMENTS = {"heading", "alert", "text_input", "button", "empty"}
_Z = "0" * 32
# a value of every kind a widget state can hold (the prompt's own two send string, trigger)
_KINDS: list[dict] = [
    {"trigger_value": True},
    {"bool_value": True},
    {"double_value": 1.5},
    {"int_value": 7},
    {"string_value": "x"},
    {"json_value": "{"},
    {"json_trigger_value": "["},
    {"bytes_value": b"\xff\x00"},
    {"double_array_value": {"data": [1.0]}},
    {"int_array_value": {"data": [1]}},
    {"string_array_value": {"data": ["x"]}},
    {"arrow_value": {"data": b"\x00garbage"}},
    {"file_uploader_state_value": {"uploaded_file_info": [{"file_id": "x", "name": "a"}]}},
    {"string_trigger_value": {"data": "x"}},
    {"chat_input_value": {"data": "x"}},
]
# ids the studio's widgets or session keys use, or none at all
_FORGED_IDS = [
    "nonexistent",
    "access_code_ok",
    "_tl_access_granted",
    "access_code",
    f"$$ID-{_Z}-_tl_access_granted",
    f"$$ID-{_Z}-use_demo",
    f"$$ID-{_Z}-None",
]


def _rerun(
    widgets=(), *, page_name: str = "", page_hash: str = "", query: str = "", fragment: str = ""
) -> BackMsg:
    msg = BackMsg()
    state = msg.rerun_script
    state.query_string, state.page_name, state.page_script_hash = query, page_name, page_hash
    state.fragment_id = fragment
    state.widget_states.widgets.extend(widgets)
    return msg


class RawClient:
    """One browser session without a browser: Streamlit's own messages over the websocket,
    as a crafted client sends them. Every byte the server sends is kept in ``received``."""

    def __init__(self, base: str) -> None:
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            ws_connect(
                f"{base.replace('http', 'ws', 1)}/_stcore/stream",
                subprotocols=[Subprotocol("streamlit")],
                max_size=None,
                open_timeout=60,
            )
        )
        self.received: list[bytes] = []
        first = self.send(_rerun())
        ids = [m.delta.new_element for m in first if m.WhichOneof("type") == "delta"]
        self.text_id = next(e.text_input.id for e in ids if e.WhichOneof("type") == "text_input")
        self.button_id = next(e.button.id for e in ids if e.WhichOneof("type") == "button")

    def send(self, msg: BackMsg, timeout: float = 300) -> list[ForwardMsg]:
        """Send ``msg``, then a rerun when it is none (or one of a fragment, which may get no
        answer); the messages up to the end of the run (after a rerun the script asked for)."""
        self.ws.send(msg.SerializeToString())
        if msg.WhichOneof("type") != "rerun_script" or msg.rerun_script.fragment_id:
            self.ws.send(_rerun().SerializeToString())
        deadline = time.monotonic() + timeout
        out: list[ForwardMsg] = []
        while True:
            data = self.ws.recv(timeout=max(1.0, deadline - time.monotonic()))
            assert isinstance(data, bytes)
            self.received.append(data)
            fm = ForwardMsg()
            fm.ParseFromString(data)
            out.append(fm)
            if fm.WhichOneof("type") == "script_finished" and fm.script_finished != _EARLY:
                return out

    def give(self, code: str) -> str:
        """Type ``code`` and press the button; the sentences shown (alerts) after it."""
        out = self.send(_rerun([self._text(code), self._press()]))
        return " ".join(m.delta.new_element.alert.body for m in out if _kind(m) == "alert")

    def _text(self, value: str) -> WidgetState:
        return WidgetState(id=self.text_id, string_value=value)

    def _press(self) -> WidgetState:
        return WidgetState(id=self.button_id, trigger_value=True)

    def close(self) -> None:
        self._stack.close()


def _kind(msg: ForwardMsg) -> str | None:
    return msg.delta.new_element.WhichOneof("type") if msg.WhichOneof("type") == "delta" else None


def _nothing_but_the_prompt(client: RawClient, out: list[ForwardMsg], secrets: list[str]):
    """No internals in any byte sent so far; nothing of the studio beyond the prompt."""
    for data in client.received:
        for needle in ("Traceback", ".py", 'File "', *secrets):
            assert needle.encode() not in data, (needle, data[:2000])
    for msg in out:
        assert msg.WhichOneof("type") not in ("navigation", "git_info_changed", "page_not_found")
        kind = _kind(msg)
        element = msg.delta.new_element
        assert kind is None or kind in _PROMPT_ELEMENTS, element
        if kind == "button":
            assert PROMPT_BUTTON in element.button.id
        if kind == "heading":
            assert element.heading.body == "Transfer Learning Studio"


@pytest.fixture(scope="module")
def coded_server(tmp_path_factory) -> Iterator[tuple[str, Path, Path]]:
    """The app as the README starts it, with an access code, on a free local port: its URL,
    workspace and log."""
    tmp = tmp_path_factory.mktemp("coded")
    env = {
        **os.environ,
        access.ENV: CODE,
        "TL_STUDIO_HOME": str(tmp / "ws"),
        "HF_HUB_OFFLINE": "1",
        "TL_STUDIO_SERVE": "0",
        "TL_STUDIO_PREWARM": "0",
    }
    port, log = free_port(), tmp / "streamlit.log"
    proc = _start_app(port, log, env, "--server.address", "127.0.0.1")
    try:
        wait_until_listening(proc, port, log)
        yield f"http://127.0.0.1:{port}", tmp / "ws", log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_raw_client_without_the_code_gets_no_internals_and_no_studio(coded_server) -> None:
    base, workspace, _ = coded_server
    secrets = [str(ROOT), str(workspace), CODE]
    client = RawClient(base)
    try:
        forged = [
            [WidgetState(id=i, **kind) for i in _FORGED_IDS for kind in _KINDS[:1]],
            *([WidgetState(id=i, **kind) for i in _FORGED_IDS] for kind in _KINDS),
            *([WidgetState(id=client.text_id, **kind)] for kind in _KINDS),
            *([client._text("x"), WidgetState(id=client.button_id, **k)] for k in _KINDS[1:]),
            [client._press()],  # a forged press with no code typed: a wrong code
            [WidgetState(id=client.text_id, int_value=7), client._press()],  # the same
        ]
        for widgets in forged:
            _nothing_but_the_prompt(client, client.send(_rerun(widgets)), secrets)
        # (no name ending in .py: the server repeats the name it was sent)
        for page in (
            "train",
            "evaluate",
            "repair",
            "../app",
            "pages/train",
            "app_pages/train",
            "studio",
        ):
            _nothing_but_the_prompt(client, client.send(_rerun(page_name=page)), secrets)
        for where in ({"page_hash": _Z}, {"fragment": "nope"}, {"query": "project=x&page=y"}):
            _nothing_but_the_prompt(client, client.send(_rerun(**where)), secrets)
        for other in ("clear_cache", "load_git_info", "set_run_on_save", "file_urls_request"):
            msg = BackMsg()
            if other == "file_urls_request":
                msg.file_urls_request.request_id, msg.file_urls_request.file_names[:] = "r", ["a"]
            else:
                setattr(msg, other, True)
            _nothing_but_the_prompt(client, client.send(msg), secrets)
        # the session still works, and the code, and only the code, opens it
        out = client.send(_rerun([client._text(CODE), client._press()]))
        headings = [m.delta.new_element.heading.body for m in out if _kind(m) == "heading"]
        assert "1. Your images" in headings, headings
    finally:
        client.close()


def test_six_raw_sessions_of_one_computer_get_no_more_tries_than_one(coded_server) -> None:
    base, _, log = coded_server
    tabs = [RawClient(base) for _ in range(6)]
    checked: list[str] = []
    refused: list[str] = []

    def guess(tab: RawClient, until: float) -> None:
        n = 0
        while time.monotonic() < until:
            said = tab.give(f"guess-{id(tab)}-{n}")
            n += 1
            (checked if NOT_RIGHT in said else refused).append(said)

    try:
        until = time.monotonic() + 12
        threads = [threading.Thread(target=guess, args=(tab, until)) for tab in tabs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        # one tab alone: checked at 0, 1, 3 and 7 s, and a try made from 10 s on waits for
        # its turn at 15 s, the fifth, which locks it out (without the limit: 1 a second each)
        assert len(checked) <= 5, checked
        assert refused and all("from this computer" in said for said in refused)
        deadline = time.monotonic() + 90
        while not any("wait 60 seconds" in said for said in checked):
            assert time.monotonic() < deadline, checked
            said = tabs[0].give("one-more-guess")
            if NOT_RIGHT in said:
                checked.append(said)
            else:
                time.sleep(0.5)  # told to wait a moment: a person would too
        for tab in tabs[1:3]:  # the right code during the lock-out: not even checked
            out = tab.send(_rerun([tab._text(CODE), tab._press()]))
            said = " ".join(m.delta.new_element.alert.body for m in out if _kind(m) == "alert")
            assert said.startswith("Too many wrong access codes were tried from this computer")
            _nothing_but_the_prompt(tab, out, [CODE])
        assert "access code: this computer locked out for 60 s" in log.read_text()
    finally:
        for tab in tabs:
            tab.close()
