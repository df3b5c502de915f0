"""Transfer Learning Studio: ``streamlit run app.py``.

The server: Streamlit's app (the pages of ``studio.py``) plus one route of the studio's own,
the live camera's guesses (:mod:`tl_ui.live_route`), which answer a frame without a rerun,
a start-up step that lets small answers leave without delay (:mod:`tl_ui.server`), and the
access code's hold on Streamlit's own session handling (:func:`tl_ui.access.guard_streamlit`).
"""

import streamlit as st

from tl_ui.access import guard_streamlit
from tl_ui.live_route import routes
from tl_ui.server import lifespan

guard_streamlit()
app = st.App("studio.py", routes=routes(), lifespan=lifespan)
