"""A lock with an expiry, held as one object in the store (``state/retrain.lock``).

Taken with an atomic create (``put_if_absent``); a holder that died leaves a lock that others
may break once it has expired. Only one retrainer runs at a time.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from types import TracebackType
from typing import Any

from mlplatform_common.errors import Conflict, ObjectNotFound
from mlplatform_common.storage import Store, json_bytes

logger = logging.getLogger("mlplatform.lock")


class LockHeld(Conflict):
    """Somebody else holds the lock and it has not expired."""

    retryable = True  # the holder finishes or its lock expires: a retried Job may take it


class StoreLock:
    """``with StoreLock(store, key, ttl):`` runs the block only if the lock could be taken."""

    def __init__(
        self, store: Store, key: str, ttl_seconds: float, owner: str | None = None
    ) -> None:
        self.store = store
        self.key = key
        self.ttl = ttl_seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.held = False

    def _body(self) -> bytes:
        now = time.time()
        return json_bytes({"owner": self.owner, "acquired_at": now, "expires_at": now + self.ttl})

    def holder(self) -> dict[str, Any] | None:
        """The current lock record, or None."""
        try:
            record: dict[str, Any] = json.loads(self.store.get(self.key))
            return record
        except (ObjectNotFound, json.JSONDecodeError):
            return None

    def acquire(self) -> None:
        """Take the lock, breaking an expired one; raise ``LockHeld`` if it is taken."""
        if self.store.put_if_absent(self.key, self._body(), "application/json"):
            self.held = True
            return
        current = self.holder()
        if current and float(current.get("expires_at", 0)) > time.time():
            raise LockHeld(
                f"{self.key} is held by {current.get('owner')} until "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(current['expires_at']))}"
            )
        logger.warning(
            "breaking expired lock %s held by %s", self.key, current and current.get("owner")
        )
        self.store.delete(self.key)
        if not self.store.put_if_absent(self.key, self._body(), "application/json"):
            raise LockHeld(f"{self.key} was taken by another process just now")
        self.held = True

    def release(self) -> None:
        if self.held:
            current = self.holder()
            if current and current.get("owner") == self.owner:
                self.store.delete(self.key)
            self.held = False

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
