"""The job commands' exit codes (errors.exit_code), which the chart's podFailurePolicy reads:
2 for a refusal a retry cannot change (the Job fails at once), 1 where a retried Job may succeed
(a store that does not answer, a lock another run holds). Each is one line, no traceback."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from mlplatform_common import keys
from mlplatform_common.errors import EXIT_FAILED, EXIT_REFUSED
from mlplatform_common.lock import StoreLock
from tests.conftest import (
    SIGNING_KEY,
    S3Server,
    free_port,
    published_local_store,
    run_cli,
    serving_env,
)


def _one_line(done_stderr: str, *says: str) -> None:
    lines = done_stderr.strip().splitlines()
    assert len(lines) == 1 and all(s in lines[0] for s in says), done_stderr
    assert "Traceback" not in done_stderr


@pytest.mark.parametrize(
    ("args", "env", "refusal"),
    [
        (["train", "--dataset", "wine"], {}, "dataset 'wine' is not in the store"),
        (["run"], {"MLPLATFORM_ACTION": "register:" + "0" * 32}, "no such upload"),
        (["batch", "--input", "in.csv"], {}, "NotFound"),
    ],
)
def test_a_refusal_exits_2_and_a_store_that_does_not_answer_exits_1(
    s3_server: S3Server, args: list[str], env: dict[str, str], refusal: str
) -> None:
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3_server.store(bucket)
    refused = run_cli("mlplatform_retrainer", args, {**serving_env(s3_server, bucket), **env})
    assert refused.returncode == EXIT_REFUSED == 2, refused.stdout + refused.stderr
    _one_line(refused.stderr, refusal)
    # the same command while the store does not answer: a retry may succeed
    down = {
        **serving_env(s3_server, bucket),
        "MLPLATFORM_S3_ENDPOINT": f"127.0.0.1:{free_port()}",
        "MLPLATFORM_S3_TIMEOUT_SECONDS": "1",
        "MLPLATFORM_S3_RETRIES": "0",
        **env,
    }
    failed = run_cli("mlplatform_retrainer", args, down)
    assert failed.returncode == EXIT_FAILED == 1, failed.stdout + failed.stderr
    _one_line(failed.stderr, "StorageUnavailable")


def test_a_move_exits_1_while_another_run_holds_the_lock_and_2_on_a_bad_signature(
    tmp_path: Path,
    trained,  # type: ignore[no-untyped-def]
    shipped_dataset,  # type: ignore[no-untyped-def]
) -> None:
    store = published_local_store(tmp_path / "store", trained, shipped_dataset)
    env = {
        "MLPLATFORM_STORE_URL": f"file://{tmp_path / 'store'}",
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_ROLLOUT": "none",
    }
    lock = StoreLock(store, keys.RETRAIN_LOCK, ttl_seconds=600, owner="another-run")
    lock.acquire()
    held = run_cli("mlplatform_retrainer", ["pin", "v1"], env)
    assert held.returncode == 1, held.stdout + held.stderr  # the retried Job finds it free
    _one_line(held.stderr, "LockHeld", "another-run")
    lock.release()
    # another key: the stored manifest stays what it is, a retry verifies it the same way
    other = run_cli("mlplatform_retrainer", ["pin", "v1"], {**env, "MLPLATFORM_SIGNING_KEY": "x"})
    assert other.returncode == 2, other.stdout + other.stderr
    _one_line(other.stderr, "IntegrityError", "invalid signature")
    done = run_cli("mlplatform_retrainer", ["pin", "v1"], env)
    assert done.returncode == 0, done.stderr


def test_a_usage_error_exits_2_as_click_gives_it() -> None:
    done = run_cli("mlplatform_retrainer", ["train", "--task", "clustering"], {})
    assert done.returncode == EXIT_REFUSED, done.stderr
    assert "Invalid value for '--task'" in done.stderr and "Traceback" not in done.stderr
