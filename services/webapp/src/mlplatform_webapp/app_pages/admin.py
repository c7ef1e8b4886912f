"""Admin: start a retrain now, reload the model, or lift a hold, with the serving API's admin
token."""

from __future__ import annotations

import streamlit as st

from mlplatform_webapp import ui
from mlplatform_webapp.api_client import ApiError, ApiRejected

st.title("Admin")
health = ui.fetch_or_stop(ui.client().health)
st.caption(
    f"Serving {health.get('model_version') or 'no model'}"
    + ("" if health.get("model_loaded") else " (not ready)")
)

token = ui.admin_token("admin_token")
version = st.text_input(
    "Version to reload (empty: the production alias)", key="admin_version"
).strip()

buttons = st.container(horizontal=True)
retrain = buttons.button("Retrain now", type="primary", icon=":material/model_training:")
reload = buttons.button("Reload model", icon=":material/refresh:")
unpin = buttons.button(
    "Lift the hold",
    icon=":material/lock_open:",
    help="After a rollback or a pin, retrains keep their candidates for review; this lets "
    "the next one that passes the gate be promoted again.",
)

if retrain or reload or unpin:
    if not token:
        st.error("Enter the admin token.", icon=":material/key_off:")
    else:
        try:
            if retrain:
                answer = ui.client().retrain(token)
                st.success(
                    "A retrain was started; new versions appear on the Model page."
                    if answer.get("retrain_started")
                    else "No retrain was started: one is already running.",
                    icon=":material/check_circle:",
                )
            elif unpin:
                alias = ui.client().unpin(token)["production"]
                st.cache_data.clear()  # the alias changed
                st.success(
                    f"Production {alias.get('version')} is no longer held: the next retrain "
                    "that passes the gate is promoted.",
                    icon=":material/check_circle:",
                )
            else:
                answer = ui.client().reload(token, version or None)
                st.cache_data.clear()  # the card and versions changed
                st.success(
                    f"Serving {answer.get('model_version')} "
                    f"(was {answer.get('previous_version') or 'none'}).",
                    icon=":material/check_circle:",
                )
        except ApiRejected as exc:
            st.error(f"Refused: {exc.message}", icon=":material/block:")
        except ApiError as exc:
            st.error(exc.message, icon=":material/cloud_off:")
