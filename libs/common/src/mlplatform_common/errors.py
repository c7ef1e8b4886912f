"""One error hierarchy for every service and job.

Each error carries the HTTP status it maps to, so the serving API renders all of them with one
handler (`{"error": ..., "type": ...}`), and whether running the same job again may succeed, so
every job command exits with the code `exit_code` gives (2: refused, 1: may be retried).
"""

from __future__ import annotations

from pydantic import ValidationError

EXIT_FAILED = 1
"""A job that failed where a retry may succeed: Kubernetes retries it up to ``backoffLimit``."""

EXIT_REFUSED = 2
"""A job refused for a reason a retry cannot change (input, settings, the store's state); also
click's usage errors. The chart's Jobs fail at once on it (``podFailurePolicy``)."""


class MLPlatformError(Exception):
    """Base class of every error the platform raises on purpose."""

    status_code: int = 500
    retry_after: int | None = None
    """Seconds after which the same request may succeed (HTTP ``Retry-After``), if any."""

    retryable: bool = True
    """Whether the same job run again may succeed (the store, the cluster or a lock said "not
    now"); False for a refusal that only a change of input, settings or state can lift."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def type(self) -> str:
        return type(self).__name__

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries: ``Retry-After`` when the error says when to retry."""
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


class InvalidInput(MLPlatformError):
    """The caller sent something the platform cannot use; the message names the field."""

    status_code = 422
    retryable = False


class PayloadTooLarge(MLPlatformError):
    """A request carries more than a limit allows (rows, bytes); the message names it."""

    status_code = 413
    retryable = False


class UnsupportedMediaType(MLPlatformError):
    """A body in a format the route does not read; the message names the accepted ones."""

    status_code = 415
    retryable = False


class Unauthorized(MLPlatformError):
    """A protected operation was called without a valid token."""

    status_code = 401
    retryable = False

    @property
    def headers(self) -> dict[str, str]:
        # RFC 9110: a 401 names the scheme that would be accepted.
        return {"WWW-Authenticate": 'Bearer realm="mlplatform"'}


class TooManyRequests(MLPlatformError):
    """A key went over its rate; the same request may succeed after ``retry_after`` seconds."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(MLPlatformError):
    """Something that was asked for by name does not exist."""

    status_code = 404
    retryable = False


class ModelNotFound(NotFound):
    """No published version has that name, or no model has been published yet."""


class ObjectNotFound(NotFound):
    """The store has no object under that key."""


class Conflict(MLPlatformError):
    """The operation lost a race or would overwrite something immutable."""

    status_code = 409
    retryable = False


class NotYet(Conflict):
    """Something that exists is not visible here yet (a prediction another replica has not
    written to the store): the same request succeeds after ``retry_after`` seconds."""

    retry_after = 2
    retryable = True


class ModelNotReady(MLPlatformError):
    """No verified model is loaded."""

    status_code = 503


class StorageUnavailable(MLPlatformError):
    """The object store did not answer within the bounded retry."""

    status_code = 503


class IntegrityError(MLPlatformError):
    """A model file or manifest failed verification (sha256 or HMAC); it is never unpickled."""

    status_code = 503
    # A retry reads the same bytes with the same key: stored files do not heal themselves.
    retryable = False


class ConfigurationError(MLPlatformError):
    """A required setting is missing or invalid (the service cannot do this until fixed)."""

    status_code = 503
    retryable = False


class DatasetError(InvalidInput):
    """A training CSV cannot be used: the message says which column or row and why."""


def exit_code(exc: BaseException) -> int:
    """The exit code of a job command that ``exc`` ended: ``EXIT_REFUSED`` for an error that is
    not ``retryable`` and for a bad setting (pydantic's ``ValidationError``), else
    ``EXIT_FAILED`` (a retryable error, or an unexpected exception: perhaps a passing fault)."""
    if isinstance(exc, MLPlatformError):
        return EXIT_FAILED if exc.retryable else EXIT_REFUSED
    return EXIT_REFUSED if isinstance(exc, ValidationError) else EXIT_FAILED
