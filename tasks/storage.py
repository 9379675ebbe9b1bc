"""Backup storage: a local folder or an S3 bucket, behind one small interface.

Keys are '/'-separated paths relative to the store's root (see docs/repository-format.md). Writes are
atomic: a local file is written under ``tmp/``, fsynced, renamed into place and its folder fsynced;
an S3 object is one PUT or one multipart upload, invisible until complete (boto3 aborts the multipart
upload when it fails). boto3 is imported only in ``S3Store``; its exceptions become StorageError.
Permanent errors (disk full, permission denied) are never retried.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from odoops.errors import ConfigError, DiskFull, StorageError

CHUNK = 1024 * 1024


class HashingReader:
    """Wraps a binary stream, computing sha256 and size of what is read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer) -> int:  # pragma: no cover - boto3 uses read()
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _os_error(exc: OSError, what: str) -> Exception:
    if exc.errno == errno.ENOSPC:
        return DiskFull(f"no space left on device while writing {what}: free space or use another storage")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"permission denied writing {what}: fix the folder's permissions")
    return StorageError(f"cannot write {what}: {exc.strerror}")


class Store(ABC):
    """Where a backup repository lives."""

    name: str

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def put_stream(self, key: str, stream: IO[bytes]) -> tuple[int, str]:
        """Store the stream's content at ``key`` atomically; returns (size, sha256)."""

    def put_bytes(self, key: str, data: bytes) -> tuple[int, str]:
        import io

        return self.put_stream(key, io.BytesIO(data))

    def put_file(self, key: str, path: Path) -> tuple[int, str]:
        with open(path, "rb") as f:
            return self.put_stream(key, f)

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object (raises StorageError when missing)."""

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` (recursive)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist yet (a lock); False when it already exists."""

    def local_path(self, key: str) -> Path | None:
        """The key's file on local disk when the store is a folder (lets pg_restore read it directly)."""
        return None

    @abstractmethod
    def total_size(self, prefix: str = "") -> int:
        """Bytes stored under ``prefix`` (the whole repository by default)."""

    def link(self, source: str, target: str) -> None:
        """``target`` gets ``source``'s content (immutable data: a link or a server-side copy where possible)."""
        with self.open(source) as stream:
            self.put_stream(target, stream)


class LocalStore(Store):
    def __init__(self, root: Path, name: str = "local") -> None:
        self.root = Path(root)
        self.name = name

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid storage key {key!r}")
        return self.root / key

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def put_stream(self, key: str, stream: IO[bytes]) -> tuple[int, str]:
        self._path(key)  # an invalid key fails before anything is written
        tmp_dir = self.root / "tmp"
        tmp = tmp_dir / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _os_error(exc, key) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._publish(tmp, key)
        return size, digest.hexdigest()

    def _publish(self, tmp: Path, key: str) -> None:
        """Rename a finished temporary file to ``key``, then fsync the folder (the data is already synced)."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _os_error(exc, key) from None

    def _missing(self, key: str) -> StorageError:
        return StorageError(f"{key} is missing from {self.root}: the backup is damaged (run backups verify)")

    def link(self, source: str, target: str) -> None:
        src = self._path(source)
        self._path(target)
        if not src.is_file():
            raise self._missing(source)
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}.link"
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, tmp)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
                raise _os_error(exc, target) from None
            super().link(source, target)  # a filesystem without hard links (or across devices): copy
            return
        self._publish(tmp, target)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise self._missing(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.exists():
            return
        if base.is_file():
            yield prefix
            return
        for dirpath, _dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for filename in filenames:
                yield filename if rel == "." else f"{rel}/{filename}"

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
            parent = path.parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        except OSError as exc:
            raise _os_error(exc, key) from None

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def total_size(self, prefix: str = "") -> int:
        total = 0
        for key in self.list(prefix):
            try:
                total += self._path(key).lstat().st_size
            except FileNotFoundError:
                pass  # deleted meanwhile (a prune)
        return total

    def create_exclusive(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _os_error(exc, key) from None
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
        return True

    def clean_tmp(self) -> int:
        """Remove leftovers of interrupted writes (only call under the repository lock)."""
        tmp = self.root / "tmp"
        count = sum(1 for _ in tmp.glob("*")) if tmp.exists() else 0
        shutil.rmtree(tmp, ignore_errors=True)
        return count


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Store(Store):
    """Any S3-compatible endpoint (AWS, MinIO, Ceph, moto...), multipart for large parts."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, name: str = "s3",
                 max_attempts: int = 5, multipart_mb: int = 64) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.name = name
        self.endpoint_url = endpoint_url
        config = Config(retries={"max_attempts": max_attempts, "mode": "standard"}, connect_timeout=10, read_timeout=60)
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                                   aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=config)
        from boto3.s3.transfer import TransferConfig

        self.transfer = TransferConfig(multipart_threshold=multipart_mb * CHUNK, multipart_chunksize=multipart_mb * CHUNK,
                                       max_concurrency=4, use_threads=True)

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _error(self, exc: Exception, key: str) -> StorageError:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return StorageError(f"S3 {self.describe()}: no credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                                "or the storage's access_key_env/secret_key_env")
        if isinstance(exc, EndpointConnectionError):
            return StorageError(f"S3 endpoint unreachable for {self.describe()}: check endpoint_url and the network")
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "?")
            if code in ("NoSuchBucket",):
                return StorageError(f"S3 bucket {self.bucket!r} does not exist: create it or fix 'bucket:'")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                err = StorageError(f"S3 access denied for {key}: check the credentials and the bucket policy")
                err.permanent = True
                return err
            return StorageError(f"S3 error {code} on {key}")
        return StorageError(f"S3 failure on {key}: {type(exc).__name__}")

    def _missing(self, key: str) -> StorageError:
        return StorageError(f"{key} is missing from {self.describe()}: the backup is damaged")

    def put_stream(self, key: str, stream: IO[bytes]) -> tuple[int, str]:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        reader = HashingReader(stream)
        try:
            self.client.upload_fileobj(reader, self.bucket, self._key(key), Config=self.transfer)
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") not in (
                    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "503", "500"):
                raise self._error(exc, key) from None
            if isinstance(exc, BotoCoreError | ClientError) and not isinstance(exc, ClientError):
                raise self._error(exc, key) from None
            raise StorageError(f"S3 upload of {key} failed after retries ({type(exc).__name__}): the endpoint "
                               f"{self.endpoint_url or 'AWS'} keeps failing; nothing was listed, run the backup again "
                               "later") from None
        return reader.size, reader.sha256.hexdigest()

    def link(self, source: str, target: str) -> None:
        """A server-side copy: the data does not travel through this machine."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.copy({"Bucket": self.bucket, "Key": self._key(source)}, self.bucket, self._key(target),
                             Config=self.transfer)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise self._missing(source) from None
            raise self._error(exc, target) from None
        except (BotoCoreError, S3UploadFailedError) as exc:
            raise self._error(exc, target) from None

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise self._missing(key) from None
            raise self._error(exc, key) from None
        except BotoCoreError as exc:
            raise self._error(exc, key) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(exc, key) from None
        except BotoCoreError as exc:
            raise self._error(exc, key) from None

    def _objects(self, prefix: str, what: str | None = None) -> Iterator[dict[str, Any]]:
        """Every object under ``prefix``, as list_objects_v2 describes it (Key, Size...)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                yield from page.get("Contents", [])
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, what or prefix) from None

    def list(self, prefix: str) -> Iterator[str]:
        for item in self._objects(prefix):
            yield item["Key"][len(self.prefix):]

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, key) from None

    def size(self, key: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, key) from None

    def total_size(self, prefix: str = "") -> int:
        return sum(item["Size"] for item in self._objects(prefix, prefix or "the repository"))

    def create_exclusive(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise self._error(exc, key) from None
        except BotoCoreError as exc:
            raise self._error(exc, key) from None

    def abort_incomplete_uploads(self) -> int:
        """Abort multipart uploads left by killed processes (they cost storage on S3)."""
        count = 0
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                 Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                count += 1
        return count


def open_store(storage) -> Store:
    """The Store for an inventory ``Storage`` entry."""
    from odoops.secrets import read_secret

    if storage.type == "local":
        return LocalStore(storage.path, name=storage.name)
    if storage.type == "s3":
        access = read_secret(storage.access_key_env, None, what=f"storage {storage.name} access key")
        secret = read_secret(storage.secret_key_env, None, what=f"storage {storage.name} secret key")
        return S3Store(storage.bucket, storage.prefix, storage.endpoint_url, storage.region, access, secret,
                       name=storage.name, multipart_mb=storage.multipart_mb)
    raise ConfigError(f"storage {storage.name}: unknown type {storage.type!r}: use local or s3")
