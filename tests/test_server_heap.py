"""The web server's garbage collection stays off the clicks' path: Streamlit reads the
studio's settings that switch off its collection after every script run, and the objects the
start-up imports build are out of the collector's sight once the start-up is done.

Both run in a fresh Python, as the server does, so this test process is left as it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_streamlit_reads_the_studios_runner_and_watcher_settings() -> None:
    """Read by Streamlit's own loader from the folder the README starts the app in: a
    misspelt option or section would leave Streamlit's defaults (a full collection after
    every script run, a polling file watcher) and fail here."""
    got = _python(
        "import json; from streamlit import config; config.get_config_options(); "
        "print(json.dumps({k: config.get_option(k) for k in "
        "('runner.postScriptGC', 'server.fileWatcherType')}))"
    )
    assert got == {"runner.postScriptGC": False, "server.fileWatcherType": "none"}


def test_the_start_up_freezes_what_the_model_imports_built() -> None:
    """The server's start-up (the pages' background import of torch, torchvision and timm)
    ends by freezing: afterwards a full collection walks a small part of what is alive."""
    got = _python(
        "import gc, json, os\n"
        "os.environ['TL_STUDIO_PREWARM'] = '1'\n"
        "from tl_ui import session\n"
        "before = gc.get_freeze_count()\n"
        "session._prewarm_pages()\n"
        "import threading\n"
        "for th in threading.enumerate():\n"
        "    if th.name == 'tl-studio-prewarm-pages': th.join(240)\n"
        "import torch, timm  # already imported: these are lookups\n"
        "print(json.dumps({'before': before, 'frozen': gc.get_freeze_count(), "
        "'tracked': len(gc.get_objects())}))"
    )
    assert got["before"] == 0
    assert got["frozen"] > 100_000  # torch, torchvision and timm build hundreds of thousands
    assert got["tracked"] < got["frozen"] / 10
