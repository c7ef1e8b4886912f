"""System: the serving's latency percentiles, error rate and throughput (``/metrics/system``)
and its KPIs with the predictions of each version (``/metrics/kpis``)."""

from __future__ import annotations

import altair as alt
import streamlit as st

from mlplatform_webapp import system, ui

st.title("System")
st.caption("This serving replica since it started; Grafana has every replica over time.")
if st.button("Refresh", key="system_refresh", icon=":material/refresh:"):
    st.rerun()
metrics = ui.fetch_or_stop(ui.client().system)
kpis = ui.fetch_or_stop(ui.client().kpis)

tiles = system.tiles(metrics, kpis)
columns = st.columns(min(max(len(tiles), 1), 5))
for i, (label, value) in enumerate(tiles.items()):
    columns[i % len(columns)].metric(label, value)

left, right = st.columns(2)
with left:
    st.markdown("**Latency percentiles (ms)**")
    latency = system.latency(metrics)
    if latency.empty:
        st.caption("No request timed yet.")
    else:
        st.altair_chart(
            alt.Chart(latency)
            .mark_bar()
            .encode(
                x=alt.X("percentile:N", sort=None, title=None),
                y=alt.Y("ms:Q", title="ms"),
                tooltip=["percentile", alt.Tooltip("ms:Q", format=".2f")],
            ),
            width="stretch",
        )
with right:
    st.markdown("**Predictions by model version**")
    by_version = system.by_version(kpis)
    if by_version.empty:
        st.caption(
            "No prediction since this replica started."
            if "predictions_by_version" in kpis
            else "This API does not count predictions per version."
        )
    else:
        st.altair_chart(
            alt.Chart(by_version)
            .mark_bar()
            .encode(
                x=alt.X("version:N", title=None),
                y=alt.Y("predictions:Q"),
                tooltip=["version", "predictions"],
            ),
            width="stretch",
        )
with st.expander("The API's answers"):
    st.json({"/metrics/system": metrics, "/metrics/kpis": kpis}, expanded=False)
