"""Model: the served version's card, every version with its metrics, and which is in production."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from mlplatform_webapp import cards, runs, ui
from mlplatform_webapp.settings import get_settings

st.title("Model")
history = ui.fetch_or_stop(ui.models)
card = ui.fetch_or_stop(ui.model_card)
# The named model serving serves (its own answer; the web app's setting names the one expected)
name = str(card.get("name") or history.get("name") or get_settings().model_name)
others = [n for n in ui.model_names() or [] if n != name]
st.caption(
    f"Named model **{name}**"
    + (
        f" · other named models in this store: {', '.join(others)} (each served by its own release)"
        if others
        else ""
    )
)
if name != get_settings().model_name:
    st.warning(
        f"The serving API serves the named model {name!r}, not {get_settings().model_name!r} "
        "(MLPLATFORM_MODEL_NAME): MLPLATFORM_API_URL points at another release's serving."
    )
task = cards.task(card)
METRICS = cards.METRICS[task]
alias = history.get("production") or {}
production = alias.get("version") if isinstance(alias, dict) else None
serving = history.get("serving") or card.get("version")

c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Serving", str(serving))
c2.metric("In production", str(production or "none"))
c3.metric("Versions", len(history.get("versions") or []))
c4.metric("Task", task)
c5.metric(*cards.headline(card))
if production and serving and production != serving:
    st.warning(f"This replica serves {serving} while the production alias names {production}.")
hold = alias.get("hold") if isinstance(alias, dict) else None
if isinstance(hold, dict):
    st.info(
        f"Production is held at {production}: {hold.get('reason')}. Retrains keep their "
        "candidates for review until the hold is lifted (Admin page).",
        icon=":material/lock:",
    )


def row(manifest: dict[str, Any]) -> dict[str, Any]:
    metrics = manifest.get("metrics") or {}
    version = manifest.get("version")
    out: dict[str, Any] = {
        "version": version,
        "status": ", ".join(
            s
            for s, on in (("production", version == production), ("serving", version == serving))
            if on
        ),
        "created_at": manifest.get("created_at"),
        "estimator": manifest.get("estimator"),
        "parent": manifest.get("parent"),
        "training rows": _fit_rows(manifest),
    }
    for split in ("test", "validation"):
        for m in METRICS:
            value = (metrics.get(split) or {}).get(m)
            if value is not None:
                out[f"{split} {m}"] = value
    return out


def _fit_rows(manifest: dict[str, Any]) -> Any:
    """The rows a version was fit on: its split's train rows, for a first version as for a
    retrained one (``training_data.rows`` counts validation rows too, and a first version's
    test rows)."""
    split = manifest.get("split")
    if isinstance(split, dict) and isinstance(split.get("train"), int):
        return split["train"]
    return (manifest.get("training_data") or {}).get("rows")


def _split(split: Any) -> str | None:
    if not isinstance(split, dict):
        return None
    parts = [f"{split[k]} {k}" for k in ("train", "validation", "test") if k in split]
    seed = f" (seed {split['seed']})" if "seed" in split else ""
    return " / ".join(parts) + seed


manifests = [m for m in history.get("versions") or [] if isinstance(m, dict)]
versions = [row(m) for m in manifests]
st.subheader("Versions")
if not versions:
    st.info("No version is published yet.")
else:
    table = pd.DataFrame(versions)
    # st.table, not st.dataframe: every column and cell shown whole, never cut at the edge
    st.table(table, hide_index=True)
    plotted = [m for m in METRICS if f"test {m}" in table.columns]
    if plotted:
        st.subheader("Test metrics by version")
    # each metric on its own axis, scaled to the versions' values: a 0-1 axis hid differences
    for i, m in enumerate(plotted):
        if i % 3 == 0:  # rows of three charts, in the metrics' order
            columns = st.columns(3)
        values = table[["version", f"test {m}"]].dropna().rename(columns={f"test {m}": "value"})
        with columns[i % 3]:
            st.caption(f"Test {cards.metric_label(m)}")
            st.altair_chart(
                alt.Chart(values)
                .mark_line(point=alt.OverlayMarkDef(size=80))
                .encode(
                    x=alt.X("version:N", sort=list(table["version"]), title=None),
                    y=alt.Y(
                        "value:Q",
                        title=None,
                        scale=alt.Scale(domain=list(runs.domain(list(values["value"])))),
                    ),
                    tooltip=["version", alt.Tooltip("value:Q", format=".4f")],
                ),
                width="stretch",
                height=220,
            )

    st.subheader("Line of versions")
    line = runs.lineage(history)
    st.table(line, hide_index=True)
    if len(manifests) >= 2:
        st.subheader("Compare two versions")
        names = [str(m.get("version")) for m in manifests]
        left, right = st.columns(2)
        first = left.selectbox("Version", names, index=len(names) - 2, key="model_compare_a")
        second = right.selectbox("with", names, index=len(names) - 1, key="model_compare_b")
        by_name = {str(m.get("version")): m for m in manifests}
        a, b = by_name[first], by_name[second]
        st.markdown("**Metrics**")
        st.table(runs.compare_metrics(a, b), hide_index=True)
        st.markdown("**Feature schema**")
        st.table(runs.compare_schemas(a, b), hide_index=True)

st.subheader(f"Card of {card.get('version', '?')} (serving)")
st.markdown(
    "\n".join(
        f"- **{label}:** {value}"
        for label, value in (
            ("created", card.get("created_at")),
            ("estimator", card.get("estimator")),
            ("backup estimator", card.get("backup_estimator")),
            ("parent", card.get("parent") or "none"),
            ("task", task),
            ("target", card.get("target")),
            ("embedding", f"{card.get('n_components', '?')} PCA components"),
            ("classes", ", ".join(ui.class_labels(card)) or None),
            ("training data", (card.get("training_data") or {}).get("dataset")),
            ("split", _split(card.get("split"))),
        )
        if value is not None
    )
)
metrics = cards.metrics_frame(card)
if not metrics.empty:
    st.table(metrics)
st.subheader("Feature schema")
st.dataframe(cards.schema_table(cards.schema(card)), hide_index=True)
with st.expander("Reference statistics"):
    st.dataframe(pd.DataFrame(card.get("feature_schema") or []), hide_index=True)
