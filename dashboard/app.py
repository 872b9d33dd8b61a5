"""tracekit dashboard: the Streamlit entry point (`tracekit dashboard` serves it). Pages live in pages/."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # so pages can import tkui whatever the working directory

st.set_page_config(page_title="tracekit", page_icon="🔎", layout="wide")

PAGES = [
    st.Page("pages/runs.py", title="Runs", icon="📋", url_path="runs", default=True),
    st.Page("pages/timeline.py", title="Timeline", icon="🕒", url_path="timeline"),
    st.Page("pages/training.py", title="Training run", icon="🧮", url_path="training"),
    st.Page("pages/agents.py", title="Agent run", icon="🤖", url_path="agents"),
    st.Page("pages/campaign.py", title="Campaign", icon="💥", url_path="campaign"),
    st.Page("pages/sql.py", title="SQL", icon="🗄️", url_path="sql"),
]
st.navigation(PAGES).run()
