"""Transfer Learning Studio: ``streamlit run app.py``.

The server: Streamlit's app (the pages of ``studio.py``) plus three routes of the studio's own,
the live camera's guesses (:mod:`tl_ui.live_route`), which answer a frame without a rerun, and
the picture map's thumbnails (:mod:`tl_ui.thumb_route`); a start-up step that lets small
answers leave without delay (:mod:`tl_ui.server`), and the access code's hold on Streamlit's
own session handling (:func:`tl_ui.access.guard_streamlit`).
"""

import streamlit as st

from tl_ui import live_route, thumb_route, web_route
from tl_ui.access import guard_streamlit
from tl_ui.server import lifespan

guard_streamlit()
app = st.App(
    "studio.py",
    routes=live_route.routes() + thumb_route.routes() + web_route.routes(),
    lifespan=lifespan,
)
