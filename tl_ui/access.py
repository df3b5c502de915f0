"""An optional access code for a studio opened to a network (``TL_STUDIO_ACCESS_CODE``).

When the variable is set, each browser session must give the code once before the app shows
or does anything; without it the app is open to whoever can reach the server (by default only
this computer: ``.streamlit/config.toml`` binds to localhost).
"""

from __future__ import annotations

import hmac
import os
import time

import streamlit as st

ENV = "TL_STUDIO_ACCESS_CODE"
_UNLOCKED = "access_code_ok"
_WRONG_DELAY_S = 1.0  # slows down guessing


def access_code() -> str | None:
    """The code the server asks for, or None when the app is open (variable unset or blank)."""
    code = os.environ.get(ENV, "").strip()
    return code or None


def code_matches(given: str, code: str) -> bool:
    """Whether ``given`` is the code, compared in constant time."""
    return hmac.compare_digest(given.strip().encode(), code.encode())


def require_access_code() -> None:
    """Ask for the access code when one is set; stop the script until it is given."""
    code = access_code()
    if code is None or st.session_state.get(_UNLOCKED):
        return
    st.set_page_config(initial_sidebar_state="collapsed")
    st.title("Transfer Learning Studio")
    with st.form("access_code_form"):
        given = st.text_input(
            "Access code",
            type="password",
            key="access_code",
            help="Whoever started the studio set this code; ask them for it.",
        )
        sent = st.form_submit_button("Open the studio", type="primary")
    if sent:
        if code_matches(given, code):
            st.session_state[_UNLOCKED] = True
            st.session_state.pop("access_code", None)
            st.rerun()
        time.sleep(_WRONG_DELAY_S)
        st.error("That access code is not right. Check it with whoever started the studio.")
    st.stop()
