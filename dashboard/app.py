"""tracekit dashboard: the Streamlit entry point (`tracekit dashboard` serves it); pages live in views/.

(Not in pages/: Streamlit would list a folder of that name in the sidebar on its own.)
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # so pages can import tkui whatever the working directory


def _import_analyses() -> None:
    import tracekit.analysis.attribution  # noqa: F401
    import tracekit.analysis.causality  # noqa: F401
    import tracekit.analysis.collectives  # noqa: F401


@st.cache_resource(show_spinner=False)
def _preload() -> bool:
    """Import the analyses (scipy, polars, networkx) in the background once per server, so the first visit
    of the training, agent or campaign page does not wait for them."""
    threading.Thread(target=_import_analyses, name="tracekit-preload", daemon=True).start()
    return True


_preload()
st.set_page_config(page_title="tracekit", page_icon=":material/search:", layout="wide")

PAGES = [
    st.Page("views/runs.py", title="Runs", icon=":material/list:", url_path="runs", default=True),
    st.Page("views/timeline.py", title="Timeline", icon=":material/timeline:", url_path="timeline"),
    st.Page("views/training.py", title="Training run", icon=":material/grid_on:", url_path="training"),
    st.Page("views/agents.py", title="Agent run", icon=":material/hub:", url_path="agents"),
    st.Page("views/campaign.py", title="Campaign", icon=":material/bolt:", url_path="campaign"),
    st.Page("views/sql.py", title="SQL", icon=":material/database:", url_path="sql"),
]
import tkui  # noqa: E402  (after the sys.path entry above)

try:
    st.navigation(PAGES).run()
finally:
    tkui.close_store()
