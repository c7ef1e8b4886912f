"""The signed model registry (docs/architecture.md, "Models and versions").

A version ``vN`` is a folder of files under ``models/vN/`` plus a ``manifest.json`` written
last, which lists the sha256 of every file and is signed with HMAC-SHA256. A version without a
manifest does not exist. ``load`` verifies the signature and every checksum before anything is
unpickled: a pickle is code, and only signed code runs.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import joblib
import numpy as np
import pandas as pd

from mlplatform_common import keys
from mlplatform_common.errors import Conflict, IntegrityError, ModelNotFound, ObjectNotFound
from mlplatform_common.storage import Store, json_bytes

logger = logging.getLogger("mlplatform.registry")

MANIFEST = "manifest.json"
MODEL = "model.joblib"
BACKUP = "backup.joblib"
REF_DATA = "ref_data.csv"
ONNX = "model.onnx"
EMBEDDING_ONNX = "embedding.onnx"
_CLAIM = "claim.json"
VERSION_PATTERN = r"^v([1-9][0-9]*)$"
"""A version's name: ``v1``, ``v2``, ..."""
_VERSION_RE = re.compile(VERSION_PATTERN)


def version_number(version: str) -> int:
    """``"v7"`` -> 7; raise ``ModelNotFound`` for anything that is not a version name."""
    match = _VERSION_RE.match(version)
    if not match:
        raise ModelNotFound(f"{version!r} is not a model version (expected v1, v2, ...)")
    return int(match.group(1))


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign_manifest(manifest: dict[str, Any], key: bytes) -> dict[str, Any]:
    """Return a copy of the manifest with its HMAC-SHA256 signature."""
    digest = hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest()
    return {**manifest, "signature": {"algorithm": "HMAC-SHA256", "value": digest}}


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class LoadedModel:
    """A verified model version. Its pickles are unpickled on first use only, so a process
    that serves the ONNX files never imports scikit-learn."""

    version: str
    manifest: dict[str, Any]
    files: dict[str, bytes]
    """Every file of the version, each checked against the signed manifest."""

    @cached_property
    def pipeline(self) -> Any:
        return joblib.load(io.BytesIO(self.files[MODEL]))

    @cached_property
    def backup(self) -> Any | None:
        return joblib.load(io.BytesIO(self.files[BACKUP])) if BACKUP in self.files else None

    @cached_property
    def ref_data(self) -> pd.DataFrame:
        data = self.files.get(REF_DATA)
        return pd.read_csv(io.BytesIO(data)) if data is not None else pd.DataFrame()

    def ref_target(self) -> np.ndarray:
        """The reference rows' ``target`` as floats (NaN where not a number; empty without
        one), read alone from ``ref_data.csv`` and not kept, unlike ``ref_data``."""
        data = self.files.get(REF_DATA)
        if data is None:
            return np.empty(0)
        try:
            column = pd.read_csv(io.BytesIO(data), usecols=["target"])["target"]
        except ValueError:  # no target column
            return np.empty(0)
        return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)

    @property
    def onnx(self) -> bytes | None:
        """The checked ONNX conversion of ``pipeline``, if the version has one."""
        return self.files.get(ONNX)

    @property
    def embedding_onnx(self) -> bytes | None:
        """The checked ONNX conversion of the pipeline's embedding step, if any."""
        return self.files.get(EMBEDDING_ONNX)

    @property
    def features(self) -> list[str]:
        return [f["name"] for f in self.manifest["feature_schema"]]

    @property
    def classes(self) -> list[Any]:
        return list(self.manifest["classes"])

    @property
    def signature(self) -> str:
        """The manifest's HMAC: which model this is, whatever store it is read from."""
        return str(self.manifest["signature"]["value"])


class ModelRegistry:
    """Publish, verify, load and alias model versions in a store."""

    def __init__(self, store: Store, signing_key: bytes) -> None:
        self.store = store
        self._key = signing_key

    # -- reading --------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Published versions (those with a manifest), oldest first."""
        found = [
            keys.model_version_of(k)
            for k in self.store.list_keys(keys.MODELS)
            if k.endswith("/" + MANIFEST)
        ]
        return sorted((v for v in found if _VERSION_RE.match(v)), key=version_number)

    def signature(self, version: str) -> str:
        """The verified manifest's HMAC (``LoadedModel.signature``) without loading files."""
        return str(self.manifest(version)["signature"]["value"])

    def manifest(self, version: str) -> dict[str, Any]:
        """The verified manifest of a version.

        Raises:
            ModelNotFound: no such version.
            IntegrityError: the manifest is unsigned, or its signature does not match.
        """
        version_number(version)
        key = keys.model_file(version, MANIFEST)
        try:
            raw = self.store.get(key)
        except ObjectNotFound:
            raise ModelNotFound(f"model version {version} does not exist") from None
        try:
            manifest = json.loads(raw)
        except json.JSONDecodeError:
            raise IntegrityError(f"{key} is not valid JSON; refusing to load {version}") from None
        signature = manifest.get("signature") if isinstance(manifest, dict) else None
        if not isinstance(signature, dict) or not isinstance(signature.get("value"), str):
            raise IntegrityError(f"{key} is unsigned; refusing to load {version}")
        expected = sign_manifest(manifest, self._key)["signature"]["value"]
        if not hmac.compare_digest(expected, signature["value"]):
            raise IntegrityError(
                f"{key} has an invalid signature (changed, or signed with another key); "
                f"refusing to load {version}"
            )
        if manifest.get("version") != version:
            raise IntegrityError(f"{key} names version {manifest.get('version')!r}, not {version}")
        return manifest

    def list_versions(self) -> list[dict[str, Any]]:
        """Every version's manifest, oldest first; a version that fails verification is listed
        with an ``error`` instead of being hidden."""
        out = []
        for version in self.versions():
            try:
                out.append(self.manifest(version))
            except IntegrityError as exc:
                out.append({"version": version, "error": exc.message})
        return out

    def read_file(
        self, version: str, filename: str, manifest: dict[str, Any] | None = None
    ) -> bytes:
        """One file of a version, checked against the sha256 in its verified manifest."""
        manifest = manifest or self.manifest(version)
        expected = manifest.get("files", {}).get(filename)
        if expected is None:
            raise ModelNotFound(f"model version {version} has no file {filename!r}")
        key = keys.model_file(version, filename)
        try:
            data = self.store.get(key)
        except ObjectNotFound:
            raise IntegrityError(f"{key} is listed in the manifest but missing") from None
        actual = hashlib.sha256(data).hexdigest()
        if not hmac.compare_digest(actual, expected):
            raise IntegrityError(
                f"{key} does not match its manifest (sha256 {actual[:12]}…, expected "
                f"{expected[:12]}…); refusing to load {version}"
            )
        return data

    def load(self, version: str) -> LoadedModel:
        """Verify every file of a version. Nothing is unpickled until it is used."""
        manifest = self.manifest(version)
        files = {name: self.read_file(version, name, manifest) for name in manifest["files"]}
        if MODEL not in files:
            raise IntegrityError(f"model version {version} has no {MODEL}")
        logger.info("loaded and verified model %s", version)
        return LoadedModel(version, manifest, files)

    # -- publishing -----------------------------------------------------------------------

    def _claim_next(self) -> str:
        """Reserve the next version number with an atomic create, so two publishers never
        get the same number."""
        claimed = [d for d in self.store.list_dirs(keys.MODELS) if _VERSION_RE.match(d)]
        n = max((version_number(v) for v in claimed), default=0) + 1
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "claimed_at": utcnow()}
        while not self.store.put_if_absent(keys.model_file(f"v{n}", _CLAIM), json_bytes(owner)):
            n += 1
        return f"v{n}"

    def publish(self, files: dict[str, bytes], manifest: dict[str, Any]) -> str:
        """Publish a new version: every file first, the signed manifest last.

        Args:
            files: file name -> bytes (at least ``model.joblib``).
            manifest: metadata to record (metrics, schema, classes, ...); ``version``,
                ``created_at``, ``files`` and ``signature`` are filled in here.

        Returns:
            The new version name.
        """
        if MODEL not in files:
            raise ValueError(f"a model version needs {MODEL}")
        version = self._claim_next()
        for name, data in files.items():
            self.store.put(keys.model_file(version, name), data)
        body = {
            **manifest,
            "version": version,
            "created_at": utcnow(),
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        }
        self.store.put(
            keys.model_file(version, MANIFEST), json_bytes(sign_manifest(body, self._key))
        )
        logger.info("published model %s (%d files)", version, len(files))
        return version

    # -- the production alias -------------------------------------------------------------

    def production(self) -> dict[str, Any] | None:
        """The alias ``{"version", "previous", "history", "updated_at"}``, or None."""
        try:
            alias: dict[str, Any] = self.store.get_json(keys.PRODUCTION_ALIAS)
            return alias
        except ObjectNotFound:
            return None

    def production_version(self) -> str:
        """The version the alias names; ``ModelNotFound`` before the first promotion."""
        alias = self.production()
        if not alias:
            raise ModelNotFound(
                "no model is in production yet (the chart's bootstrap Job publishes the first; "
                "locally: make train)"
            )
        return str(alias["version"])

    def hold(self) -> dict[str, Any] | None:
        """Why automation may not move the alias now (a rollback or a pin), or None."""
        alias = self.production()
        hold = alias.get("hold") if alias else None
        return hold if isinstance(hold, dict) else None

    def _write_alias(
        self, version: str, history: list[str], hold: dict[str, Any] | None, **extra: Any
    ) -> dict[str, Any]:
        alias = {
            "version": version,
            "previous": history[-1] if history else None,
            "history": history,
            **extra,
            "updated_at": utcnow(),
        }
        if hold is not None:
            alias["hold"] = {**hold, "at": utcnow()}
        self.store.put_json(keys.PRODUCTION_ALIAS, alias)
        return alias

    def promote(self, version: str, hold: str | None = None) -> dict[str, Any]:
        """Point the production alias at a verified version, remembering the one before.

        Args:
            version: the version to serve.
            hold: why automation must leave the alias alone from now on (a pin), or None: a
                promotion lifts any hold. Automation checks ``hold()`` before it promotes.
        """
        self.manifest(version)
        current = self.production()
        history = list(current.get("history", [])) if current else []
        if current and current["version"] != version:
            history.append(current["version"])
        alias = self._write_alias(version, history, {"reason": hold} if hold is not None else None)
        logger.info("production alias -> %s (previous %s)", version, alias["previous"])
        return alias

    def rollback(self) -> dict[str, Any]:
        """Move the alias back to the version that was in production before. The rollback
        holds: automation promotes nothing over it until ``unpin``."""
        current = self.production()
        if not current or not current.get("history"):
            raise Conflict("there is no previous production version to roll back to")
        history = list(current["history"])
        version = history.pop()
        self.manifest(version)
        alias = self._write_alias(
            version,
            history,
            {"reason": f"rolled back from {current['version']}"},
            rolled_back_from=current["version"],
        )
        logger.info("rolled back production %s -> %s", current["version"], version)
        return alias

    def follow(self, version: str, why: str) -> dict[str, Any]:
        """Move the alias to the version that is actually served (a Deployment rolled back by
        hand), as a rollback: it holds until ``unpin``. ``why`` is recorded in the hold."""
        self.manifest(version)
        current = self.production()
        history = list(current.get("history", [])) if current else []
        if current and history and history[-1] == version:
            history.pop()  # back to the version before: the stack of a rollback
        elif current and current["version"] != version:
            history.append(current["version"])
        alias = self._write_alias(
            version,
            history,
            {"reason": why},
            reconciled_from=current["version"] if current else None,
        )
        logger.warning("production alias -> %s to follow what is served: %s", version, why)
        return alias

    def restore(self, alias: dict[str, Any]) -> None:
        """Put back an alias read before (a promotion whose rollout failed)."""
        self.store.put_json(keys.PRODUCTION_ALIAS, alias)
        logger.warning("production alias restored to %s", alias.get("version"))

    def unpin(self) -> dict[str, Any]:
        """Lift a hold: automation may promote again. The alias keeps its version."""
        current = self.production()
        if not current:
            raise Conflict("no model is in production: there is nothing to unpin")
        extra = {
            k: v
            for k, v in current.items()
            if k not in ("version", "previous", "history", "hold", "updated_at")
        }
        alias = self._write_alias(
            current["version"], list(current.get("history", [])), None, **extra
        )
        logger.info("production %s is no longer held", current["version"])
        return alias
