"""PAFO Studio: navigation only; each page lives in pages/."""

import streamlit as st

st.set_page_config(page_title="PAFO Studio", page_icon="⚖️", layout="wide")
st.navigation([st.Page("pages/support.py", title="Support rates", icon="📊", default=True)]).run()
