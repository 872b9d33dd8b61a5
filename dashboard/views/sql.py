"""SQL page: a read-only query box over the store, results as a table and a chart (no access to other files)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st
import tkui

from tracekit.errors import TracekitError
from tracekit.store.queries import run_sql

ROW_LIMIT = 10_000
EXAMPLE = """SELECT node, count(*) AS spans, count(*) FILTER (WHERE status = 'error') AS errors
FROM spans GROUP BY node ORDER BY spans DESC LIMIT 20"""

st.title("SQL")
st.caption("Read-only DuckDB over the store's tables: runs, spans, events, links, collectives, steps, faults, "
           f"findings. The connection cannot read or write other files. At most {ROW_LIMIT:,} rows are shown.")

query = st.text_area("Query (Ctrl+Enter runs it)", value=EXAMPLE, height=140, key="sql_query")

with tkui.store() as con:
    try:
        names, data = run_sql(con, query, limit=ROW_LIMIT)
    except TracekitError as exc:
        st.error(str(exc))
        st.stop()

result = pd.DataFrame.from_records(data, columns=names)
st.caption(f"{len(result):,} row(s)" + (" (limit reached)" if len(result) >= ROW_LIMIT else ""))
st.dataframe(result, hide_index=True, width="stretch", key="sql_result")

numeric = [c for c in result.columns if pd.api.types.is_numeric_dtype(result[c]) and not pd.api.types.is_bool_dtype(result[c])]
if len(result) and numeric and len(result.columns) >= 2:
    c1, c2, c3 = st.columns(3)
    x = c1.selectbox("x", list(result.columns), index=0, key="sql_x")
    ys = [c for c in numeric if c != x] or numeric
    y = c2.selectbox("y", ys, index=0, key="sql_y")
    kind = c3.selectbox("chart", ["bar", "line", "scatter"], key="sql_kind")
    draw = {"bar": px.bar, "line": px.line, "scatter": px.scatter}[kind]
    fig = draw(result, x=x, y=y)
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 20, "b": 10})
    st.plotly_chart(fig, key="sql_chart")
