"""Label: the true label of earlier predictions, by their ids (delayed ground truth): one at a
time, or a CSV of ``prediction_id,target`` sent in batches with a result per row."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from mlplatform_webapp import cards, ui
from mlplatform_webapp import labels as bulk
from mlplatform_webapp.api_client import ApiError, ApiRejected
from mlplatform_webapp.settings import get_settings

st.title("Label")
card = ui.fetch_or_stop(ui.model_card)
labels = ui.class_labels(card)
regression = cards.is_regression(card)
what = f"true value of {card.get('target') or 'the target'}" if regression else "true label"
st.caption(
    f"Give the {what} of a prediction made earlier (here, through the API, or in a batch) "
    "by its prediction id."
)

with st.form("label_form", clear_on_submit=False):
    prediction_id = st.text_input("Prediction id", key="label_prediction_id").strip()
    true_value: float | None = None
    if regression:
        # a number, not a class: the API stores it as the row's true value
        true_value = st.number_input(
            "True value", value=None, format="%.5g", key="label_true_value"
        )
    else:
        true_name = st.selectbox("True label", list(labels), key="label_true")
    sent = st.form_submit_button("Send label", type="primary", icon=":material/label:")

if sent:
    if not prediction_id:
        st.error("Enter a prediction id.", icon=":material/block:")
    elif regression and true_value is None:
        st.error("Enter the true value.", icon=":material/block:")
    else:
        truth = float(true_value) if true_value is not None else labels[true_name]
        shown = cards.format_value(truth) if regression else true_name
        try:
            stored = ui.client().feedback(truth, prediction_id=prediction_id)
        except ApiRejected as exc:
            st.error(f"Not stored: {exc.message}", icon=":material/block:")
        except ApiError as exc:
            ui.stop_unavailable(exc)
        else:
            st.success(
                f"Stored: prediction {prediction_id} is {shown} "
                f"(feedback {stored.get('feedback_id')}; "
                f"{stored.get('labelled_since_training', '?')} labelled rows since training).",
                icon=":material/check_circle:",
            )
            st.session_state.setdefault("label_done", []).insert(
                0,
                {
                    "prediction_id": prediction_id,
                    "true value" if regression else "true label": shown,
                },
            )

st.subheader("Many labels from a CSV")
st.caption(
    "A CSV with a header `prediction_id,target` (other columns are ignored); the target is "
    + (
        "the true value."
        if regression
        else f"the class, by value or name ({', '.join(map(str, labels)) or 'its labels'})."
    )
)
upload = st.file_uploader("Labels (CSV)", type=["csv"], key="label_upload")
if upload is not None:
    data = upload.getvalue()
    try:
        parsed = bulk.read_labels(data, regression, labels)
    except bulk.LabelFileError as exc:
        st.error(str(exc), icon=":material/block:")
        st.stop()
    digest = (upload.name, len(data), hash(data))
    done = st.session_state.get("label_bulk")
    if done is None or done[0] != digest:
        if not st.button(f"Send {len(parsed.items)} labels", type="primary", key="label_bulk_send"):
            st.stop()
        bar = st.progress(0.0, text="Sending labels…")

        def progress(n: int, total: int) -> None:
            bar.progress(n / total, text=f"Sent {n} of {total} labels")

        table, stopped = bulk.send(ui.client(), parsed, get_settings().label_chunk_rows, progress)
        bar.empty()
        st.session_state["label_bulk"] = (digest, table, stopped)
    else:
        table, stopped = done[1], done[2]
    if stopped:
        st.error(f"Stopped early: {stopped}", icon=":material/cloud_off:")
    n_stored = int((table["result"] == "stored").sum())
    failed = table[table["result"] != "stored"]
    st.success(
        f"Stored {n_stored} of {len(table)} labels"
        + (f"; {len(failed)} not stored (reasons below)." if len(failed) else "."),
        icon=":material/task_alt:",
    )
    st.dataframe(table, hide_index=True, key="label_bulk_results")
    st.download_button(
        "Download results (CSV)",
        table.to_csv(index=False).encode(),
        file_name=f"labels-{upload.name.removesuffix('.csv')}-results.csv",
        mime="text/csv",
        icon=":material/download:",
        key="label_bulk_download",
    )
    if len(failed):
        st.subheader("Labels not stored")
        st.dataframe(failed[["row", "prediction_id", "target", "reason"]], hide_index=True)

history = st.session_state.get("predict_history") or []
if history:
    st.subheader("Predictions made in this session")
    st.dataframe(pd.DataFrame(history), hide_index=True)
if st.session_state.get("label_done"):
    st.subheader("Labels sent in this session")
    st.dataframe(pd.DataFrame(st.session_state["label_done"]), hide_index=True)
