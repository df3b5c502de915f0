"""The exported web page, served by the app at a URL of its own, for phones in the room.

After an export, the Export page shares the bundle's web page (``web.zip``, the folder alone):
:func:`share` gives it an unguessable token, kept beside the zip so the address stays the same
when the app restarts, and ``GET /model/{token}/`` serves the page's files straight from the
zip. Students open the address (or scan its QR code) without the app's access code: the token
is the permission, for that one page and nothing else. Only names inside the zip's ``web/``
are served. A token is known to the server once the Export page has shown it since the app
started; before that, the address says so in one sentence.

The page runs the model in the browser; the server only hands out its files.
"""

from __future__ import annotations

import secrets
import threading
import zipfile
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

__all__ = ["PREFIX", "mounted", "page_path", "routes", "share"]

PREFIX = "/model"
FOLDER = "web/"  # the page's files inside web.zip
TOKEN_SUFFIX = ".token"
NOT_SHARED = (
    "This page is not shared right now. Ask for it to be shared again: open the Export page "
    "of the studio, where its address is shown."
)
NOT_FOUND = "No such file in this page."
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
# Cross-origin isolation lets onnxruntime-web use threads where the browser allows them
# (https or this computer); same-origin files only, which is all the page loads.
_ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "X-Content-Type-Options": "nosniff",
}

_SHARED: dict[str, Path] = {}
_LOCK = threading.Lock()
_MOUNTED = False


def share(web_zip: Path) -> str:
    """The token that serves ``web_zip`` at :func:`page_path`; the same one every time for the
    same file (kept in ``web.zip.token`` beside it)."""
    web_zip = Path(web_zip).resolve()
    token_file = web_zip.with_name(web_zip.name + TOKEN_SUFFIX)
    with _LOCK:
        try:
            token = token_file.read_text(encoding="ascii").strip()
        except OSError:
            token = ""
        if len(token) < 24:
            token = secrets.token_urlsafe(24)
            partial = token_file.with_name(token_file.name + ".partial")
            partial.write_text(token, encoding="ascii")
            partial.replace(token_file)
        _SHARED[token] = web_zip
    return token


def page_path(token: str) -> str:
    """The page's path on the app's server (append it to the app's address)."""
    return f"{PREFIX}/{token}/"


def mounted() -> bool:
    """Whether the app was started with this route (``streamlit run app.py``)."""
    return _MOUNTED


def _read(web_zip: Path, name: str) -> bytes | None:
    try:
        with zipfile.ZipFile(web_zip) as zf:
            return zf.read(FOLDER + name)
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


async def _serve(request: Request) -> Response:
    token = request.path_params["token"]
    name = request.path_params.get("path") or "index.html"
    with _LOCK:
        web_zip = _SHARED.get(token)
    if web_zip is None:
        return PlainTextResponse(NOT_SHARED, status_code=404)
    if name.startswith("/") or ".." in name.split("/") or "\\" in name:
        return PlainTextResponse(NOT_FOUND, status_code=404)
    data = await run_in_threadpool(_read, web_zip, name)
    if data is None:
        return PlainTextResponse(NOT_FOUND, status_code=404)
    suffix = Path(name).suffix.lower()
    headers = dict(_ISOLATION)
    headers["Cache-Control"] = "no-cache" if suffix in (".html", ".json") else "max-age=3600"
    return Response(
        data, media_type=_TYPES.get(suffix, "application/octet-stream"), headers=headers
    )


async def _slash(request: Request) -> Response:
    """``/model/{token}`` -> ``/model/{token}/``: the page's files are relative to it."""
    return RedirectResponse(page_path(request.path_params["token"]), status_code=307)


def routes() -> list[Route]:
    """The route to mount in ``st.App(routes=...)``."""
    global _MOUNTED
    _MOUNTED = True
    return [
        Route(PREFIX + "/{token}", _slash, methods=["GET"]),
        Route(PREFIX + "/{token}/{path:path}", _serve, methods=["GET"]),
    ]
