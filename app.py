"""Transfer Learning Studio: ``streamlit run app.py``.

The server: Streamlit's app (the pages of ``studio.py``) plus one route of the studio's own,
the live camera's guesses (:mod:`tl_ui.live_route`), which answer a frame without a rerun.
"""

import streamlit as st

from tl_ui.live_route import routes

app = st.App("studio.py", routes=routes())
