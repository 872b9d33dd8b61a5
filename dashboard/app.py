"""tracekit dashboard: the Streamlit entry point (`tracekit dashboard` serves it). Pages live in views/ (not pages/: Streamlit would list that folder on its own)."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # so pages can import tkui whatever the working directory

st.set_page_config(page_title="tracekit", page_icon=":material/search:", layout="wide")

PAGES = [
    st.Page("views/runs.py", title="Runs", icon=":material/list:", url_path="runs", default=True),
    st.Page("views/timeline.py", title="Timeline", icon=":material/timeline:", url_path="timeline"),
    st.Page("views/training.py", title="Training run", icon=":material/grid_on:", url_path="training"),
    st.Page("views/agents.py", title="Agent run", icon=":material/hub:", url_path="agents"),
    st.Page("views/campaign.py", title="Campaign", icon=":material/bolt:", url_path="campaign"),
    st.Page("views/sql.py", title="SQL", icon=":material/database:", url_path="sql"),
]
st.navigation(PAGES).run()
