"""The object store: one interface, a local filesystem backend and an S3 backend (boto3).

Keys are ``/``-separated paths (docs/architecture.md, "Object store layout"). S3 has no
append and no rename, so
the interface offers only whole-object writes: ``put`` (atomic overwrite) and ``put_if_absent``
(atomic create, the building block of version numbers and locks).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from mlplatform_common import keys
from mlplatform_common.errors import InvalidInput, ObjectNotFound, StorageUnavailable
from mlplatform_common.settings import CommonSettings

logger = logging.getLogger("mlplatform.storage")

T = TypeVar("T")

_TMP_MARK = ".tmp-"


def validate_key(key: str) -> str:
    """Refuse keys that could escape the store root or are not plain relative paths."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(f"store key {key!r} is not a relative path of non-empty segments")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidInput(f"store key {key!r} contains a control character")
    if any(p.startswith(".") and _TMP_MARK in p for p in parts):
        raise InvalidInput(f"store key {key!r} uses the reserved temporary-file marker")
    # S3 keys are at most 1,024 bytes; a file name at most 255, and the local store's
    # temporary name adds 15 to the last part.
    if len(key.encode()) > 1024 or any(len(p.encode()) > 240 for p in parts):
        raise InvalidInput(
            f"store key {key!r:.80} is too long (over 1,024 bytes, or a part over 240)"
        )
    return key


class Store(ABC):
    """Whole-object storage addressed by keys."""

    url: str

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the object's bytes; raise ``ObjectNotFound`` if there is none."""

    @abstractmethod
    def put(
        self, key: str, data: bytes | memoryview, content_type: str = "application/octet-stream"
    ) -> None:
        """Write the object atomically: readers see the old bytes or the new, never a part.
        ``data`` may be a buffer's view (``BytesIO.getbuffer``): the local store writes it
        without a copy."""

    @abstractmethod
    def put_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        """Create the object only if no object has that key; return whether this call created it."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object has that key."""

    @abstractmethod
    def list_keys(self, prefix: str = "", start_after: str | None = None) -> list[str]:
        """Every key that starts with ``prefix``, recursively, sorted; only keys sorting after
        ``start_after`` when it is given (S3's StartAfter)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""

    def ensure(self) -> None:  # noqa: B027 - optional hook, a no-op where nothing needs creating
        """Create the bucket or root directory if it does not exist yet."""

    def get_json(self, key: str) -> Any:
        """Read a JSON object."""
        return json.loads(self.get(key))

    def put_json(self, key: str, obj: Any) -> None:
        """Write an object as indented JSON."""
        self.put(key, json_bytes(obj), "application/json")

    def list_dirs(self, prefix: str) -> list[str]:
        """The distinct first path segments under ``prefix`` (which should end with ``/``)."""
        names = {k[len(prefix) :].split("/", 1)[0] for k in self.list_keys(prefix)}
        return sorted(n for n in names if n)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def json_bytes(obj: Any) -> bytes:
    """Encode an object as UTF-8, indented JSON with sorted keys."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


class LocalStore(Store):
    """A directory on the local filesystem (the embedded default).

    Writes go to a temporary file in the target directory, are flushed, then renamed over the
    key, so a crash never leaves a half-written object behind a key.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _write_temp(self, path: Path, data: bytes | memoryview) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{_TMP_MARK}")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                # Every object is written for other processes, to be read later: out of the
                # page cache, or the log's stream of new objects makes it grow into fresh
                # memory, which made each write about ten times slower (bench/BENCHMARKS.md).
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {self.url}") from None

    def put(
        self, key: str, data: bytes | memoryview, content_type: str = "application/octet-stream"
    ) -> None:
        path = self._path(key)
        os.replace(self._write_temp(path, data), path)

    def put_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            # link() fails if the target exists, which makes create-if-absent atomic.
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str = "", start_after: str | None = None) -> list[str]:
        # Walk only the deepest directory the prefix names, not the whole store.
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not (path.name.startswith(".") and _TMP_MARK in path.name):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


# S3's bucket naming rules (3-63 characters; lowercase letters, digits, '.', '-'; a letter or
# digit at each end; no '..'; not an IPv4 address), checked before any request is sent.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_NOT_FOUND = ("NoSuchKey", "NoSuchObject", "NotFound", "404")
# What AWS, SeaweedFS and MinIO answer to a conditional create whose key already exists.
_PRECONDITION = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class S3Store(Store):
    """A bucket on any S3 (SeaweedFS, AWS S3, MinIO ...), through boto3.

    Every request has a timeout and a bounded number of retries; when they are spent the call
    raises ``StorageUnavailable`` instead of hanging. Without an access key the client takes
    its credentials from the standard AWS chain: environment, web identity token (IRSA, EKS
    Pod Identity), shared config, instance profile.
    """

    def __init__(
        self,
        bucket: str,
        endpoint: str | None,
        access_key: str | None,
        secret_key: str | None,
        *,
        secure: bool = False,
        region: str = "us-east-1",
        timeout: float = 5.0,
        retries: int = 2,
    ) -> None:
        # boto3 costs ~0.3 s to import: only processes on an S3 store pay for it.
        import boto3
        from botocore.config import Config

        if not _BUCKET_NAME.match(bucket) or ".." in bucket or _IPV4.match(bucket):
            raise InvalidInput(
                f"bucket name {bucket!r} is not valid (3-63 lowercase letters, digits, '.', '-')"
            )
        endpoint_url = None
        if endpoint:
            if not endpoint.startswith(("http://", "https://")):
                endpoint = f"{'https' if secure else 'http'}://{endpoint}"
            endpoint_url = endpoint.rstrip("/")
        self.bucket = bucket
        self.endpoint = endpoint_url or "AWS S3"
        self.url = f"s3://{bucket}"
        config = Config(
            region_name=region,
            signature_version="s3v4",
            connect_timeout=timeout,
            read_timeout=timeout,
            # Connection errors, throttling and 5xx are retried: every write here is idempotent
            # (a conditional create retried after a lost answer reads as "someone else won").
            retries={"total_max_attempts": retries + 1, "mode": "standard"},
            max_pool_connections=16,
            # Path-style URLs work on every S3; virtual hosts need DNS per bucket.
            s3={"addressing_style": "path"},
            # Checksums only where the API requires them: S3-compatible servers differ in
            # which of the newer default CRC headers they accept.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session of our own: boto3's default session is shared and not thread-safe.
        session = boto3.session.Session(
            aws_access_key_id=access_key or None,
            aws_secret_access_key=(secret_key or None) if access_key else None,
        )
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ClientError:
            raise
        except (BotoCoreError, OSError) as exc:
            raise StorageUnavailable(
                f"object store {self.url} at {self.endpoint} is unavailable ({what}): "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def _failed(self, exc: ClientError, doing: str) -> StorageUnavailable:
        if _code(exc) == "NoSuchBucket":
            return StorageUnavailable(f"bucket {self.bucket!r} does not exist at {self.endpoint}")
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
            # A server answering 5xx after the retries (one shutting down, overloaded) is down
            # for the caller, as one that does not answer at all.
            return StorageUnavailable(
                f"object store {self.url} at {self.endpoint} is unavailable ({doing} it): "
                f"{_code(exc)}: {exc}"
            )
        return StorageUnavailable(f"{doing} {self.url} failed: {_code(exc)}: {exc}")

    def ensure(self) -> None:
        try:
            self._call("head_bucket", lambda: self.client.head_bucket(Bucket=self.bucket))
            return
        except ClientError as exc:
            if _code(exc) not in (*_NOT_FOUND, "NoSuchBucket"):
                raise self._failed(exc, "checking the bucket of") from None
        region = self.client.meta.region_name
        where = {} if region == "us-east-1" else {"LocationConstraint": region}
        try:
            self._call(
                "create_bucket",
                lambda: self.client.create_bucket(
                    Bucket=self.bucket, **({"CreateBucketConfiguration": where} if where else {})
                ),
            )
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageUnavailable(f"cannot create bucket {self.bucket!r}: {exc}") from None

    def get(self, key: str) -> bytes:
        validate_key(key)

        def fetch() -> bytes:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                data: bytes = body.read()
                return data
            finally:
                body.close()

        try:
            return self._call(f"get {key}", fetch)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise ObjectNotFound(f"no object {key!r} in {self.url}") from None
            raise self._failed(exc, f"reading {key!r} from") from None

    def put(
        self, key: str, data: bytes | memoryview, content_type: str = "application/octet-stream"
    ) -> None:
        validate_key(key)
        # botocore takes bytes or a file (which it rewinds to retry): a view goes in as a file.
        body = data if isinstance(data, bytes) else io.BytesIO(data)
        try:
            self._call(
                f"put {key}",
                lambda: self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
                ),
            )
        except ClientError as exc:
            raise self._failed(exc, f"writing {key!r} to") from None

    def put_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        validate_key(key)
        # S3's conditional create (If-None-Match: *): AWS, SeaweedFS and MinIO answer 412
        # when the key exists, so exactly one of several writers wins.
        try:
            self._call(
                f"put_if_absent {key}",
                lambda: self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ContentType=content_type,
                    IfNoneMatch="*",
                ),
            )
            return True
        except ClientError as exc:
            if _code(exc) in _PRECONDITION:
                return False
            raise self._failed(exc, f"creating {key!r} in") from None

    def exists(self, key: str) -> bool:
        validate_key(key)
        try:
            self._call(f"stat {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=key))
            return True
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return False
            raise self._failed(exc, f"checking {key!r} in") from None

    def list_keys(self, prefix: str = "", start_after: str | None = None) -> list[str]:
        def collect() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=prefix,
                **({"StartAfter": start_after} if start_after else {}),
            )
            keys = (o["Key"] for page in pages for o in page.get("Contents", ()))
            return sorted(k for k in keys if k and not k.endswith("/"))

        try:
            return self._call(f"list {prefix}", collect)
        except ClientError as exc:
            raise self._failed(exc, f"listing {prefix!r} in") from None

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self._call(
                f"delete {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=key)
            )
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND:
                raise self._failed(exc, f"deleting {key!r} from") from None


class ScopedStore(Store):
    """One named model's part of a store: every key is read and written under ``prefix``
    (``keys.model_root``), and listings give keys back without it, so the code above works on
    one model's keys as if the store were its own. ``root`` is the whole store."""

    def __init__(self, root: Store, prefix: str) -> None:
        self.root, self.prefix = root, prefix
        self.url = f"{root.url.rstrip('/')}/{prefix}"

    def get(self, key: str) -> bytes:
        return self.root.get(self.prefix + key)

    def put(
        self, key: str, data: bytes | memoryview, content_type: str = "application/octet-stream"
    ) -> None:
        self.root.put(self.prefix + key, data, content_type)

    def put_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        return self.root.put_if_absent(self.prefix + key, data, content_type)

    def exists(self, key: str) -> bool:
        return self.root.exists(self.prefix + key)

    def list_keys(self, prefix: str = "", start_after: str | None = None) -> list[str]:
        after = None if start_after is None else self.prefix + start_after
        found = self.root.list_keys(self.prefix + prefix, after)
        return [k[len(self.prefix) :] for k in found]

    def delete(self, key: str) -> None:
        self.root.delete(self.prefix + key)

    def ensure(self) -> None:
        self.root.ensure()


def for_model(root: Store, name: str) -> Store:
    """The part of ``root`` that belongs to the named model: ``root`` itself for the default
    name (stores from before names), else a ``ScopedStore``."""
    while isinstance(root, ScopedStore):
        root = root.root
    prefix = keys.model_root(name)
    return ScopedStore(root, prefix) if prefix else root


def root_of(store: Store) -> Store:
    """The whole store a model's part belongs to."""
    return store.root if isinstance(store, ScopedStore) else store


def model_names(store: Store) -> list[str]:
    """Every named model with at least one object in the store, the default name first when
    the store's root has one of its keys."""
    root = root_of(store)
    named = [n for n in root.list_dirs(keys.NAMED) if re.match(keys.MODEL_NAME, n)]
    has_default = any(root.list_keys(prefix)[:1] for prefix in (keys.MODELS, keys.PRODUCTION_ALIAS))
    return ([keys.DEFAULT_MODEL] if has_default else []) + [
        n for n in named if n != keys.DEFAULT_MODEL
    ]


def _code(exc: ClientError) -> str:
    """The S3 error code of a failed request (``NoSuchKey``, ``PreconditionFailed``, ``404``)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def open_store(settings: CommonSettings, *, ensure: bool = False) -> Store:
    """The part of the store named by ``settings.store_url`` (``file://path`` or
    ``s3://bucket``) that belongs to ``settings.model_name`` (``for_model``)."""
    url = settings.store_url
    if url.startswith("file://"):
        store: Store = LocalStore(url[len("file://") :] or ".")
    elif url.startswith("s3://"):
        bucket = url[len("s3://") :].strip("/")
        if not bucket or "/" in bucket:
            raise InvalidInput(f"MLPLATFORM_STORE_URL {url!r}: expected s3://<bucket>")
        store = S3Store(
            bucket,
            settings.s3_endpoint,
            settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
            settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
            secure=settings.s3_secure,
            region=settings.s3_region,
            timeout=settings.s3_timeout_seconds,
            retries=settings.s3_retries,
        )
    else:
        raise InvalidInput(f"MLPLATFORM_STORE_URL {url!r}: expected file://<path> or s3://<bucket>")
    if ensure:
        store.ensure()
    return for_model(store, settings.model_name)
