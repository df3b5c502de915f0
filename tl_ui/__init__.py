"""Streamlit helpers shared by the pages: the store, the current project, the sidebar."""
