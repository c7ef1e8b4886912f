"""Wait until the store of `make dev STORE=s3` (a local SeaweedFS) answers, creating its bucket;
the services of that Procfile start after it."""

from __future__ import annotations

import sys
import time

from mlplatform_common.errors import StorageUnavailable
from mlplatform_common.settings import CommonSettings
from mlplatform_common.storage import open_store


def main(timeout: float = 60) -> int:
    settings = CommonSettings()
    deadline = time.monotonic() + timeout
    while True:
        try:
            open_store(settings, ensure=True)
            return 0
        except StorageUnavailable as exc:
            if time.monotonic() > deadline:
                print(f"make dev: the local SeaweedFS did not answer: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
