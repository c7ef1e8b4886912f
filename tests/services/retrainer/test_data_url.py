"""`train --data-url URL` (the chart's bootstrap.dataUrl) against a real HTTP server on
127.0.0.1: it downloads, trains and stores the data set; a file over the limit, a missing
file, a server that stalls or is unavailable and a URL that is not HTTP(S) are each one clear
line, exit 2 where a retry cannot help and 1 where it may (errors.exit_code)."""

from __future__ import annotations

import functools
import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlplatform_common import keys
from mlplatform_common.registry import ModelRegistry
from tests.conftest import REPO, SIGNING_KEY, S3Server, free_port, run_cli, serving_env


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/stall.csv":
            time.sleep(4)  # longer than the --timeout the test gives
        if self.path == "/busy.csv":
            self.send_error(503, "try later")
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("www")
    (root / "penguins.csv").write_bytes((REPO / "data" / "penguins.csv").read_bytes())
    (root / "stall.csv").write_bytes((REPO / "data" / "penguins.csv").read_bytes())
    (root / "big.csv").write_bytes((REPO / "data" / "breast_cancer.csv").read_bytes())
    port = free_port()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(_Handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def _env(s3_server: S3Server) -> tuple[dict[str, str], str]:
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3_server.store(bucket)
    env = serving_env(s3_server, bucket, MLPLATFORM_DATASET_MAX_MB="0.05")
    env["MLPLATFORM_N_COMPONENTS"] = "3"
    return env, bucket


def test_a_url_is_downloaded_trained_on_and_kept(s3_server: S3Server, http_url: str) -> None:
    env, bucket = _env(s3_server)
    args = ["train", "--if-missing", "--data-url", f"{http_url}/penguins.csv"]
    done = run_cli("mlplatform_retrainer", [*args, "--target", "species"], env)
    assert done.returncode == 0, done.stderr
    store = s3_server.store(bucket)
    registry = ModelRegistry(store, SIGNING_KEY)
    manifest = registry.manifest(registry.production_version())
    assert manifest["training_data"]["dataset"] == "penguins"
    assert store.get(keys.dataset("penguins")) == (REPO / "data" / "penguins.csv").read_bytes()
    assert store.get_json(keys.dataset("penguins", "meta.json"))["target"] == "species"


@pytest.mark.parametrize(
    ("path", "extra", "says", "code"),
    [
        ("/big.csv", [], "over the limit of 0.05 MB (MLPLATFORM_DATASET_MAX_MB)", 2),
        ("/nothing.csv", [], "InvalidInput: --data-url: ", 2),
        ("/busy.csv", [], "DownloadFailed: --data-url: ", 1),
        ("/stall.csv", ["--timeout", "1"], "could not be read: ReadTimeout", 1),
        ("file:///etc/passwd", [], "is not an http:// or https:// URL", 2),
    ],
)
def test_a_bad_url_is_one_clear_line(
    s3_server: S3Server, http_url: str, path: str, extra: list[str], says: str, code: int
) -> None:
    env, bucket = _env(s3_server)
    url = path if "://" in path else http_url + path
    done = run_cli("mlplatform_retrainer", ["train", "--data-url", url, *extra], env)
    assert done.returncode == code, done.stderr  # 1: a retried Job may get it
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert s3_server.store(bucket).list_keys("") == []


def test_data_url_and_data_are_exclusive(s3_server: S3Server) -> None:
    env, _ = _env(s3_server)
    args = ["train", "--data", str(Path("x.csv")), "--data-url", "http://127.0.0.1:9/x.csv"]
    done = run_cli("mlplatform_retrainer", args, env)
    assert done.returncode == 2 and "give either --data or --data-url" in done.stderr
