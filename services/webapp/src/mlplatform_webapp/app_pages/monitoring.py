"""Monitoring: the latest report's numbers, the Evidently report itself, and Grafana."""

from __future__ import annotations

import streamlit as st
import streamlit.components.v1 as components

from mlplatform_webapp import summary, ui
from mlplatform_webapp.api_client import ApiError
from mlplatform_webapp.settings import get_settings

st.title("Monitoring")
grafana = get_settings().grafana_url
if grafana:
    st.link_button("Open Grafana dashboards", grafana, icon=":material/open_in_new:")

entries = ui.fetch_or_stop(ui.reports)
if not entries:
    st.info(
        "No report yet: the reporter writes one on its schedule once predictions are logged.",
        icon=":material/hourglass_empty:",
    )
    st.stop()

ids = [str(e["id"]) for e in entries]
by_id = {str(e["id"]): e.get("summary") for e in entries}
chosen = st.selectbox(
    "Report",
    ids,
    format_func=lambda i: summary.when(i, by_id[i]) + (" · latest" if i == ids[0] else ""),
    key="monitoring_report",
)
position = ids.index(chosen)
numbers = summary.numbers(by_id[chosen])
older = summary.numbers(by_id[ids[position + 1]]) if position + 1 < len(ids) else {}
if numbers:
    columns = st.columns(min(len(numbers), 5))
    for i, (label, value) in enumerate(numbers.items()):
        whole = label.endswith("rows") or label.startswith("Drifted")
        delta = value - older[label] if label in older else None
        columns[i % len(columns)].metric(
            label,
            f"{value:.0f}" if whole else f"{value:.3f}",
            delta=None if delta is None else (f"{delta:+.0f}" if whole else f"{delta:+.3f}"),
            delta_color="inverse"
            if label.startswith("Drift") or label in summary.LOWER_IS_BETTER
            else "normal",
        )
else:
    st.caption("This report's summary has none of the usual numbers.")
quality = summary.quality_line(by_id[chosen])
if quality:
    st.caption(quality)
for note in summary.notes(by_id[chosen]):
    st.caption(f"Note: {note}")

st.subheader("Evidently report")
try:
    html = ui.report_html(chosen)
except ApiError as exc:
    st.error(f"The report cannot be shown: {exc.message}", icon=":material/block:")
else:
    components.html(html, height=900, scrolling=True)
