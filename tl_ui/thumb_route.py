"""Small thumbnails of a data set's pictures over plain HTTP, for the picture map's hover.

The picture map (:mod:`tl_ui.picture_map`) shows up to 20,000 pictures as dots; hovering one
shows its picture. Sending 20,000 thumbnails with the page would take many megabytes, so the
page sends none: the browser asks this route for the one it hovers,
``GET /api/thumb/{token}/{index}``, and gets a JPEG of at most :data:`SIDE` pixels a side.

Only a page the studio drew may ask: :func:`grant` gives an unguessable token for one list of
picture files inside one data folder, and the route serves the file at that place in the list,
nothing else: the file is resolved (links followed) and refused when it is not inside the
folder. A token unused for :data:`IDLE_S` is forgotten, and at most :data:`MAX_FILES_HELD`
file names are held for all tokens together (the oldest tokens go first). Thumbnails made
lately are kept in memory (at most :data:`CACHE_BYTES`), and the browser keeps them too.

When the app is started without the route (``streamlit run studio.py``), :func:`mounted` is
False and the map shows the hover text only.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

__all__ = [
    "PREFIX",
    "ROUTE",
    "SIDE",
    "grant",
    "mounted",
    "routes",
    "thumbnail",
    "url_prefix",
]

PREFIX = "/api/thumb"
ROUTE = PREFIX + "/{token}/{index:int}"
SIDE = 128  # pixels on the long side
QUALITY = 82
IDLE_S = 3600.0  # a token unused for this long is forgotten
MAX_FILES_HELD = 400_000  # file names held for all tokens together (about 50 MB at most)
CACHE_BYTES = 48 * 1024 * 1024  # thumbnails kept in memory
MAX_SOURCE_PIXELS = 64_000_000  # a picture larger than this is not decoded for a thumbnail
NOT_FOUND = "No such picture."


@dataclass
class _Grant:
    root: Path  # resolved
    files: tuple[str, ...]
    fingerprint: str
    used: float


_GRANTS: OrderedDict[str, _Grant] = OrderedDict()
_BY_FINGERPRINT: dict[str, str] = {}
_LOCK = threading.Lock()
_MOUNTED = False


def _fingerprint(root: Path, files: Sequence[str]) -> str:
    digest = hashlib.blake2b(str(root).encode(), digest_size=20)
    for name in files:
        digest.update(b"\0" + name.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _drop_oldest() -> None:
    """Forget the least recently used tokens beyond :data:`MAX_FILES_HELD` names (the newest
    one is always kept)."""
    held = sum(len(g.files) for g in _GRANTS.values())
    while held > MAX_FILES_HELD and len(_GRANTS) > 1:
        _, old = _GRANTS.popitem(last=False)
        _BY_FINGERPRINT.pop(old.fingerprint, None)
        held -= len(old.files)


def grant(root: Path, files: Sequence[str]) -> str:
    """A token that lets the browser fetch a thumbnail of ``files[i]`` as
    ``{url_prefix(token)}{i}``; each file is relative to ``root`` (or absolute inside it).

    The same folder and list give the same token while it lives, so a page may ask for it
    on every rerun."""
    found = Path(root).resolve()
    names = tuple(str(f) for f in files)
    key = _fingerprint(found, names)
    now = time.monotonic()
    with _LOCK:
        token = _BY_FINGERPRINT.get(key)
        if token is not None and token in _GRANTS and now - _GRANTS[token].used <= IDLE_S:
            _GRANTS[token].used = now
            _GRANTS.move_to_end(token)
            return token
        if token is not None:
            _GRANTS.pop(token, None)
        token = secrets.token_urlsafe(24)
        _GRANTS[token] = _Grant(found, names, key, now)
        _BY_FINGERPRINT[key] = token
        _drop_oldest()
        return token


def url_prefix(token: str) -> str:
    """Where the browser finds the token's thumbnails: the prefix, the index after it."""
    return f"{PREFIX}/{token}/"


def _granted(token: str) -> _Grant | None:
    now = time.monotonic()
    with _LOCK:
        found = _GRANTS.get(token)
        if found is None:
            return None
        if now - found.used > IDLE_S:
            del _GRANTS[token]
            _BY_FINGERPRINT.pop(found.fingerprint, None)
            return None
        found.used = now
        _GRANTS.move_to_end(token)
        return found


def _inside(root: Path, name: str) -> Path | None:
    """The file ``name`` resolved, or None when it is not a file inside ``root``."""
    try:
        path = (root / name).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


class _Cache:
    """Thumbnails by file (and its size and time), the least recently used dropped first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._items: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[str, int, int], data: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self._held += len(data)
            while self._held > self._limit and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._held -= len(old)


_CACHE = _Cache(CACHE_BYTES)


def thumbnail(path: Path, side: int = SIDE) -> bytes | None:
    """A JPEG of the picture at ``path``, at most ``side`` pixels a side; None when the file
    is not a picture Pillow can read (or is far too large to be one of a data set's)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_SOURCE_PIXELS:
                return None
            image.draft("RGB", (side, side))  # JPEG: decode at a fraction of the size
            small = image.convert("RGB")
        small.thumbnail((side, side))
        out = io.BytesIO()
        small.save(out, "JPEG", quality=QUALITY)
    except Exception:  # not a picture, a damaged one, a bomb: no thumbnail
        return None
    data = out.getvalue()
    _CACHE.put(key, data)
    return data


def _serve(found: _Grant, index: int) -> bytes | None:
    if not 0 <= index < len(found.files):
        return None
    path = _inside(found.root, found.files[index])
    return None if path is None else thumbnail(path)


async def thumb(request: Request) -> Response:
    """GET :data:`ROUTE`: the thumbnail of the token's picture at ``index``, or 404."""
    found = _granted(str(request.path_params.get("token", "")))
    if found is None:
        return PlainTextResponse(NOT_FOUND, status_code=404)
    data = await run_in_threadpool(_serve, found, int(request.path_params["index"]))
    if data is None:
        return PlainTextResponse(NOT_FOUND, status_code=404)
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type="image/jpeg", headers=headers)


def mounted() -> bool:
    """Whether this server answers :data:`ROUTE` (it was started through ``app.py``)."""
    return _MOUNTED


def routes() -> list[Route]:
    """The route ``app.py`` adds to Streamlit's server; from then on :func:`mounted`."""
    global _MOUNTED
    _MOUNTED = True
    return [Route(ROUTE, thumb, methods=["GET"])]
