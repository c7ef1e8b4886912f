"""Logging set up by an entrypoint writes to the stderr of the moment: an entrypoint run
in-process under a swapped stderr (a CLI test runner) leaves no handler on a closed stream."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest

from mlplatform_common.log import configure_logging


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.mark.usefixtures("root_logging")
def test_records_go_to_the_stderr_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    during = io.StringIO()
    monkeypatch.setattr(sys, "stderr", during)
    configure_logging("INFO")
    logging.getLogger("x").info("while the command runs")
    during.close()  # the runner is done with its stderr

    after = io.StringIO()
    monkeypatch.setattr(sys, "stderr", after)
    logging.getLogger("x").info("after it ended")
    assert "after it ended" in after.getvalue()
    assert "Logging error" not in after.getvalue()
