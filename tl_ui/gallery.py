"""Small pictures and page selectors, so that a page stays quick at tens of thousands of images.

A thumbnail is made once from the image file (a small JPEG, a few kB) and kept in a bounded
cache: a page sends the browser a few kB per picture instead of the whole file, and only the
pictures of the page shown are ever read.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import streamlit as st
from PIL import Image, ImageOps

THUMB_SIDE = 96
MAX_THUMBS = 4096  # cached thumbnails (of every size together): about 4 kB each


@st.cache_data(max_entries=MAX_THUMBS, show_spinner=False)
def _thumbnail(path: str, side: int, stamp: tuple[float, int]) -> bytes | None:
    try:
        with Image.open(path) as img:
            img.draft("RGB", (side, side))  # a JPEG decodes at a fraction of its size
            small = ImageOps.exif_transpose(img).convert("RGB")
            small.thumbnail((side, side))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    out = io.BytesIO()
    small.save(out, "JPEG", quality=85)
    return out.getvalue()


def thumbnail(path: str | Path, side: int = THUMB_SIDE) -> bytes | None:
    """A JPEG of at most ``side`` pixels a side of the image at ``path``; None when the file
    is missing or unreadable. Remade when the file changes."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return _thumbnail(str(path), side, (info.st_mtime, info.st_size))


def thumbnails(paths: Sequence[str | Path], side: int = THUMB_SIDE) -> list[bytes]:
    """:func:`thumbnail` of each path, leaving out those that cannot be read."""
    return [t for t in (thumbnail(p, side) for p in paths) if t is not None]


def show_thumbnail(path: str | Path, side: int, width: int | str = "stretch") -> None:
    """One thumbnail, or a short note in its place when the file is gone."""
    thumb = thumbnail(path, side)
    if thumb is None:
        st.caption(f"({Path(path).name} is missing)")
    else:
        st.image(thumb, width=width)  # type: ignore[arg-type]


def pager(total: int, per_page: int, key: str, what: str) -> range:
    """The indices of the page chosen (a page selector appears only when there are several)
    and a caption saying which of ``total`` ``what`` are shown."""
    pages = max(1, -(-total // per_page))
    page = 1
    if pages > 1:
        if int(st.session_state.get(key, 1)) > pages:  # fewer pages than last time
            st.session_state[key] = pages
        page = int(
            st.number_input(f"Page (of {pages})", 1, pages, 1, key=key, help=f"{per_page} a page.")
        )
    first = (page - 1) * per_page
    shown = range(first, min(first + per_page, total))
    if pages > 1:
        st.caption(f"{what.capitalize()} {first + 1:,}–{shown.stop:,} of {total:,}.")
    return shown
