"""Model: the served version's card, every version with its metrics, and which is in production;
promote, pin or roll back production with the admin token."""

from __future__ import annotations

import time
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from mlplatform_webapp import cards, runs, ui
from mlplatform_webapp.api_client import ApiError
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
# How long a promotion or a rollback is waited for: a retrainer run (a process, or a Job whose
# pod must start) moves the alias after serving answered 202.
MOVE_WAIT_SECONDS = 30.0
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


def _await_move(since: Any) -> dict[str, Any] | None:
    """The production alias once it has moved (``updated_at`` other than ``since``), polling
    ``GET /models`` for up to MOVE_WAIT_SECONDS; None if it has not moved by then."""
    deadline = time.monotonic() + MOVE_WAIT_SECONDS
    with st.spinner("Waiting for the retrainer run to move production…"):
        while time.monotonic() < deadline:
            try:
                now = ui.client().models().get("production")
            except ApiError:  # serving swaps the model now: ask again
                now = None
            if isinstance(now, dict) and now.get("updated_at") != since:
                return now
            time.sleep(1.0)
    return None


def _move(action: str, version: str, pin: bool, token: str) -> None:
    """Ask serving to start the move, wait for it, and keep what to say for the rerun that
    shows the new production (the metrics above are read before the move)."""
    said: list[tuple[str, str]] = []
    if action == "promote":
        answer = ui.act(ui.client().promote, token, version, pin)
    else:
        answer = ui.act(ui.client().rollback, token)
    if answer is None:
        return
    said.append(
        (
            "success",
            f"Started {answer.get('action')} for {answer.get('model')} (production was "
            f"{answer.get('production') or 'none'}): a retrainer run moves it and rolls it out.",
        )
    )
    st.success(said[0][1])  # shown while the run is awaited
    moved = _await_move(alias.get("updated_at"))
    if moved is None:
        said.append(
            (
                "warning",
                f"Production has not changed yet: it is still {production or 'none'} after "
                f"{MOVE_WAIT_SECONDS:.0f} s. The run may still be starting, or it failed (its "
                "log says why); reload this page to see.",
            )
        )
    else:
        hold = moved.get("hold")
        held = f", held: {hold.get('reason')}" if isinstance(hold, dict) else ""
        said.append(("success", f"Production is now {moved.get('version')}{held}."))
    st.session_state["model_moved"] = said
    st.cache_data.clear()  # the alias changed: every page reads it anew
    st.rerun()


def _production_by_hand(manifests: list[dict[str, Any]]) -> None:
    """Promote (or pin) a version, or roll back, through serving's admin API."""
    st.subheader("Promote or roll back")
    for kind, text in st.session_state.pop("model_moved", []):
        getattr(st, kind)(text)
    choices = [str(m.get("version")) for m in manifests if "error" not in m]
    others = [v for v in choices if v != production] or choices
    token = ui.admin_token("model_token")
    left, right = st.columns([1, 2], vertical_alignment="bottom")
    version = left.selectbox(
        "Version", choices, index=choices.index(others[-1]), key="model_promote_version"
    )
    pin = right.checkbox(
        "Pin it: retrains keep their candidates for review until the hold is lifted",
        key="model_promote_pin",
    )
    buttons = st.container(horizontal=True)
    promote = buttons.button(
        "Promote", type="primary", icon=":material/publish:", key="model_promote"
    )
    previous = alias.get("previous") if isinstance(alias, dict) else None
    rollback = buttons.button(
        "Roll back",
        icon=":material/undo:",
        key="model_rollback",
        help=f"Back to {previous}; it holds until the hold is lifted (Admin page)."
        if previous
        else "Back to the version in production before this one.",
    )
    if promote or rollback:
        if not token:
            st.error("Enter the admin token to promote or roll back.", icon=":material/key_off:")
        else:
            _move("promote" if promote else "rollback", version, pin, token)


manifests = [m for m in history.get("versions") or [] if isinstance(m, dict)]
versions = [row(m) for m in manifests]
st.subheader("Versions")
if not versions:
    st.info("No version is published yet.")
else:
    table = pd.DataFrame(versions)
    # st.table, not st.dataframe: every column and cell shown whole, never cut at the edge
    st.table(table, hide_index=True)
    _production_by_hand(manifests)
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
