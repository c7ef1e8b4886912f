"""Web app settings (env prefix ``MLPLATFORM_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import SecretStr, field_validator

from mlplatform_common.settings import DEV_ADMIN_TOKEN, DEV_WRITER_TOKEN, CommonSettings


class WebappSettings(CommonSettings):
    """The Streamlit web app. It talks only to the serving API, never to the store."""

    api_url: str = "http://127.0.0.1:8080"
    """Base URL of the serving API (``http://mlplatform-serving:8080`` in the cluster)."""

    public_api_url: str | None = None
    """The serving API as a browser reaches it (``/api`` behind the chart's ingress), linked
    from the sidebar; unset: ``api_url``, which is right when both are the same machine."""

    grafana_url: str | None = None
    """Grafana address shown as a link on the Monitoring page; unset hides the link."""

    admin_token: SecretStr | None = None
    """Bearer token for ``/admin/*`` (the serving API's token). Unset: the Admin page asks for
    it; in dev mode it falls back to the dev token."""

    writer_token: SecretStr | None = None
    """Bearer token the serving API asks of ``/feedback`` (the Predict and Label pages'
    labels); in dev mode it falls back to the dev token."""

    base_url_path: str = ""
    """Path prefix the app is served under behind an ingress, e.g. ``/app`` (empty: ``/``)."""

    webapp_host: str = "127.0.0.1"
    """Interface Streamlit binds to (``0.0.0.0`` in a container)."""

    webapp_port: int = 8501
    """Port Streamlit listens on (its own name: ``MLPLATFORM_PORT`` belongs to serving)."""

    request_timeout_seconds: float = 10.0
    """Connect and read timeout of one request to the serving API."""

    cache_ttl_seconds: float = 15.0
    """How long fetched data (model card, versions, reports) is reused before asking again."""

    retry_seconds: float = 3.0
    """While the API is down, how often the page checks whether it is back."""

    batch_chunk_rows: int = 200
    """Rows sent in one ``/predict`` call by the Batch page."""

    label_chunk_rows: int = 100
    """Labels sent in one batch ``/feedback`` call by the Label page (within the API's burst of
    labelled rows, so a chunk is not refused as a whole)."""

    @field_validator("base_url_path")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        return value.strip().strip("/")

    @field_validator("grafana_url", "public_api_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    def token(self) -> str | None:
        """The configured admin token (the dev token in dev mode), or None."""
        return self.secret_or_dev(self.admin_token, DEV_ADMIN_TOKEN)

    def writer(self) -> str | None:
        """The configured writer token (the dev token in dev mode), or None."""
        return self.secret_or_dev(self.writer_token, DEV_WRITER_TOKEN)


@lru_cache
def get_settings() -> WebappSettings:
    """Settings from the environment, read once (tests call ``get_settings.cache_clear()``)."""
    return WebappSettings()
