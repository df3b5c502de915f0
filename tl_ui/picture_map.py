"""A map of up to 20,000 pictures in the page: one dot each, coloured by label.

The JavaScript (picture_map.js, picture_map.css beside this file, passed inline: no build step,
no CDN) draws the dots on a plain canvas: zoom with the wheel, pan with the Pan tool (or
drag with the middle button or while holding Space), and hovering a dot shows the picture's
thumbnail and its text. The Box and Lasso tools select the dots inside a rectangle or a
drawn outline (with Shift: added to what is selected), a click selects one dot, and the
selection comes back to Python as :class:`MapSelection` on the rerun it starts.

Each selection has its own ``id``: a page that acts on a selection (labels the pictures, opens
them) remembers the id it acted on, or calls :func:`clear_selection`, so that a later rerun
does not act on it twice. Thumbnails come from :mod:`tl_ui.thumb_route` when the app was
started with it (``app.py``); without it the hover shows the text only.

What goes to the browser is kept small (:func:`map_payload`): the positions as 16-bit
integers and the labels as small integers, both base64, and the texts joined into one string
and shortened when they would make the page too heavy (:data:`TEXT_BUDGET`).
"""

from __future__ import annotations

import base64
import colorsys
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from tl_ui import thumb_route

__all__ = [
    "MAX_POINTS",
    "PALETTE",
    "TEXT_BUDGET",
    "UNLABELLED_COLOUR",
    "MapSelection",
    "ThumbSource",
    "clear_selection",
    "group_colour",
    "map_payload",
    "picture_map",
    "quantise",
    "read_selection",
]

_HERE = Path(__file__).resolve().parent
_COMPONENT = st.components.v2.component(
    "tl_studio_picture_map",
    js=(_HERE / "picture_map.js").read_text(encoding="utf-8"),
    css=(_HERE / "picture_map.css").read_text(encoding="utf-8"),
)

MAX_POINTS = 50_000  # more dots than this make the page slow: show a sample instead
QUANT = 65535  # positions go as 16-bit integers: 1/65535 of the map's side
TEXT_BUDGET = 1_200_000  # bytes of hover text (as JSON) in all; beyond it each is shortened
MAX_TEXT = 160  # characters of one point's hover text
MIN_TEXT = 8  # ... and at least this many, whatever the budget says
UNLABELLED = "Unlabelled"
UNLABELLED_COLOUR = "#b9bec7"
# Readable on white and told apart by most eyes; no grey (that is the unlabelled dots' colour).
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#393b79",
    "#ad494a",
    "#637939",
    "#d6a21e",
    "#7b4173",
    "#3d9dd9",
    "#e6550d",
    "#31a354",
    "#756bb1",
)


@dataclass(frozen=True)
class MapSelection:
    """The dots selected on the map: their indices (sorted) and the selection's own id."""

    indices: list[int]
    id: str


@dataclass(frozen=True)
class ThumbSource:
    """Where the map's thumbnails come from: one file per point, relative to ``root``."""

    root: Path
    files: Sequence[str]


def group_colour(group: int) -> str:
    """The colour of a group's dots (-1: unlabelled), as on the map and in its legend."""
    if group < 0:
        return UNLABELLED_COLOUR
    if group < len(PALETTE):
        return PALETTE[group]
    hue = (group * 0.618033988749895) % 1.0  # golden angle: far from the neighbours
    r, g, b = colorsys.hls_to_rgb(hue, 0.42, 0.65)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def quantise(xy: np.ndarray) -> np.ndarray:
    """The positions fitted into the unit square (the same scale on both axes, centred) as
    16-bit integers, shape (n, 2); ValueError for positions that are not finite numbers."""
    pos = np.asarray(xy, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"The map needs one (x, y) position a point; got shape {pos.shape}.")
    if not np.isfinite(pos).all():
        raise ValueError("Some map positions are not numbers (NaN or infinite).")
    if not len(pos):
        return np.zeros((0, 2), np.uint16)
    low, high = pos.min(axis=0), pos.max(axis=0)
    span = float((high - low).max()) or 1.0
    unit = (pos - low) / span + (1.0 - (high - low) / span) / 2.0
    return np.rint(np.clip(unit, 0.0, 1.0) * QUANT).astype(np.uint16)


def _b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def _joined_texts(texts: Sequence[str], n: int) -> str:
    """The hover texts, one line each, each shortened so that the whole takes at most
    :data:`TEXT_BUDGET` bytes as JSON (a character beyond ASCII takes six there)."""
    lines = [str(t) for t in texts]
    if len(lines) != n:
        raise ValueError(f"The map has {n} points but {len(lines)} hover texts.")
    joined = "\n".join(lines)
    if joined.count("\n") != max(n - 1, 0):  # a text of several lines: one line each
        lines = [" ".join(t.split()) for t in lines]
        joined = "\n".join(lines)

    def shortened(limit: int) -> str:
        if max(map(len, lines), default=0) <= limit:
            return joined
        return "\n".join(t if len(t) <= limit else t[: limit - 1] + "…" for t in lines)

    first = shortened(MAX_TEXT)
    if len(json.dumps(first)) <= TEXT_BUDGET:
        return first
    low, high = MIN_TEXT, MAX_TEXT - 1  # the longest limit that fits the budget
    while low < high:
        mid = (low + high + 1) // 2
        if len(json.dumps(shortened(mid))) <= TEXT_BUDGET:
            low = mid
        else:
            high = mid - 1
    return shortened(low)


def _checked_groups(groups: Sequence[int], n: int, names: int) -> np.ndarray:
    found = np.asarray(groups, dtype=np.int64).reshape(-1)
    if len(found) != n:
        raise ValueError(f"The map has {n} points but {len(found)} labels.")
    if len(found) and (found.min() < -1 or found.max() >= names):
        raise ValueError(f"A label is outside -1 (unlabelled) .. {names - 1}.")
    return found


def map_payload(
    xy: np.ndarray,
    groups: Sequence[int],
    group_names: Sequence[str],
    texts: Sequence[str],
    thumbs: str = "",
    highlight: Sequence[int] = (),
) -> dict[str, Any]:
    """What the browser gets for a map (JSON-ready): ``xy`` as base64 16-bit integers (x, y
    interleaved, see :func:`quantise`), ``groups`` as base64 16-bit integers (-1:
    unlabelled), the texts as one string (a line each), ``thumbs`` the thumbnails' URL prefix
    ("" for none) and ``sig``, which changes exactly when the dots do."""
    q = quantise(xy)
    n = len(q)
    if n > MAX_POINTS:
        raise ValueError(f"The map shows at most {MAX_POINTS} points; got {n}. Show a sample.")
    found = _checked_groups(groups, n, len(group_names))
    names = [str(name) for name in group_names]
    points = {
        "n": n,
        "xy": _b64(q.reshape(-1), "<u2"),
        "groups": _b64(found, "<i2"),
        "names": names,
        "colours": [group_colour(k) for k in range(len(names))],
        "unlabelled": UNLABELLED,
        "unlabelled_colour": UNLABELLED_COLOUR,
        "texts": _joined_texts(texts, n),
    }
    digest = hashlib.blake2b(digest_size=12)
    for k in ("xy", "groups", "texts"):
        digest.update(points[k].encode("utf-8") + b"\0")
    digest.update("\0".join(names).encode("utf-8"))
    marked = sorted({int(i) for i in highlight if 0 <= int(i) < n})
    return {
        **points,
        "sig": digest.hexdigest(),
        "thumbs": thumbs,
        "highlight": _b64(np.asarray(marked, dtype=np.int64), "<u4"),
    }


def read_selection(value: Any, n: int) -> MapSelection | None:
    """The selection in a value the browser sent (``{"id", "indices"}``), the indices kept
    in range, sorted and once each; None when there is none (or it is not one)."""
    if not isinstance(value, dict):
        return None
    sel_id, indices = value.get("id"), value.get("indices")
    if not isinstance(sel_id, str) or not 0 < len(sel_id) <= 64 or not isinstance(indices, list):
        return None
    kept = {i for i in indices if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n}
    return MapSelection(sorted(kept), sel_id)


def _cleared_key(key: str) -> str:
    return f"{key}::cleared"


def _state_value(key: str) -> Any:
    """The map's own state value ``selection`` as it stands before it is drawn again."""
    try:
        found = st.session_state.get(key)
    except Exception:  # never drawn yet in this session
        return None
    return found.get("selection") if hasattr(found, "get") else None


def clear_selection(key: str) -> None:
    """Forget the map's current selection: :func:`picture_map` returns None until the next
    one, and the browser clears its marks on the next rerun."""
    current = read_selection(_state_value(key), MAX_POINTS)
    if current is not None:
        st.session_state[_cleared_key(key)] = current.id


def _thumb_prefix(thumbs: ThumbSource | None, n: int) -> str:
    if thumbs is None or not thumb_route.mounted():
        return ""
    if len(thumbs.files) != n:
        raise ValueError(f"The map has {n} points but {len(thumbs.files)} picture files.")
    return thumb_route.url_prefix(thumb_route.grant(thumbs.root, thumbs.files))


def picture_map(
    xy: np.ndarray,
    groups: Sequence[int],
    group_names: Sequence[str],
    texts: Sequence[str],
    thumbs: ThumbSource | None,
    key: str,
    height: int = 560,
    highlight: Sequence[int] = (),
) -> MapSelection | None:
    """Draw the map of ``len(xy)`` pictures: ``xy`` their positions (any scale: fitted to
    the view), ``groups[i]`` the index of point i's label in ``group_names`` (-1:
    unlabelled, grey and under the others), ``texts[i]`` what hovering it says, ``thumbs``
    its pictures (None: text only), ``highlight`` points drawn with a ring.

    Returns the current selection (see :class:`MapSelection`), or None when nothing is
    selected or the selection was cleared (:func:`clear_selection`)."""
    n = len(xy)
    payload = map_payload(xy, groups, group_names, texts, _thumb_prefix(thumbs, n), highlight)
    cleared = str(st.session_state.get(_cleared_key(key)) or "")
    before = read_selection(_state_value(key), n)
    data = {
        **payload,
        "height": int(height),
        "cleared": cleared,
        "selection": None if before is None else {"id": before.id, "indices": before.indices},
    }
    result = _COMPONENT(
        key=key,
        data=data,
        default={"selection": None},
        height=int(height),
        on_selection_change=lambda: None,
    )
    value = result.get("selection") if hasattr(result, "get") else None
    found = read_selection(value, n)
    if found is None or found.id == cleared:
        return None
    return found
