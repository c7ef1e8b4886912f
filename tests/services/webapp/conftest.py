"""Web app fixtures: a real serving process over a local store with v1, and AppTest helpers."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from mlplatform_common import keys
from mlplatform_common.registry import ModelRegistry
from mlplatform_common.storage import LocalStore
from mlplatform_webapp.settings import get_settings
from tests.conftest import SIGNING_KEY, ServingProcess, published_local_store

APP_DIR = Path(__import__("mlplatform_webapp").__file__).resolve().parent
ADMIN_TOKEN = "webapp-test-admin"
WRITER_TOKEN = "webapp-test-writer"

# The shape the reporter writes today (report.py ReportResult.summary), and an older, flat one.
NESTED_SUMMARY = {
    "model_version": "v1",
    "rows": {"production": 120, "labelled": 40, "reference": 341},
    "drift": {
        "embedding": {"share": 0.3, "drifted_columns": 3, "detected": False},
        "raw": {"share": 0.1, "drifted_columns": 3, "detected": False},
    },
    "quality": {
        "rows": 40,
        "accuracy": 0.9,
        "precision": 0.91,
        "recall": 0.92,
        "f1": 0.915,
        "balanced_accuracy": 0.88,
    },
    "notes": ["window of 24 hours"],
}
# What the reporter writes for three labelled rows of class 0, all predicted right (issue 22).
PARTIAL_NOTE = (
    "quality is partial on the 3 labelled rows: no precision or recall or F1 (no row has 1, the "
    "positive class, as label or prediction); no ROC AUC (the 3 labelled rows with "
    "probabilities all have the true label 0: it needs both classes)"
)
PARTIAL_SUMMARY = {
    "model_version": "v1",
    "rows": {"production": 40, "labelled": 3, "reference": 341},
    "drift": {"embedding": {"share": 0.2, "drifted_columns": 2, "detected": False}},
    "quality": {"rows": 3, "roc_auc_rows": 0, "accuracy": 1.0, "balanced_accuracy": 1.0},
    "quality_status": "partial",
    "quality_note": PARTIAL_NOTE,
    "notes": ["balanced accuracy (mean per-class recall) = 1.0000", PARTIAL_NOTE],
}
FLAT_SUMMARY = {"drift_share": 0.5, "drifted_columns": ["PCA_1", "PCA_2"], "f1": 0.8, "rows": 50}


def serving_env(store_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "MLPLATFORM_STORE_URL": f"file://{store_dir}",
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_ADMIN_TOKEN": ADMIN_TOKEN,
        "MLPLATFORM_WRITER_TOKEN": WRITER_TOKEN,
        "MLPLATFORM_RETRAIN_EVERY": "0",
        "MLPLATFORM_LOG_FLUSH_SECONDS": "0.5",
        "MLPLATFORM_LOAD_RETRY_SECONDS": "0.2",
        "MLPLATFORM_DEV_MODE": "false",
        **extra,
    }


def write_report(store: LocalStore, report_id: str, summary: dict[str, object]) -> None:
    """A report as the reporter leaves it: HTML first, summary last."""
    html = f"<html><body><h1>Evidently report {report_id}</h1></body></html>"
    store.put(keys.report_file(report_id, "report.html"), html.encode(), "text/html")
    store.put(keys.report_file(report_id, "summary.json"), json.dumps(summary).encode())


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory, trained, shipped_dataset) -> LocalStore:  # type: ignore[no-untyped-def]
    store = published_local_store(
        tmp_path_factory.mktemp("webapp") / "store", trained, shipped_dataset
    )
    write_report(store, "20251231T000000Z", PARTIAL_SUMMARY)
    write_report(store, "20260101T000000Z", FLAT_SUMMARY)
    write_report(store, "20260102T000000Z", NESTED_SUMMARY)
    return store


@pytest.fixture(scope="session")
def serving(model_store: LocalStore) -> Iterator[ServingProcess]:
    proc = ServingProcess(serving_env(model_store.root)).start()
    yield proc
    proc.stop()


@pytest.fixture
def webapp_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A clean environment for the app's settings and empty Streamlit caches; the app holds
    the writer token, as the chart gives it.

    Streamlit runs a page script as ``__main__``; the test's own ``__main__`` is put back, or
    a later test's ``spawn`` child would import that page as its main module and fail."""
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
    for name in ("MLPLATFORM_API_URL", "MLPLATFORM_GRAFANA_URL", "MLPLATFORM_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLPLATFORM_WRITER_TOKEN", WRITER_TOKEN)
    monkeypatch.setenv("MLPLATFORM_DEV_MODE", "false")
    monkeypatch.setenv("MLPLATFORM_RETRY_SECONDS", "0.5")
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    yield monkeypatch
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()


def page(name: str, api_url: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """An AppTest of one page script, talking to ``api_url``."""
    monkeypatch.setenv("MLPLATFORM_API_URL", api_url)
    get_settings.cache_clear()
    return AppTest.from_file(str(APP_DIR / "app_pages" / f"{name}.py"), default_timeout=30)


def served_version(url: str, wanted: str, timeout: float = 60.0) -> str:
    """The version serving's /health names once it is ``wanted`` (or when ``timeout`` ends):
    a page follows the production alias, and the run tells serving to reload after moving it."""
    deadline = time.monotonic() + timeout
    while (served := httpx.get(url + "/health").json()["model_version"]) != wanted:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return served


def texts(at: AppTest) -> str:
    """Every message the page shows, as one string to search."""
    parts = []
    for kind in (
        "title",
        "markdown",
        "caption",
        "error",
        "warning",
        "info",
        "success",
        "subheader",
    ):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def manifest(store: LocalStore, version: str = "v1") -> dict[str, object]:
    """A published version's manifest: the card ``GET /model`` answers with."""
    return ModelRegistry(store, SIGNING_KEY).manifest(version)


@pytest.fixture(scope="session")
def penguins_store(
    tmp_path_factory: pytest.TempPathFactory, penguins_trained, penguins_dataset
) -> LocalStore:  # type: ignore[no-untyped-def]
    """Penguins (text classes, categories, missing cells) published as v1."""
    root = tmp_path_factory.mktemp("webapp-penguins") / "store"
    return published_local_store(root, penguins_trained, penguins_dataset)


@pytest.fixture(scope="session")
def penguins_serving(penguins_store: LocalStore) -> Iterator[ServingProcess]:
    proc = ServingProcess(serving_env(penguins_store.root)).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def diabetes_store(
    tmp_path_factory: pytest.TempPathFactory, diabetes_trained, diabetes_dataset
) -> LocalStore:  # type: ignore[no-untyped-def]
    """Diabetes (a regression of numbers) published as v1."""
    root = tmp_path_factory.mktemp("webapp-diabetes") / "store"
    return published_local_store(root, diabetes_trained, diabetes_dataset)


@pytest.fixture(scope="session")
def diabetes_serving(diabetes_store: LocalStore) -> Iterator[ServingProcess]:
    """A real serving of the regression version (answers ``value``, per the contract)."""
    proc = ServingProcess(serving_env(diabetes_store.root)).start()
    yield proc
    proc.stop()
