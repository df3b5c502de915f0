"""Transfer Learning Studio's pages: navigation, sidebar, page config (served by app.py)."""

import streamlit as st

from tl_core.runs.store import StoreDamagedError
from tl_ui.access import require_access_code
from tl_ui.session import active_project, get_store, repaired_notice, sidebar, store_trouble


def run() -> None:
    require_access_code()  # first: when a code is set, nothing else runs until it is given
    st.set_page_config(page_title="Transfer Learning Studio", page_icon="🧠", layout="wide")
    try:
        get_store()
    except StoreDamagedError as exc:  # one page instead of the studio: what is wrong, a way on
        error = exc

        def trouble() -> None:
            store_trouble(error)

        st.navigation(
            [st.Page(trouble, title="Repair", url_path="repair")], position="hidden"
        ).run()
        return
    pages = [
        st.Page(
            "app_pages/data.py",
            title="1. Your images",
            icon=":material/photo_library:",
            default=True,
        ),
        st.Page("app_pages/label.py", title="2. Label", icon=":material/label:"),
        st.Page("app_pages/model.py", title="3. Choose a model", icon=":material/neurology:"),
        st.Page("app_pages/train.py", title="4. Train", icon=":material/model_training:"),
        st.Page("app_pages/evaluate.py", title="5. Evaluate", icon=":material/insights:"),
        st.Page("app_pages/try_it.py", title="6. Try it", icon=":material/photo_camera:"),
        st.Page("app_pages/export.py", title="7. Export", icon=":material/download:"),
    ]
    nav = st.navigation(pages)
    st.title(nav.title)  # each page's heading is its title in the navigation
    repaired_notice()
    try:
        sidebar(active_project())
        nav.run()
    except StoreDamagedError as exc:  # damage found while the page was being drawn
        store_trouble(exc)


run()
