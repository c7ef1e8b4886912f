"""The web app: ``streamlit run`` this file (``python -m mlplatform_webapp`` does)."""

from __future__ import annotations

import streamlit as st

from mlplatform_webapp.settings import get_settings

st.set_page_config(page_title="mlplatform", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page("app_pages/predict.py", title="Predict", icon=":material/online_prediction:"),
    st.Page("app_pages/batch.py", title="Batch", icon=":material/table_view:"),
    st.Page("app_pages/label.py", title="Label", icon=":material/label:"),
    st.Page("app_pages/model.py", title="Model", icon=":material/model_training:"),
    st.Page("app_pages/monitoring.py", title="Monitoring", icon=":material/monitoring:"),
    st.Page("app_pages/runs.py", title="Retrain runs", icon=":material/history:"),
    st.Page("app_pages/system.py", title="System", icon=":material/speed:"),
    st.Page("app_pages/data.py", title="Data", icon=":material/dataset:"),
    st.Page("app_pages/register.py", title="Register", icon=":material/upload_file:"),
    st.Page("app_pages/admin.py", title="Admin", icon=":material/admin_panel_settings:"),
]

page = st.navigation(PAGES)
settings = get_settings()
# The browser's address of the API: inside a cluster api_url is a Service name it cannot open.
public_api = (settings.public_api_url or settings.api_url).rstrip("/")
# The named model this release looks at (the chart sets the same name as serving's)
st.sidebar.caption(f"Model: **{settings.model_name}**")
st.sidebar.caption(f"Serving API: [{public_api}/docs]({public_api}/docs)")
page.run()
