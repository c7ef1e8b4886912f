"""Serving settings (env prefix ``MLPLATFORM_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field, SecretStr

from mlplatform_common import datasets, uploads
from mlplatform_common.errors import Unauthorized
from mlplatform_common.settings import DEV_ADMIN_TOKEN, DEV_WRITER_TOKEN, CommonSettings


class ServingSettings(CommonSettings):
    """The serving API."""

    host: str = "127.0.0.1"
    """Interface uvicorn binds to (``0.0.0.0`` in a container)."""

    port: int = 8080
    """Port uvicorn listens on."""

    root_path: str = ""
    """Path prefix the API is reached under behind a proxy (``/api`` behind the ingress)."""

    workers: int = 1
    """uvicorn worker processes; metrics are aggregated across them."""

    access_log: bool = False
    """One log line per request (uvicorn's access log); off by default: metrics count every
    request, and at thousands of requests per second the log line is a real cost."""

    opentelemetry: bool = False
    """FastAPI's native OpenTelemetry spans, metrics and logs, for a process where an
    OpenTelemetry SDK is configured (for example under ``opentelemetry-instrument``). Off by
    default: the platform's metrics are Prometheus (``/metrics``), and FastAPI's check for a
    configured provider runs on every request and costs a good share of a one-row
    prediction (bench/BENCHMARKS.md, "Figures moved out of the code")."""

    keep_alive_seconds: int = 120
    """Idle keep-alive timeout. Longer than a proxy's or client pool's idle timeout (Traefik
    keeps idle backend connections 90 s), so the server never closes a connection a client is
    about to reuse; uvicorn's default of 5 s makes that race (a reset request) frequent."""

    model_version: str | None = Field(
        default=None, validation_alias=AliasChoices("MLPLATFORM_MODEL_VERSION", "MODEL_VERSION")
    )
    """Version to serve (``MODEL_VERSION``, set in the pod template by the retrainer); unset:
    the production alias."""

    admin_token: SecretStr | None = None
    """Bearer token of ``/admin/*``; required outside dev mode."""

    writer_token: SecretStr | None = None
    """Bearer token of the endpoints that write training data (``/feedback``), which the web
    app and the simulator hold; required outside dev mode. The admin token is accepted there
    too: whoever may retrain and roll back may also label a row."""

    feedback_rate: float = Field(default=10.0, ge=0)
    """Labelled rows per second one key may write (a token bucket per key, per serving
    process: with N replicas the cluster takes up to N times this); 0 lifts the limit..."""

    feedback_burst: int = Field(default=100, ge=1)
    """... and how many it may write at once before the rate applies (the bucket's size).
    Over them ``/feedback`` answers 429 with ``Retry-After`` and stores nothing. A batch counts
    as its rows; one larger than the burst is taken from a full bucket, which it leaves in
    debt (the key then waits until the rate has paid for every row)."""

    feedback_batch_max: int = Field(default=1000, ge=1)
    """Most labelled rows one ``/feedback`` batch (``{"items": [...]}``) may carry; more get
    413 and nothing is stored."""

    max_batch_rows: int = 10_000
    """Most rows one ``/predict`` call may carry."""

    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body accepted; larger ones get 413."""

    dataset_max_mb: float = Field(default=datasets.DEFAULT_MAX_MB, gt=0)
    """Largest data set ``POST /admin/datasets`` takes (CSV or Parquet, as sent); a larger
    one gets 413 while it is read, and nothing is stored."""

    model_upload_max_mb: float = Field(default=uploads.DEFAULT_MAX_MB, gt=0)
    """Largest ``POST /admin/models`` body (the model file and its reference data, as sent);
    a larger one gets 413 while it is read, and nothing is stored. Its files wait in ``/tmp``
    while they are stored: the chart's is 256 MiB."""

    load_retry_seconds: float = 5.0
    """While no model is loaded, how often loading is tried again."""

    alias_check_seconds: float = 30.0
    """How often the served version is compared with the production alias (``/ready``'s
    ``alias_matches``, ``mlplatform_model_alias_mismatch``)."""

    log_flush_rows: int = 25_000
    """The prediction log is written when this many rows are buffered ... (a Parquet write
    costs little more for many rows than for few, but each object's rows are held twice while
    it is written: 50,000 put one serving process past its memory target, at the price of
    fewer rows/s where requests outrun the writer; the reporter's compaction merges a day's
    objects; bench/BENCHMARKS.md)"""

    log_flush_seconds: float = 2.0
    """... or when the oldest buffered row is this old."""

    log_write_max_rows: int = 25_000
    """... in objects of at most this many rows (whole requests; a bigger request is one
    object): it bounds the writer's memory when it catches up with a backlog."""

    log_buffer_max_rows: int = 100_000
    """Rows kept while the store is down; beyond this the oldest are dropped and counted...
    (binary V2 requests outrun the writer, and a larger bound put one serving process past
    its memory target; bench/BENCHMARKS.md)"""

    log_buffer_max_mb: float = 128.0
    """... and beyond about this much memory (a one-row request costs a few kB). Requests
    wait for a writer that is behind past half of either bound."""

    log_wait_max_seconds: float = Field(default=1.0, ge=0)
    """How long a request waits at most for a writer that is behind (back-pressure); then it
    is answered, and past the buffer's bounds its oldest rows are dropped and counted. Well
    under wrk's and most clients' 2 s timeouts, with the request's own time on top
    (``mlplatform_prediction_log_wait_seconds``; bench/BENCHMARKS.md)."""

    recent_cache_rows: int = 100_000
    """Recent predictions kept in memory for ``/feedback`` by ``prediction_id`` (older ones
    are found in the stored log)..."""

    recent_cache_mb: float = 16.0
    """... and at most about this much memory for them: the row bound alone let one-row
    requests take far more. Under full load the default holds the last second or two; more
    raised the peak memory of a serving process (bench/BENCHMARKS.md, "Figures moved out of
    the code")."""

    feedback_lookup_days: int = 7
    """How many days of the prediction log ``/feedback`` searches for an unknown id."""

    feedback_wait_seconds: float = 5.0
    """How long ``/feedback`` by ``prediction_id`` waits, from the prediction's time, for a
    prediction another replica made to reach the stored log (it is written every
    ``log_flush_seconds``); an id still missing then but younger than
    ``feedback_pending_seconds`` gets 409 with ``Retry-After``, an older one 404."""

    feedback_pending_seconds: float = 120.0
    """See ``feedback_wait_seconds``: the other replica may hold the row in its buffer longer
    while the store is down."""

    feedback_count_max_age: float = 1.0
    """Rows labelled through other replicas show up in the count at most this many seconds
    late (the store is listed at most this often per process)."""

    low_confidence_threshold: float = 0.6
    """A prediction whose top probability is below this counts as low-confidence (KPIs)."""

    retrain_every: int = 50
    """Start a retrain every this many labelled rows (the course's k); 0 disables it."""

    retrain_launcher: str = "none"
    """How serving starts a retrain: ``local`` (a process), ``kubernetes`` (a Job from the
    retrainer CronJob) or ``none``."""

    retrainer_cronjob: str = "mlplatform-retrainer"
    """CronJob a retrain Job is created from."""

    def require_admin_token(self) -> str:
        """The admin token; dev mode falls back to a well-known token."""
        token = self.secret_or_dev(self.admin_token, DEV_ADMIN_TOKEN)
        if token is None:
            raise Unauthorized("admin endpoints are disabled: MLPLATFORM_ADMIN_TOKEN is not set")
        return token

    def writer_keys(self) -> dict[str, str]:
        """The tokens the write endpoints accept, by the key's name (``writer``, ``admin``);
        dev mode falls back to the well-known tokens."""
        keys = {
            "writer": self.secret_or_dev(self.writer_token, DEV_WRITER_TOKEN),
            "admin": self.secret_or_dev(self.admin_token, DEV_ADMIN_TOKEN),
        }
        found = {name: token for name, token in keys.items() if token is not None}
        if not found:
            raise Unauthorized(
                "writing is disabled: neither MLPLATFORM_WRITER_TOKEN nor MLPLATFORM_ADMIN_TOKEN "
                "is set"
            )
        return found


@lru_cache
def get_settings() -> ServingSettings:
    """Cached settings; tests pass their own to ``create_app``."""
    return ServingSettings()
