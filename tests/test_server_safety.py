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
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import streamlit as st
from browserflags import free_port, wait_until_listening
from streamlit.testing.v1 import AppTest

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
    monkeypatch.setattr(access, "_WRONG_DELAY_S", 0.0)
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


@pytest.mark.parametrize("page", ["pages/evaluate.py", "pages/data.py", "pages/try_it.py"])
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


def test_the_readme_start_command_listens_on_localhost_only(tmp_path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != access.ENV}
    env |= {"TL_STUDIO_HOME": str(tmp_path / "ws"), "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*command, "--server.port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
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
