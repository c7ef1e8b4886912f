"""``python -m mlplatform_webapp``: ``streamlit run`` the app with settings from the environment.

The process replaces itself with Streamlit's own CLI (``os.execv``), so signals and the PID go
straight to Streamlit.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlplatform_webapp.settings import get_settings

APP = Path(__file__).resolve().parent / "streamlit_app.py"


def command() -> list[str]:
    """The ``streamlit run`` command line these settings call for."""
    settings = get_settings()
    options = {
        "server.address": settings.webapp_host,
        "server.port": str(settings.webapp_port),
        "server.baseUrlPath": settings.base_url_path,
        "server.headless": "true",
        "server.fileWatcherType": "none",
        "browser.gatherUsageStats": "false",
        # An uncaught error shows a generic message, never a traceback (pages catch API errors).
        "client.showErrorDetails": "none",
        "client.toolbarMode": "viewer",
        "logger.level": settings.log_level.lower(),
    }
    args = [sys.executable, "-m", "streamlit", "run", str(APP)]
    for name, value in options.items():
        args += [f"--{name}", value]
    return args


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m mlplatform_webapp",
        description="Run the web app (Streamlit) on MLPLATFORM_WEBAPP_HOST:MLPLATFORM_WEBAPP_PORT; "
        "it talks only to the serving API at MLPLATFORM_API_URL. Every setting is an "
        "MLPLATFORM_* environment variable (README, 'Settings').",
    ).parse_args(argv)
    args = command()
    os.execv(args[0], args)  # noqa: S606 - our own interpreter and fixed arguments


if __name__ == "__main__":
    main()
