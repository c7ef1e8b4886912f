"""Data: upload a CSV or Parquet file with its target as a named data set of the model
(``POST /admin/datasets``, admin token), preview it, see its schema; list the stored ones."""

from __future__ import annotations

import io

import pandas as pd
import streamlit as st

from mlplatform_webapp import ui
from mlplatform_webapp.api_client import ApiError, ApiRejected

st.title("Data")
ui.fetch_or_stop(ui.client().health)
st.caption(
    "Store a CSV or Parquet file as a named data set of this model, then train on it: "
    "`python -m mlplatform_retrainer train --dataset NAME`."
)

token = ui.admin_token("data_token")
if not token:
    st.info("Enter the admin token to upload and list data sets.", icon=":material/key:")
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
        try:
            stored = ui.client().upload_dataset(token, name, str(target or ""), data)
        except ApiRejected as exc:
            st.error(f"Refused: {exc.message}", icon=":material/block:")
        except ApiError as exc:
            st.error(exc.message, icon=":material/cloud_off:")
        else:
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
try:
    stored_sets = ui.client().datasets(token)
except ApiRejected as exc:
    st.error(f"Refused: {exc.message}", icon=":material/block:")
    st.stop()
except ApiError as exc:
    st.error(exc.message, icon=":material/cloud_off:")
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
