"""Predict: one row from a form built from the model's feature schema, then its true label."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from mlplatform_common.schema import is_category, nullable
from mlplatform_webapp import cards, samples, ui
from mlplatform_webapp.api_client import ApiError, ApiRejected

st.title("Predict")
card = ui.fetch_or_stop(ui.model_card)
schema = cards.schema(card)
regression = cards.is_regression(card)
labels = ui.class_labels(card)
names = {v: k for k, v in labels.items()}


def key(feature: str) -> str:
    return f"predict_f_{feature}"


def fill(values: dict[str, Any], target: Any = None, source: str | None = None) -> None:
    for name, value in values.items():
        st.session_state[key(name)] = value
    st.session_state["predict_sample_target"] = target
    st.session_state["predict_sample_source"] = source


def fill_random() -> None:
    fill(*samples.random_row(schema))


for f in schema:  # first visit, or a new feature in a new version: start at the median
    value = st.session_state.get(key(f["name"]))
    # a version may change a feature's type or whether it may be missing: start it afresh
    if (
        key(f["name"]) not in st.session_state
        or (is_category(f) and value not in cards.choices(f))
        or (not is_category(f) and isinstance(value, str))
        or (not is_category(f) and value is None and not nullable(f))
    ):
        st.session_state[key(f["name"])] = samples.medians([f])[f["name"]]

st.caption(
    f"Model {card.get('version', '?')} ({cards.task(card)}) · {len(schema)} features, prefilled "
    "with the reference medians and most common values. Change any value, or fill in a sample "
    f"row. {cards.EMPTY} sends a missing value where the model accepts one."
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
        + (
            f"; its true {'value' if regression else 'label'} is {names.get(true, true)}."
            if true is not None
            else "."
        ),
        icon=":material/info:",
    )

with st.form("predict_form"):
    columns = st.columns(3)
    for i, f in enumerate(schema):
        column = columns[i * 3 // max(len(schema), 1)]
        if is_category(f):
            column.selectbox(
                f["name"],
                cards.choices(f),
                key=key(f["name"]),
                help="Category"
                + (f"; {cards.EMPTY} sends a missing value" if nullable(f) else "")
                + ".",
            )
            continue
        std = float(f.get("std") or 0.0)
        column.number_input(
            f["name"],
            # a nullable number may be left empty (sent as a missing value)
            value=None if nullable(f) else "min",
            key=key(f["name"]),
            step=float(f"{std / 10:.1g}") if std > 0 else 0.01,
            format="%.5g",
            placeholder=cards.EMPTY if nullable(f) else None,
            help=f"Reference: min {f.get('min')}, median {f.get('median')}, max {f.get('max')}"
            + ("; may be left empty." if nullable(f) else ""),
        )
    submitted = st.form_submit_button("Predict", type="primary", icon=":material/send:")

if submitted:
    features = cards.row_features(
        schema, {f["name"]: st.session_state[key(f["name"])] for f in schema}
    )
    st.session_state["predict_row"] = features  # shown below: what the API was given
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
        history.insert(0, cards.history_entry(card, answer))


def show_classification(answer: dict[str, Any]) -> None:
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


def show_regression(answer: dict[str, Any]) -> None:
    target = card.get("target") or "target"
    c1, c2 = st.columns(2)
    c1.metric(f"Predicted {target}", cards.format_value(cards.predicted_value(answer)))
    c2.metric("Model version", str(answer.get("model_version", "?")))
    rmse = ((card.get("metrics") or {}).get("test") or {}).get("rmse")
    if isinstance(rmse, int | float):
        st.caption(f"On its test rows this version is off by {cards.format_value(rmse)} (RMSE).")


def feedback_input(answer: dict[str, Any]) -> Any:
    """The true label's widget; returns the value the API takes."""
    sample_target = st.session_state.get("predict_sample_target")
    if regression:
        default = sample_target if sample_target is not None else cards.predicted_value(answer)
        value = st.number_input(
            f"True {card.get('target') or 'value'}",
            value=float(default) if default is not None else 0.0,
            format="%.5g",
            key="predict_true_value",
        )
        return float(value)
    options = list(labels)
    default = names.get(sample_target, str(answer.get("label_name", "")))
    true_name = st.selectbox(
        "True label",
        options,
        index=options.index(default) if default in options else 0,
        key="predict_true_label",
    )
    return labels[true_name]


result = st.session_state.get("predict_result")
if result:
    answer = result["answer"]
    st.subheader("Prediction")
    if regression:
        show_regression(answer)
    else:
        show_classification(answer)
    if answer.get("backup"):
        st.warning("The primary model failed on this row; the backup model answered.")
    st.caption(f"Prediction id: `{answer.get('prediction_id')}`")
    with st.expander("The row sent (JSON)"):
        st.json(result["features"])

    st.subheader("Feedback")
    done = st.session_state.get("predict_feedback")
    if done:
        st.success(done, icon=":material/check_circle:")
    else:
        with st.form("predict_feedback_form"):
            truth = feedback_input(answer)
            sent = st.form_submit_button("Send feedback", icon=":material/rate_review:")
        if sent:
            try:
                stored = ui.client().feedback(truth, prediction_id=answer.get("prediction_id"))
            except ApiRejected as exc:
                st.error(f"The API refused the feedback: {exc.message}", icon=":material/block:")
            except ApiError as exc:
                ui.stop_unavailable(exc)
            else:
                shown = cards.format_value(truth) if regression else ui.class_name(card, truth)
                message = (
                    f"Feedback stored (id {stored.get('feedback_id')}): "
                    f"true {'value' if regression else 'label'} {shown}. "
                    f"{stored.get('labelled_since_training', '?')} labelled rows since training"
                )
                if stored.get("retrain_every"):
                    message += f"; a retrain starts every {stored['retrain_every']}"
                if stored.get("retrain_started"):
                    message += "; a retrain was started"
                st.session_state["predict_feedback"] = message + "."
                st.rerun()
