"""errors.exit_code: the one rule of the job commands' exit codes (the chart's podFailurePolicy
fails a Job at once on 2; Kubernetes retries 1 up to backoffLimit)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mlplatform_common import errors
from mlplatform_common.lock import LockHeld
from mlplatform_common.settings import CommonSettings, setting_error
from mlplatform_common.uploads import UploadRefused
from mlplatform_retrainer.job import DownloadFailed
from mlplatform_retrainer.register import RegistrationError
from mlplatform_retrainer.rollout import RolloutFailed

REFUSED = [
    errors.InvalidInput("x"),
    errors.DatasetError("x"),
    UploadRefused("x"),
    RegistrationError("x"),
    errors.PayloadTooLarge("x"),
    errors.UnsupportedMediaType("x"),
    errors.Unauthorized("x"),
    errors.NotFound("x"),
    errors.ModelNotFound("x"),
    errors.ObjectNotFound("x"),
    errors.Conflict("x"),
    errors.IntegrityError("x"),
    errors.ConfigurationError("x"),
]
RETRIED = [
    errors.NotYet("x"),
    LockHeld("x"),
    errors.TooManyRequests("x", retry_after=3),
    errors.ModelNotReady("x"),
    errors.StorageUnavailable("x"),
    RolloutFailed("x"),
    DownloadFailed("x"),
    errors.MLPlatformError("x"),
    RuntimeError("a bug, or a passing fault"),
    ValueError("not a setting"),
]


@pytest.mark.parametrize("exc", REFUSED, ids=lambda e: type(e).__name__)
def test_a_refusal_a_retry_cannot_change_exits_2(exc: Exception) -> None:
    assert errors.exit_code(exc) == errors.EXIT_REFUSED == 2


@pytest.mark.parametrize("exc", RETRIED, ids=lambda e: type(e).__name__)
def test_what_a_retry_may_fix_exits_1(exc: Exception) -> None:
    assert errors.exit_code(exc) == errors.EXIT_FAILED == 1


def test_a_bad_setting_exits_2_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPLATFORM_S3_RETRIES", "many")
    with pytest.raises(ValidationError) as caught:
        CommonSettings()
    assert errors.exit_code(caught.value) == 2
    assert setting_error(caught.value).startswith("MLPLATFORM_S3_RETRIES: Input should be")
