"""Batch: predict every row of an uploaded CSV; failed rows are listed with the API's reason."""

from __future__ import annotations

import hashlib

import streamlit as st

from mlplatform_common.schema import is_category
from mlplatform_webapp import batch, cards, ui
from mlplatform_webapp.settings import get_settings

st.title("Batch")
card = ui.fetch_or_stop(ui.model_card)
schema = cards.schema(card)
task = cards.task(card)
features = [f["name"] for f in schema]
target = card.get("target") or batch.TARGET
st.caption(
    f"Upload a CSV with a header line and the model's {len(features)} feature columns "
    f"(the data set's format: a `{target}` column is kept beside the predictions; an empty "
    "cell is a missing value)."
)

upload = st.file_uploader("CSV file", type=["csv"], key="batch_file")
if upload is None:
    st.stop()

data = upload.getvalue()
digest = hashlib.sha256(data).hexdigest()
try:
    parsed = batch.read_upload(
        data, features, {f["name"] for f in schema if is_category(f)}, target
    )
except batch.BatchFileError as exc:
    st.error(str(exc), icon=":material/block:")
    st.stop()
if parsed.ignored:
    st.warning(f"Columns not in the model's schema are ignored: {', '.join(parsed.ignored)}.")

done = st.session_state.get("batch_result")
if done is None or done[0] != digest:
    if not st.button(f"Predict {len(parsed.rows)} rows", type="primary", key="batch_run"):
        st.stop()
    bar = st.progress(0.0, text="Predicting…")

    def progress(n: int, total: int) -> None:
        bar.progress(n / total, text=f"Predicted {n} of {total} rows")

    result = batch.run(ui.client(), parsed, get_settings().batch_chunk_rows, progress, task)
    bar.empty()
    st.session_state["batch_result"] = (digest, result)
else:
    result = done[1]

if result.stopped:
    st.error(f"Stopped early: {result.stopped}", icon=":material/cloud_off:")
total = len(result.table)
st.success(
    f"Predicted {result.predicted} of {total} rows"
    + (f"; {len(result.failed)} failed (listed below)." if len(result.failed) else "."),
    icon=":material/task_alt:",
)
score = batch.accuracy(result.table, parsed.target)
if score is not None:
    st.caption(f"Accuracy against the file's {parsed.target} column: {score:.1%}")
errors = batch.errors(result.table, parsed.target)
if errors is not None:
    st.caption(
        f"Against the file's {parsed.target} column ({errors['rows']:.0f} rows): "
        f"MAE {cards.format_value(errors['mae'])}, RMSE {cards.format_value(errors['rmse'])}"
    )
st.dataframe(result.table, hide_index=True)
st.download_button(
    "Download results (CSV)",
    result.table.to_csv(index=False).encode(),
    file_name=f"predictions-{upload.name.removesuffix('.csv')}.csv",
    mime="text/csv",
    icon=":material/download:",
    key="batch_download",
)
if len(result.failed):
    st.subheader("Rows that failed")
    st.dataframe(result.failed, hide_index=True)
