"""Predict: one row from a form built from the model's feature schema, then its true label."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from mlplatform_webapp import samples, ui
from mlplatform_webapp.api_client import ApiError, ApiRejected

st.title("Predict")
card = ui.fetch_or_stop(ui.model_card)
schema: list[dict[str, Any]] = list(card.get("feature_schema") or [])
labels = ui.class_labels(card)
names = {v: k for k, v in labels.items()}


def key(feature: str) -> str:
    return f"predict_f_{feature}"


def fill(values: dict[str, float], target: Any = None, source: str | None = None) -> None:
    for name, value in values.items():
        st.session_state[key(name)] = float(value)
    st.session_state["predict_sample_target"] = target
    st.session_state["predict_sample_source"] = source


def fill_random() -> None:
    fill(*samples.random_row(schema))


for f in schema:  # first visit, or a new feature in a new version: start at the median
    if key(f["name"]) not in st.session_state:
        st.session_state[key(f["name"])] = samples.medians([f])[f["name"]]

st.caption(
    f"Model {card.get('version', '?')} · {len(schema)} features, prefilled with the reference "
    "medians. Change any value, or fill in a held-out row."
)
buttons = st.container(horizontal=True)
buttons.button(
    "Random sample", icon=":material/casino:", on_click=fill_random, key="predict_random"
)
buttons.button(
    "Reset to medians",
    icon=":material/restart_alt:",
    on_click=fill,
    args=(samples.medians(schema),),
    key="predict_reset",
)
if st.session_state.get("predict_sample_source"):
    true = st.session_state.get("predict_sample_target")
    st.info(
        f"Filled with {st.session_state['predict_sample_source']}"
        + (f"; its true label is {names.get(true, true)}." if true is not None else "."),
        icon=":material/info:",
    )

with st.form("predict_form"):
    columns = st.columns(3)
    for i, f in enumerate(schema):
        std = float(f.get("std") or 0.0)
        columns[i * 3 // max(len(schema), 1)].number_input(
            f["name"],
            key=key(f["name"]),
            step=float(f"{std / 10:.1g}") if std > 0 else 0.01,
            format="%.5g",
            help=f"Reference: min {f.get('min')}, median {f.get('median')}, max {f.get('max')}",
        )
    submitted = st.form_submit_button("Predict", type="primary", icon=":material/send:")

if submitted:
    features = {f["name"]: float(st.session_state[key(f["name"])]) for f in schema}
    try:
        with st.spinner("Predicting…"):
            answer = ui.client().predict_one(features)
    except ApiRejected as exc:
        st.error(f"The API refused this row: {exc.message}", icon=":material/block:")
    except ApiError as exc:
        ui.stop_unavailable(exc)
    else:
        st.session_state["predict_result"] = {"answer": answer, "features": features}
        st.session_state.pop("predict_feedback", None)
        history = st.session_state.setdefault("predict_history", [])
        history.insert(
            0, {k: answer.get(k) for k in ("prediction_id", "label_name", "probability")}
        )

result = st.session_state.get("predict_result")
if result:
    answer = result["answer"]
    st.subheader("Prediction")
    c1, c2, c3 = st.columns(3)
    c1.metric("Label", str(answer.get("label_name", answer.get("label"))))
    c2.metric("Probability", f"{float(answer.get('probability', 0.0)):.1%}")
    c3.metric("Model version", str(answer.get("model_version", "?")))
    st.progress(
        min(max(float(answer.get("probability", 0.0)), 0.0), 1.0),
        text=f"Probability of {answer.get('label_name', answer.get('label'))}",
    )
    probabilities = answer.get("probabilities") or {}
    if probabilities:
        chart = pd.DataFrame(
            {
                "class": [ui.class_name(card, c) for c in probabilities],
                "probability": [float(p) for p in probabilities.values()],
            }
        )
        st.bar_chart(
            chart, x="class", y="probability", horizontal=True, height=60 + 40 * len(chart)
        )
    if answer.get("backup"):
        st.warning("The primary model failed on this row; the backup model answered.")
    st.caption(f"Prediction id: `{answer.get('prediction_id')}`")

    st.subheader("Feedback")
    done = st.session_state.get("predict_feedback")
    if done:
        st.success(done, icon=":material/check_circle:")
    else:
        options = list(labels)
        sample_target = st.session_state.get("predict_sample_target")
        default = names.get(sample_target, str(answer.get("label_name", "")))
        with st.form("predict_feedback_form"):
            true_name = st.selectbox(
                "True label",
                options,
                index=options.index(default) if default in options else 0,
                key="predict_true_label",
            )
            sent = st.form_submit_button("Send feedback", icon=":material/rate_review:")
        if sent:
            try:
                stored = ui.client().feedback(
                    labels[true_name], prediction_id=answer.get("prediction_id")
                )
            except ApiRejected as exc:
                st.error(f"The API refused the feedback: {exc.message}", icon=":material/block:")
            except ApiError as exc:
                ui.stop_unavailable(exc)
            else:
                message = (
                    f"Feedback stored (id {stored.get('feedback_id')}): true label {true_name}. "
                    f"{stored.get('labelled_since_training', '?')} labelled rows since training"
                )
                if stored.get("retrain_every"):
                    message += f"; a retrain starts every {stored['retrain_every']}"
                if stored.get("retrain_started"):
                    message += "; a retrain was started"
                st.session_state["predict_feedback"] = message + "."
                st.rerun()
