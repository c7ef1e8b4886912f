"""Retrain runs: each run of the retrainer, newest first, with its trigger, outcome, the gate's
numbers side by side, the reasons, and the version it produced."""

from __future__ import annotations

import streamlit as st

from mlplatform_webapp import runs, ui
from mlplatform_webapp.api_client import ApiError, ApiRejected

PAGE_SIZE = 20

st.title("Retrain runs")
st.caption(
    "Every run of the retrainer: what triggered it, whether the gate promoted or rejected the "
    "candidate (both scored on the same holdout), and the version it published."
)
# The cursors of the pages seen so far: "Older" pushes the API's next cursor, "Newer" pops it.
cursors: list[str | None] = st.session_state.setdefault("runs_cursors", [None])
try:
    page = ui.retrain_runs(PAGE_SIZE, cursors[-1])
except ApiRejected as exc:
    # a serving from before /retrain-runs answers 404: say so, rather than wait for it
    st.error(f"The API cannot list retrain runs: {exc.message}", icon=":material/block:")
    st.stop()
except ApiError as exc:
    ui.stop_unavailable(exc)
found = page["runs"]
if not found and len(cursors) == 1:
    st.info(
        "No retrain run yet: the retrainer records one on each schedule it runs.",
        icon=":material/hourglass_empty:",
    )
    st.stop()

table = runs.runs_table(found)
counts = table["outcome"].value_counts()
columns = st.columns(max(len(counts), 1))
for column, (outcome, n) in zip(columns, counts.items(), strict=False):
    column.metric(str(outcome), int(n))
st.dataframe(
    table,
    hide_index=True,
    column_config={
        "trigger": st.column_config.TextColumn(width="large"),
        "gate": st.column_config.TextColumn(width="large"),
        "candidate": st.column_config.NumberColumn(format="%.4f"),
        "production score": st.column_config.NumberColumn(format="%.4f"),
    },
)
for run in found:
    gate = runs.gate_line(run.get("gate"))
    label = f"{run.get('at')} · {run.get('outcome')}" + (
        f" · {run['version']}" if run.get("version") else ""
    )
    with st.expander(label):
        reasons = run.get("reasons") or []
        st.markdown("**Trigger:** " + ("; ".join(map(str, reasons)) or "none recorded"))
        if gate:
            st.markdown(f"**Gate:** {gate}")
        if run.get("rollout"):
            st.markdown(f"**Rollout:** {run['rollout']}")
        st.json(run, expanded=False)

left, right = st.columns(2)
if len(cursors) > 1 and left.button("Newer runs", key="runs_newer", icon=":material/arrow_back:"):
    cursors.pop()
    st.rerun()
if page.get("next") and right.button(
    "Older runs", key="runs_older", icon=":material/arrow_forward:"
):
    cursors.append(str(page["next"]))
    st.rerun()
