"""Data: upload a CSV or Parquet file with its target as a named data set of the model
(``POST /admin/datasets``, admin token), preview it, see its schema; list the stored ones and
train a model on one (``POST /admin/train``), following the run until its version appears."""

from __future__ import annotations

import io
import time
from typing import Any

import pandas as pd
import streamlit as st

from mlplatform_webapp import ui
from mlplatform_webapp.api_client import ApiError

TRAIN_WAIT_SECONDS = 120.0
"""How long the page follows a training run before it says the run is still going."""
WHERE_TO_LOOK = (
    "The Model page shows the version once it is published; the retrainer's log says how the "
    "run goes (`kubectl logs -l app.kubernetes.io/component=retrainer`; with the local "
    "launcher, serving's log)."
)


def _versions() -> tuple[set[str], str | None]:
    """The published versions and the production one, as ``GET /models`` says now."""
    answer = ui.client().models()
    versions = {str(m.get("version")) for m in answer.get("versions") or [] if isinstance(m, dict)}
    production = answer.get("production")
    return versions, production.get("version") if isinstance(production, dict) else None


def _await_version(before: set[str]) -> tuple[str | None, str | None]:
    """The new version once it is published and in production (or TRAIN_WAIT_SECONDS have
    passed), and the production version then; ``(None, ...)`` if none was published."""
    deadline = time.monotonic() + TRAIN_WAIT_SECONDS
    new, production = None, None
    while time.monotonic() < deadline:
        try:
            versions, production = _versions()
        except ApiError:  # serving swaps the model now: ask again
            versions = set()
        fresh = sorted(versions - before, key=lambda v: int(v.lstrip("v") or 0))
        new = fresh[-1] if fresh else new
        if new is not None and production == new:
            break
        time.sleep(1.0)
    return new, production


def _train(dataset: str, token: str) -> None:
    """Ask serving to start the training run, then follow it: the new version and whether
    it is in production, or that it is still training and where to look."""
    before, _ = ui.fetch_or_stop(_versions)
    answer: dict[str, Any] | None = ui.act(ui.client().train, token, dataset)
    if answer is None:
        return
    st.success(
        f"Started {answer.get('action')} for {answer.get('model')} (production was "
        f"{answer.get('production') or 'none'}): a retrainer run trains on {dataset}, publishes "
        "the model and puts it in production."
    )
    with st.spinner(f"Training on {dataset} (up to {TRAIN_WAIT_SECONDS:.0f} s)…"):
        new, production = _await_version(before)
    if new is None:
        st.warning(
            f"Still training on {dataset} after {TRAIN_WAIT_SECONDS:.0f} s, or the run failed. "
            + WHERE_TO_LOOK,
            icon=":material/hourglass_top:",
        )
    elif production == new:
        st.success(f"Trained {new} on {dataset}: it is in production.")
        st.cache_data.clear()  # the alias changed: every page reads it anew
    else:
        st.warning(
            f"Trained {new} on {dataset}, but it is not in production yet (production is "
            f"{production or 'none'}). " + WHERE_TO_LOOK
        )
        st.cache_data.clear()


st.title("Data")
ui.fetch_or_stop(ui.client().health)
st.caption(
    "Store a CSV or Parquet file as a named data set of this model, then train a model on it "
    "with its button below (the new version goes into production)."
)

token = ui.admin_token("data_token")
if not token:
    st.info("Enter the admin token to upload, list and train on data sets.", icon=":material/key:")
    st.stop()

upload = st.file_uploader("CSV or Parquet file", type=["csv", "parquet"], key="data_file")
if upload is not None:
    data = upload.getvalue()
    try:
        if upload.name.endswith(".parquet"):
            preview = pd.read_parquet(io.BytesIO(data))
        else:
            preview = pd.read_csv(io.BytesIO(data), nrows=1000)
    except Exception as exc:  # the API names the problem; the preview only shows what it can
        st.warning(f"No preview: {type(exc).__name__}: {str(exc)[:200]}")
        preview = pd.DataFrame()
    if not preview.empty:
        st.subheader("Preview")
        st.dataframe(preview.head(20))
    columns = [str(c) for c in preview.columns]
    stem = upload.name.rsplit(".", 1)[0].lower().replace(" ", "-").replace(".", "-")
    name = st.text_input("Data set name", value=stem, key="data_name").strip()
    target = (
        st.selectbox("Target column", columns, index=len(columns) - 1, key="data_target")
        if columns
        else st.text_input("Target column", key="data_target_text").strip()
    )
    if st.button("Store the data set", type="primary", key="data_store"):
        stored = ui.act(ui.client().upload_dataset, token, name, str(target or ""), data)
        if stored is not None:
            st.success(
                f"Stored {stored['name']}: {stored['rows']} rows, {len(stored['columns'])} "
                f"columns, a {stored['task']} task ({stored['task_reason']}).",
                icon=":material/check_circle:",
            )
            st.subheader("Schema")
            st.dataframe(
                pd.DataFrame(
                    [
                        {
                            "feature": f["name"],
                            "kind": "category" if f["dtype"] == "category" else "number",
                            "may be missing": f["nullable"],
                        }
                        for f in stored["schema"]
                    ]
                )
            )

st.subheader("Stored data sets")
stored_sets = ui.act(ui.client().datasets, token)
if stored_sets is None:
    st.stop()
if not stored_sets:
    st.caption("None yet.")
else:
    st.dataframe(
        pd.DataFrame(
            [
                {k: d.get(k) for k in ("name", "target", "task", "rows", "bytes")}
                for d in stored_sets
            ]
        )
    )
    st.subheader("Train a model")
    for stored_set in stored_sets:
        name = str(stored_set.get("name"))
        line = st.container(horizontal=True, vertical_alignment="center")
        line.markdown(
            f"**{name}**: {stored_set.get('rows')} rows, target `{stored_set.get('target')}`"
        )
        if line.button(
            "Train a model on it",
            key=f"data_train_{name}",
            icon=":material/model_training:",
            help="A retrainer run trains on this data set, publishes the model and puts it "
            "in production (as `mlplatform train --dataset NAME`).",
        ):
            _train(name, token)
