"""PAFO Studio: navigation over the pages in pages/ plus the sidebar with the current dataset and run.

Start it with ``./run.sh app`` (or ``streamlit run app.py``); it listens on localhost (see .streamlit/config.toml).
"""

import streamlit as st

from pages._ui import PAGES, init_state, inside_app, sidebar

st.set_page_config(page_title="PAFO Studio", page_icon="⚖️", layout="wide")
page = st.navigation([
    st.Page(PAGES["data"], title="Data", icon=":material/dataset:", default=True),
    st.Page(PAGES["support"], title="Support rates", icon=":material/bar_chart:"),
    st.Page(PAGES["train"], title="Train", icon=":material/model_training:"),
    st.Page(PAGES["compare"], title="Compare", icon=":material/monitoring:"),
    st.Page(PAGES["users"], title="Users", icon=":material/person_search:"),
    st.Page(PAGES["whatif"], title="What-if", icon=":material/science:"),
])
init_state()
sidebar()
with inside_app():
    page.run()
