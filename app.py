"""Transfer Learning Studio: ``streamlit run app.py``."""

import streamlit as st

from tl_ui.access import require_access_code
from tl_ui.session import active_project, sidebar


def run() -> None:
    st.set_page_config(page_title="Transfer Learning Studio", page_icon="🧠", layout="wide")
    require_access_code()  # when a code is set, nothing runs until it is given
    pages = [
        st.Page(
            "pages/data.py", title="1. Your images", icon=":material/photo_library:", default=True
        ),
        st.Page("pages/model.py", title="2. Choose a model", icon=":material/neurology:"),
        st.Page("pages/train.py", title="3. Train", icon=":material/model_training:"),
        st.Page("pages/evaluate.py", title="4. Evaluate", icon=":material/insights:"),
        st.Page("pages/try_it.py", title="5. Try it", icon=":material/photo_camera:"),
        st.Page("pages/export.py", title="6. Export", icon=":material/download:"),
    ]
    nav = st.navigation(pages)
    sidebar(active_project())
    nav.run()


run()
