"""Settings shared by every service: the store, the signing key, logging.

Each service subclasses :class:`CommonSettings` with its own fields; all read environment
variables with the ``MLPLATFORM_`` prefix (``MLPLATFORM_STORE_URL`` and so on).
"""

from __future__ import annotations

from pydantic import SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlplatform_common import keys
from mlplatform_common.errors import ConfigurationError

# Only ever used when MLPLATFORM_DEV_MODE is true: a laptop run needs no secret set up.
DEV_SIGNING_KEY = "mlplatform-dev-signing-key-not-for-production"
DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105
DEV_WRITER_TOKEN = "dev-writer-token"  # noqa: S105


class CommonSettings(BaseSettings):
    """Settings every component reads."""

    model_config = SettingsConfigDict(env_prefix="MLPLATFORM_", extra="ignore")

    dev_mode: bool = False
    """Local development: secrets fall back to fixed, well-known dev values."""

    store_url: str = "file://.mlplatform/store"
    """Where every artifact and row lives: ``file://<path>`` (local) or ``s3://<bucket>``."""

    s3_endpoint: str = "localhost:9000"
    """S3 endpoint as ``host:port``; an ``http://`` or ``https://`` prefix sets TLS; empty: AWS
    S3's own endpoint for ``s3_region``."""

    s3_access_key: SecretStr | None = None
    """S3 access key (from a Secret in Kubernetes). Unset: the standard AWS credential chain
    (``AWS_*`` variables, a web identity token for IRSA or EKS Pod Identity, an instance
    profile)."""

    s3_secret_key: SecretStr | None = None
    """S3 secret key (from a Secret in Kubernetes)."""

    s3_secure: bool = False
    """Use TLS to reach the S3 endpoint."""

    s3_region: str = "us-east-1"
    """Region sent to the S3 endpoint."""

    s3_timeout_seconds: float = 5.0
    """Connect and read timeout of one S3 request."""

    s3_retries: int = 2
    """How many times a failed S3 request is retried before ``StorageUnavailable``."""

    model_name: str = keys.DEFAULT_MODEL
    """The named model this process works on: its versions, alias, log, reports and runs
    (``keys.model_root``), and its name in the Open Inference Protocol
    (``/v2/models/<name>``). The default name is a store's root: stores from before names."""

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        return keys.check_model_name(value)

    signing_key: SecretStr | None = None
    """HMAC-SHA256 key that signs model manifests; required outside dev mode."""

    log_level: str = "INFO"
    """Python log level name."""

    log_format: str = "text"
    """``text`` for a terminal, ``json`` for a log collector."""

    release: str = "local"
    """Name of this installation (the chart sets its Helm release): a label on every series the
    jobs push, so releases sharing a Pushgateway keep their own."""

    namespace: str = "default"
    """Kubernetes namespace of this installation: where serving and the retrainer find the
    Deployment and CronJob they act on, and a label on every series the jobs push."""

    def push_grouping_key(self) -> dict[str, str]:
        """The Pushgateway grouping key besides ``job``: one group per job, release, namespace
        and named model, so a push replaces only its own model's previous push (two names run
        from one release and namespace, as on a laptop, keep their own series)."""
        return {
            "instance": "mlplatform",
            "release": self.release,
            "namespace": self.namespace,
            "model": self.model_name,
        }

    def legacy_push_grouping_key(self) -> dict[str, str] | None:
        """The group this release's job pushed before models had names (no ``model``), which
        a push of the default name replaces: left behind, its last success time would stay old
        and its numbers would sit beside the new group's. None for any other name."""
        if self.model_name != keys.DEFAULT_MODEL:
            return None
        return {k: v for k, v in self.push_grouping_key().items() if k != "model"}

    def secret_or_dev(self, value: SecretStr | None, dev_default: str) -> str | None:
        """A secret setting's value; unset or empty: ``dev_default`` in dev mode, else None."""
        if value is not None and value.get_secret_value():
            return value.get_secret_value()
        return dev_default if self.dev_mode else None

    def require_signing_key(self) -> bytes:
        """Return the manifest signing key, or raise if none is configured outside dev mode."""
        key = self.secret_or_dev(self.signing_key, DEV_SIGNING_KEY)
        if key is not None:
            return key.encode()
        raise ConfigurationError(
            "MLPLATFORM_SIGNING_KEY is not set: model manifests cannot be signed or verified "
            "(set it, or MLPLATFORM_DEV_MODE=true for local development)"
        )


def setting_error(exc: ValidationError) -> str:
    """A bad setting as the one line a job command prints: the variable and the problem."""
    error = exc.errors()[0]
    field = "_".join(str(part) for part in error["loc"]).upper()
    return f"MLPLATFORM_{field}: {error['msg']}"
