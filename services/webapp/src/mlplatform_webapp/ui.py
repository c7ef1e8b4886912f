"""What every page shares: the cached API client, cached reads, and the API-down line."""

from __future__ import annotations

from typing import Any, NoReturn

import streamlit as st

from mlplatform_webapp import cards
from mlplatform_webapp.api_client import ApiClient, ApiError, ApiRejected
from mlplatform_webapp.settings import get_settings

TTL = get_settings().cache_ttl_seconds


@st.cache_resource(show_spinner=False)
def _client(api_url: str, timeout: float, writer_token: str | None) -> ApiClient:
    return ApiClient(api_url, timeout, writer_token=writer_token)


def client() -> ApiClient:
    """The API client of the configured URL and writer token, shared by every session."""
    settings = get_settings()
    return _client(settings.api_url, settings.request_timeout_seconds, settings.writer())


# Each cached read takes the API URL so that a changed URL never answers from another's cache.
@st.cache_data(ttl=TTL, show_spinner=False)
def _model(api_url: str) -> dict[str, Any]:
    return client().model()


@st.cache_data(ttl=TTL, show_spinner=False)
def _models(api_url: str) -> dict[str, Any]:
    return client().models()


@st.cache_data(ttl=TTL, show_spinner=False)
def _model_names(api_url: str) -> dict[str, Any]:
    return client().model_names()


@st.cache_data(ttl=TTL, show_spinner=False)
def _reports(api_url: str, limit: int) -> list[dict[str, Any]]:
    return client().reports(limit)


@st.cache_data(ttl=TTL, show_spinner=False)
def _runs(api_url: str, limit: int, before: str | None) -> dict[str, Any]:
    return client().retrain_runs(limit, before)


@st.cache_data(ttl=600, show_spinner=False, max_entries=8)
def _report_html(api_url: str, report_id: str) -> str:
    return client().report_html(report_id)  # a report never changes once written


def model_card() -> dict[str, Any]:
    """``GET /model`` (cached)."""
    return _model(get_settings().api_url)


def models() -> dict[str, Any]:
    """``GET /models`` (cached)."""
    return _models(get_settings().api_url)


def model_names() -> list[str] | None:
    """The store's named models (``GET /models/names``, cached); None when serving cannot say
    (a serving from before names answers 404): a page shows them, it never stops for them."""
    try:
        names = _model_names(get_settings().api_url).get("names")
    except ApiError:
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def reports(limit: int = 50) -> list[dict[str, Any]]:
    """``GET /reports`` (cached), newest first."""
    return _reports(get_settings().api_url, limit)


def retrain_runs(limit: int = 20, before: str | None = None) -> dict[str, Any]:
    """``GET /retrain-runs`` (cached): one page, ``{"runs", "next"}``."""
    return _runs(get_settings().api_url, limit, before)


def report_html(report_id: str) -> str:
    """``GET /reports/{id}`` (cached)."""
    return _report_html(get_settings().api_url, report_id)


# The card's readings live in cards.py (plain logic); the pages know them by these names too.
class_labels = cards.class_labels
class_name = cards.class_name


def _watch_api() -> None:
    @st.fragment(run_every=get_settings().retry_seconds)
    def watch() -> None:
        try:
            client().ready()
        except ApiError:
            st.caption("Checking again every few seconds; this page comes back by itself.")
            return
        st.rerun()

    watch()


def stop_unavailable(exc: ApiError) -> NoReturn:
    """Say in one line that the API cannot answer, poll until it can, and stop the page."""
    st.error(exc.message, icon=":material/cloud_off:")
    _watch_api()
    st.stop()


def fetch_or_stop(fetch: Any, *args: Any) -> Any:
    """Call a read; if the API cannot answer, show the one line and stop the page."""
    try:
        return fetch(*args)
    except ApiError as exc:
        stop_unavailable(exc)


def act(call: Any, *args: Any, **kwargs: Any) -> Any | None:
    """Call a write or an admin request; if serving refuses it, show its message (a 4xx:
    "Refused: ..."; unreachable or 5xx: the one line) and return None."""
    try:
        return call(*args, **kwargs)
    except ApiRejected as exc:
        st.error(f"Refused: {exc.message}", icon=":material/block:")
    except ApiError as exc:
        st.error(exc.message, icon=":material/cloud_off:")
    return None


def admin_token(key: str) -> str:
    """The admin token a page acts with: the one typed, else the one this app is configured
    with (``webapp.passAdminToken``); empty when neither."""
    configured = get_settings().token()
    typed = st.text_input(
        "Admin token",
        type="password",
        key=key,
        help="The serving API's MLPLATFORM_ADMIN_TOKEN."
        + (" Leave empty to use the token this app is configured with." if configured else ""),
    ).strip()
    return typed or configured or ""
