"""Monitoring: trends across the archived reports, the latest report's numbers, the Evidently
report itself, and Grafana."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from mlplatform_webapp import summary, trends, ui
from mlplatform_webapp.api_client import ApiError
from mlplatform_webapp.settings import get_settings

WINDOWS = {"Last day": 1.0, "Last 7 days": 7.0, "Last 30 days": 30.0, "Everything": None}
TREND_REPORTS = 500  # the API's most per call: a month of hourly reports

st.title("Monitoring")
grafana = get_settings().grafana_url
if grafana:
    st.link_button("Open Grafana dashboards", grafana, icon=":material/open_in_new:")

entries = ui.fetch_or_stop(ui.reports, TREND_REPORTS)
if not entries:
    st.info(
        "No report yet: the reporter writes one on its schedule once predictions are logged.",
        icon=":material/hourglass_empty:",
    )
    st.stop()


def promotion_rules(frame: pd.DataFrame) -> tuple[Any, list[str]]:
    """Each promotion within the trend's time range, as a dashed rule labelled by version,
    and those versions."""
    try:
        runs = ui.retrain_runs(100)["runs"]
    except ApiError:
        runs = []  # an API without /retrain-runs: the versions' own times still mark them
    try:
        marks = trends.promotions(ui.models(), runs)
    except ApiError:
        return None, []
    if frame.empty or marks.empty:
        return None, []
    marks = marks[(marks["at"] >= frame["at"].min()) & (marks["at"] <= frame["at"].max())]
    if marks.empty:
        return None, []
    base = alt.Chart(marks)
    rule = base.mark_rule(strokeDash=[4, 4], color="gray").encode(
        x="at:T", tooltip=["version", "at:T"]
    )
    text = base.mark_text(align="left", dx=3, dy=-110, color="gray").encode(
        x="at:T", text="version"
    )
    return rule + text, [str(v) for v in marks["version"]]


def line(data: pd.DataFrame, y: str, color: str, title: str, marks: Any) -> None:
    chart = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("at:T", title=None),
            y=alt.Y(f"{y}:Q", title=title, scale=alt.Scale(zero=False)),
            color=alt.Color(f"{color}:N", title=None),
            tooltip=["at:T", "version", color, alt.Tooltip(f"{y}:Q", format=".4g")],
        )
    )
    st.altair_chart(chart + marks if marks is not None else chart, width="stretch")


st.subheader("Trends")
window = st.segmented_control(
    "Window", list(WINDOWS), default="Last 7 days", key="monitoring_window"
)
frame = trends.within(trends.points(entries), WINDOWS.get(window or "Everything"))
if frame.empty:
    st.caption("No report in this window has a time to place it on the axis.")
else:
    marks, promoted = promotion_rules(frame)
    st.caption(
        f"{len(frame)} reports from {frame['at'].min():%Y-%m-%d %H:%M} to "
        f"{frame['at'].max():%Y-%m-%d %H:%M} UTC; "
        + (
            f"dashed lines: went into production ({', '.join(promoted)})."
            if promoted
            else "no version went into production in this window."
        )
    )
    left, right = st.columns(2)
    with left:
        drift = trends.long(frame, ["drift share (embedding)", "drift share (raw)"], "space")
        st.markdown(f"**Drift share** ({len(drift)} points)")
        line(drift, "value", "space", "share of drifted columns", marks)
    with right:
        in_window = [
            e
            for e in entries
            if trends.report_time(str(e["id"]), e.get("summary")) in set(frame["at"])
        ]
        scores = trends.feature_scores(in_window or entries, "raw")
        if scores.empty:
            scores = trends.feature_scores(in_window or entries, "embedding")
        st.markdown(
            f"**Per-feature drift score** ({len(scores)} points; p-value: lower is more drift)"
        )
        if scores.empty:
            st.caption("These reports record no per-feature score.")
        else:
            heat = (
                alt.Chart(scores)
                .mark_rect()
                .encode(
                    x=alt.X("at:O", title=None, timeUnit="yearmonthdatehoursminutesseconds"),
                    y=alt.Y("feature:N", title=None),
                    color=alt.Color("score:Q", scale=alt.Scale(scheme="redyellowgreen")),
                    tooltip=["feature", "at:T", alt.Tooltip("score:Q", format=".3g")],
                )
            )
            st.altair_chart(heat, width="stretch")
    left, right = st.columns(2)
    with left:
        metrics = trends.quality_metrics(frame)
        quality = trends.long(frame, metrics, "metric").merge(
            frame[["at", "labelled rows"]], on="at", how="left"
        )
        st.markdown(f"**Quality** ({len(quality)} points; labelled rows in the tooltip)")
        if metrics:
            chart = (
                alt.Chart(quality)
                .mark_line(point=True)
                .encode(
                    x=alt.X("at:T", title=None),
                    y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
                    color=alt.Color("metric:N", title=None),
                    tooltip=["at:T", "version", "metric", "value:Q", "labelled rows:Q"],
                )
            )
            st.altair_chart(chart + marks if marks is not None else chart, width="stretch")
        else:
            st.caption("No report in this window had enough labelled rows for quality.")
    with right:
        volume = trends.long(frame, ["predictions", "labelled rows"], "rows")
        st.markdown(f"**Prediction volume and labelled rows per report** ({len(volume)} points)")
        line(volume, "value", "rows", "rows", marks)
    mix = trends.prediction_mix(in_window or entries)
    if not mix.empty:
        st.markdown(f"**Prediction distribution** ({len(mix)} points; share of each class)")
        st.altair_chart(
            alt.Chart(mix)
            .mark_area()
            .encode(
                x=alt.X("at:T", title=None),
                y=alt.Y("share:Q", stack="normalize", title=None),
                color=alt.Color("prediction:N"),
                tooltip=["at:T", "prediction", alt.Tooltip("share:Q", format=".1%")],
            ),
            width="stretch",
        )
    values = trends.prediction_values(in_window or entries)
    if not values.empty:
        st.markdown(f"**Predicted values** ({len(values)} points; percentiles and mean)")
        line(values, "value", "statistic", "predicted value", marks)

st.subheader("One report")
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
quality_note = summary.quality_line(by_id[chosen])
if quality_note:
    st.caption(quality_note)
for note in summary.notes(by_id[chosen]):
    st.caption(f"Note: {note}")

st.subheader("Evidently report")
try:
    html = ui.report_html(chosen)
except ApiError as exc:
    st.error(f"The report cannot be shown: {exc.message}", icon=":material/block:")
else:
    # st.iframe, not st.html: the report's own scripts draw its charts (st.html runs none).
    # The HTML is the reporter's, from our store, never a user's upload.
    st.iframe(html, height=900)
