"""One error hierarchy for every service and job.

Each error carries the HTTP status it maps to, so the serving API renders all of them with one
handler (`{"error": ..., "type": ...}`) and jobs can log them and exit non-zero.
"""

from __future__ import annotations


class MLPlatformError(Exception):
    """Base class of every error the platform raises on purpose."""

    status_code: int = 500
    retry_after: int | None = None
    """Seconds after which the same request may succeed (HTTP ``Retry-After``), if any."""

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


class PayloadTooLarge(MLPlatformError):
    """A request carries more than a limit allows (rows, bytes); the message names it."""

    status_code = 413


class UnsupportedMediaType(MLPlatformError):
    """A body in a format the route does not read; the message names the accepted ones."""

    status_code = 415


class Unauthorized(MLPlatformError):
    """A protected operation was called without a valid token."""

    status_code = 401

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


class ModelNotFound(NotFound):
    """No published version has that name, or no model has been published yet."""


class ObjectNotFound(NotFound):
    """The store has no object under that key."""


class Conflict(MLPlatformError):
    """The operation lost a race or would overwrite something immutable."""

    status_code = 409


class NotYet(Conflict):
    """Something that exists is not visible here yet (a prediction another replica has not
    written to the store): the same request succeeds after ``retry_after`` seconds."""

    retry_after = 2


class ModelNotReady(MLPlatformError):
    """No verified model is loaded."""

    status_code = 503


class StorageUnavailable(MLPlatformError):
    """The object store did not answer within the bounded retry."""

    status_code = 503


class IntegrityError(MLPlatformError):
    """A model file or manifest failed verification (sha256 or HMAC); it is never unpickled."""

    status_code = 503


class ConfigurationError(MLPlatformError):
    """A required setting is missing or invalid (the service cannot do this until fixed)."""

    status_code = 503


class DatasetError(InvalidInput):
    """A training CSV cannot be used: the message says which column or row and why."""
