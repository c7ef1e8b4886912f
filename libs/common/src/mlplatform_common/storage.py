"""The object store: one interface, a local filesystem backend and an S3/MinIO backend.

Keys are ``/``-separated paths as in DESIGN.md section 4. S3 has no append and no rename, so
the interface offers only whole-object writes: ``put`` (atomic overwrite) and ``put_if_absent``
(atomic create, the building block of version numbers and locks).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from xml.etree.ElementTree import ParseError

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from minio.helpers import check_bucket_name

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
                # memory (an 18 MB write took 43 ms instead of 4, bench/BENCHMARKS.md).
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


class S3Store(Store):
    """A bucket on S3 or MinIO, through the ``minio`` SDK.

    Every request has a timeout and a bounded number of retries; when they are spent the call
    raises ``StorageUnavailable`` instead of hanging.
    """

    def __init__(
        self,
        bucket: str,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        *,
        secure: bool = False,
        region: str = "us-east-1",
        timeout: float = 5.0,
        retries: int = 2,
    ) -> None:
        if endpoint.startswith(("http://", "https://")):
            secure = endpoint.startswith("https://")
            endpoint = endpoint.split("://", 1)[1]
        endpoint = endpoint.rstrip("/")
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError:
            raise InvalidInput(
                f"bucket name {bucket!r} is not valid (3-63 lowercase letters, digits, '.', '-')"
            ) from None
        self.bucket = bucket
        self.endpoint = endpoint
        self.url = f"s3://{bucket}"
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=urllib3.Retry(
                total=retries,
                backoff_factor=0.2,
                status_forcelist=(500, 502, 503, 504),
                allowed_methods=None,  # retry PUTs too: every write here is idempotent
            ),
            maxsize=16,
        )
        self.client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except S3Error:
            raise
        except (urllib3.exceptions.HTTPError, MinioException, OSError, ParseError) as exc:
            raise StorageUnavailable(
                f"object store {self.url} at {self.endpoint} is unavailable ({what}): "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def _missing(self, exc: S3Error, key: str) -> ObjectNotFound | StorageUnavailable:
        if exc.code == "NoSuchBucket":
            return StorageUnavailable(f"bucket {self.bucket!r} does not exist at {self.endpoint}")
        return ObjectNotFound(f"no object {key!r} in {self.url}")

    def ensure(self) -> None:
        if not self._call("bucket_exists", lambda: self.client.bucket_exists(self.bucket)):
            try:
                self._call("make_bucket", lambda: self.client.make_bucket(self.bucket))
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise StorageUnavailable(
                        f"cannot create bucket {self.bucket!r}: {exc}"
                    ) from None

    def get(self, key: str) -> bytes:
        validate_key(key)

        def fetch() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        try:
            return self._call(f"get {key}", fetch)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise self._missing(exc, key) from None
            raise StorageUnavailable(f"reading {key!r} from {self.url} failed: {exc}") from None

    def put(
        self, key: str, data: bytes | memoryview, content_type: str = "application/octet-stream"
    ) -> None:
        validate_key(key)
        try:
            self._call(
                f"put {key}",
                lambda: self.client.put_object(
                    self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
                ),
            )
        except S3Error as exc:
            raise StorageUnavailable(f"writing {key!r} to {self.url} failed: {exc}") from None

    def put_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        validate_key(key)
        # S3 conditional create (If-None-Match: *), supported by AWS and MinIO. minio-py's public
        # put_object() turns unknown headers into user metadata, so the lower-level call is used.
        headers: dict[str, str | list[str] | tuple[str]] = {
            "If-None-Match": "*",
            "Content-Type": content_type,
        }
        try:
            self._call(
                f"put_if_absent {key}",
                lambda: self.client._put_object(self.bucket, key, data, headers),
            )
            return True
        except S3Error as exc:
            if exc.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise StorageUnavailable(f"creating {key!r} in {self.url} failed: {exc}") from None

    def exists(self, key: str) -> bool:
        validate_key(key)
        try:
            self._call(f"stat {key}", lambda: self.client.stat_object(self.bucket, key))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"):
                return False
            if exc.code == "NoSuchBucket":
                raise self._missing(exc, key) from None
            raise StorageUnavailable(f"checking {key!r} in {self.url} failed: {exc}") from None

    def list_keys(self, prefix: str = "", start_after: str | None = None) -> list[str]:
        def collect() -> list[str]:
            objects = self.client.list_objects(
                self.bucket, prefix=prefix, recursive=True, start_after=start_after
            )
            return sorted(o.object_name for o in objects if o.object_name and not o.is_dir)

        try:
            return self._call(f"list {prefix}", collect)
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                raise self._missing(exc, prefix) from None
            raise StorageUnavailable(f"listing {prefix!r} in {self.url} failed: {exc}") from None

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self._call(f"delete {key}", lambda: self.client.remove_object(self.bucket, key))
        except S3Error as exc:
            if exc.code != "NoSuchKey":
                raise StorageUnavailable(
                    f"deleting {key!r} from {self.url} failed: {exc}"
                ) from None


def open_store(settings: CommonSettings, *, ensure: bool = False) -> Store:
    """Build the store named by ``settings.store_url`` (``file://path`` or ``s3://bucket``)."""
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
    return store
