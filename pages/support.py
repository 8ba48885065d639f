"""Support rates of the built-in synthetic dataset (first page; the full app grows around it)."""

import plotly.express as px
import streamlit as st

from pafo.cli import support_report
from pafo.sources import DataConfig, load_dataset
from pafo.support import GroupConfig


@st.cache_data(show_spinner="Simulating users…")
def support_table(config: DataConfig, groups: GroupConfig):
    return support_report(load_dataset(config), groups)


payload, table = support_table(DataConfig(), GroupConfig())
st.title("Preference support rates")
cols = st.columns(4)
cols[0].metric("Users", payload["dataset"]["n_users"])
cols[1].metric("Prompts", payload["dataset"]["n_prompts"])
cols[2].metric("Train pairs", payload["dataset"]["n_pairs"]["train"])
cols[3].metric("Minority users", payload["groups"]["n_minority"])
st.plotly_chart(px.histogram(table, x="support_rate", color="group", nbins=40), use_container_width=True)
