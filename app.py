"""PAFO Studio: navigation over the pages in pages/ plus the sidebar with the current dataset and run.

Start it with ``./run.sh app`` (or ``streamlit run app.py``); it listens on localhost (see .streamlit/config.toml).
"""

import streamlit as st

from pages._ui import PAGES, init_state, inside_app, sidebar, style

st.set_page_config(page_title="PAFO Studio", page_icon="⚖️", layout="wide")
style()
page = st.navigation([st.Page(page.script, title=page.title, icon=page.icon, default=key == "data")
                     for key, page in PAGES.items()])
init_state()
sidebar()
with inside_app():
    page.run()
