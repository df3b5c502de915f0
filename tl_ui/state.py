"""What a browser session keeps between reruns: one typed object in ``st.session_state``.

Everything the studio itself remembers for a browser tab is a field of :class:`StudioState`,
read and written through :func:`state` (the project id is mirrored in the URL, everything
else lives in the store). Two kinds of values stay outside it, under their own keys:

- widget values: Streamlit keeps each widget's value under its ``key=`` and reads it back
  there when the widget is drawn, so a page that sets a widget before it is drawn (the freeze
  slider after "Use the suggestion", a class radio after a rename) or forgets it (a
  confirmation box after the deletion) writes that key itself;
- the access code's grant (:mod:`tl_ui.access`): it is checked before this object exists,
  and from Streamlit's server thread, under a key only the right code sets.

Like every session key, the object lasts as long as the browser tab's session: a refresh
starts a new one, and the project comes back from ``?project=``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from tl_ui.access import require_access_code

__all__ = ["KEY", "StudioState", "state"]

KEY = "studio"


@dataclass
class StudioState:
    """All a browser session keeps; everything else lives in the store."""

    project_id: str | None = None
    chosen_run: str | None = None  # the trained run the pages after training show
    # Notices shown once, on the next run of the page.
    repaired: str | None = None  # what the repair of the index did
    deleted_project: str | None = None  # the name of the project just deleted
    camera_done: str | None = None  # the camera commit's summary
    camera_error: str | None = None  # the last batch of frames' problem
    grow_job: str | None = None  # the addition this session started: its summary when done
    # What is polling, so that the page reruns once when it stops.
    sidebar_polling: str | None = None  # the run the sidebar's training line follows
    run_polling: str | None = None  # the run the run panel follows (tl_ui.live)
    sweep_polling: bool = False  # the quick sweep's results
    watching: set[str] = field(default_factory=set)  # jobs whose panel polls (tl_ui.jobs)
    # Imports and additions: each bumps its round, part of its uploaders' widget keys, so
    # the next uploader starts empty; the import jobs this session started keep their panel.
    import_round: int = 0
    grow_round: int = 0
    imports_seen: set[str] = field(default_factory=set)
    # The camera.
    camera_next_class: str | None = None  # the class to choose on the next run (a rename)
    camera_seen: dict[str, int] = field(default_factory=dict)  # browser id: last batch kept
    camera_replies: dict[str, dict[str, Any]] = field(default_factory=dict)  # by widget key
    camera_problem: str | None = None  # the live camera's status when it did not start
    live_token: str | None = None  # the live view's grant on the studio's route
    # Per run and per project.
    # run id: the share of validation pictures the unfamiliar check lets through (Try page)
    unfamiliar_accepts: dict[str, float | str] = field(default_factory=dict)
    # project id: each advanced setting's value as its field last showed it (Train page)
    advanced_seen: dict[str, dict[str, Any]] = field(default_factory=dict)


def state() -> StudioState:
    """This session's state, made on its first use (after the access code, when one is set:
    this also guards a page opened by its own address)."""
    require_access_code()
    if KEY not in st.session_state:
        st.session_state[KEY] = StudioState()
    return st.session_state[KEY]
