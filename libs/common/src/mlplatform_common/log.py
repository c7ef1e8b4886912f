"""Logging set-up, done once per entrypoint: text or JSON, model version in every record."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_model_version = "-"


def set_model_version(version: str | None) -> None:
    """Record the model version that every later log record carries."""
    global _model_version
    _model_version = version or "-"


class _ModelVersionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.model_version = _model_version
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors in a cluster."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "model_version": getattr(record, "model_version", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record, not as it was at set-up: a command
    run in-process (a CLI test runner) swaps stderr and closes its copy afterwards."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger; call once at the start of an entrypoint."""
    handler = _StderrHandler()
    handler.addFilter(_ModelVersionFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-7s %(name)s [model %(model_version)s] %(message)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per HTTP call is noise in a job's log; warnings still show.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
