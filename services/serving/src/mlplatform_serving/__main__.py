"""``python -m mlplatform_serving``: run the API with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m mlplatform_serving",
        description="Serve the named model (MLPLATFORM_MODEL_NAME) of the store "
        "(MLPLATFORM_STORE_URL) over HTTP with uvicorn: POST /predict, /feedback, the Open "
        "Inference Protocol v2 under /v2, docs at /docs. Every setting is an MLPLATFORM_* "
        "environment variable (README, 'Settings').",
    ).parse_args(argv)
    from mlplatform_serving.settings import get_settings

    settings = get_settings()
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Must be set before prometheus_client is imported by the app, in every worker.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mlplatform-metrics-")

    import uvicorn

    from mlplatform_common.log import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        "mlplatform_serving.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,
        timeout_keep_alive=settings.keep_alive_seconds,
        access_log=settings.access_log,
        proxy_headers=True,
        forwarded_allow_ips="*",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
