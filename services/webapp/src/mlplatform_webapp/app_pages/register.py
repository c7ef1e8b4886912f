"""Register a model: upload a model trained elsewhere and its reference data (``POST
/admin/models``, admin token), then follow the registration the retrainer runs until it is
published (the version) or refused (the reason)."""

from __future__ import annotations

import io
import time
from typing import Any

import pandas as pd
import streamlit as st

from mlplatform_webapp import ui
from mlplatform_webapp.api_client import ApiError
from mlplatform_webapp.settings import get_settings

UPLOAD, OUTCOME = "register_upload", "register_outcome"

st.title("Register a model")
ui.fetch_or_stop(ui.client().health)
st.caption(
    "A fitted scikit-learn estimator or Pipeline (XGBoost and LightGBM through their "
    "scikit-learn API) and reference rows it predicts, with the target. The retrainer loads "
    "it in a separate process, checks it on every reference row, converts it to ONNX where "
    "it can, signs it and publishes it as a new version of this model: a candidate, or in "
    "production if you promote it. The same as `mlplatform register`."
)
st.warning(
    "A .joblib or .pkl file is a pickle: loading it runs whatever code it holds. Upload "
    "pickles only from people you would let run code on the platform; .skops is the safe "
    "format.",
    icon=":material/warning:",
)

token = ui.admin_token("register_token")
if not token:
    st.info("Enter the admin token to register a model.", icon=":material/key:")
    st.stop()

model = st.file_uploader(
    "Model file (.skops, .joblib, .pkl)",
    type=["skops", "joblib", "pkl", "pickle"],
    key="register_model",
)
data = st.file_uploader(
    "Reference data (.csv or .parquet: the model's features and the target)",
    type=["csv", "parquet"],
    key="register_data",
)
columns: list[str] = []
if data is not None:
    try:
        raw = io.BytesIO(data.getvalue())
        head = pd.read_parquet(raw) if data.name.endswith(".parquet") else pd.read_csv(raw, nrows=5)
        columns = [str(c) for c in head.columns]
    except Exception as exc:  # the API names the problem; here only the column list is missed
        st.warning(f"Could not read the columns: {type(exc).__name__}: {str(exc)[:200]}")
target = (
    st.selectbox("Target column", columns, index=len(columns) - 1, key="register_target")
    if columns
    else st.text_input("Target column", key="register_target_text").strip()
)
promote = st.checkbox(
    "Put it in production (else it is published as a candidate)", key="register_promote"
)

if st.button("Register", type="primary", key="register_submit", disabled=model is None):
    if model is None or data is None or not target:
        st.error("Choose a model file, its reference data and the target column.")
    else:
        answer = ui.act(
            ui.client().register_model,
            token,
            (model.name, model.getvalue()),
            (data.name, data.getvalue()),
            str(target),
            promote=promote,
        )
        if answer is not None:
            st.session_state[UPLOAD] = {**answer, "name": model.name, "since": time.time()}
            st.session_state.pop(OUTCOME, None)


def _check(upload: dict[str, Any]) -> dict[str, Any] | None:
    """The upload's outcome once there is one (kept in the session), else None."""
    status = ui.client().upload_status(token, str(upload["status"]))
    if status.get("state") == "pending":
        return None
    st.session_state[OUTCOME] = {**status, "name": upload["name"]}
    st.session_state.pop(UPLOAD, None)
    return status


@st.fragment(run_every=get_settings().retry_seconds)
def _poll(upload: dict[str, Any]) -> None:
    """Ask again every few seconds while the page is open; the whole page shows the outcome."""
    try:
        if _check(upload) is not None:
            st.rerun()
    except ApiError:
        pass  # said once on the page; asked again at the next tick


upload: dict[str, Any] | None = st.session_state.get(UPLOAD)
if upload is not None:
    try:
        done = _check(upload)
    except ApiError as exc:
        st.error(exc.message, icon=":material/cloud_off:")
        done = None
    if done is None:
        waited = time.time() - float(upload["since"])
        st.info(
            f"Registering {upload['name']} (upload {upload['upload']}): loading it, checking "
            f"it on the reference rows, converting and signing it ... {waited:.0f} s",
            icon=":material/hourglass_top:",
        )
        _poll(upload)

outcome = st.session_state.get(OUTCOME)
if outcome is not None:
    if outcome.get("state") == "published":
        where = "in production" if outcome.get("promoted") else "as a candidate"
        st.success(
            f"Published {outcome['name']} as version {outcome['version']}, {where}.",
            icon=":material/check_circle:",
        )
        if outcome.get("reason"):
            st.warning(str(outcome["reason"]))
        if not outcome.get("promoted"):
            name = get_settings().model_name
            st.caption(
                f"Put it in production later: `mlplatform promote {name} {outcome['version']}`."
            )
    else:
        st.error(f"Refused: {outcome.get('reason')}", icon=":material/block:")
