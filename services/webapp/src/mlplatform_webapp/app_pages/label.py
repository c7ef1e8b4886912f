"""Label: the true label of an earlier prediction, by its id (delayed ground truth)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from mlplatform_webapp import cards, ui
from mlplatform_webapp.api_client import ApiError, ApiRejected

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

history = st.session_state.get("predict_history") or []
if history:
    st.subheader("Predictions made in this session")
    st.dataframe(pd.DataFrame(history), hide_index=True)
if st.session_state.get("label_done"):
    st.subheader("Labels sent in this session")
    st.dataframe(pd.DataFrame(st.session_state["label_done"]), hide_index=True)
