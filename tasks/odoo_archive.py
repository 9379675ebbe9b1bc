"""Restore sources: a catalog backup, or an Odoo / Odoo.sh backup file (``.zip`` or ``.dump``), local or
``s3://bucket/key``.

Archives come from outside and are read defensively: a zip is checked before anything is written
(corrupt archive, entries with ``..`` or absolute paths, links, anything but ``dump.sql``,
``manifest.json`` and ``filestore/…``), and only regular files are ever extracted, each below its
target folder. Like Odoo's own restore, the manifest is informative: the dump is what is restored.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import stat
import subprocess
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from odoops.errors import ConfigError, DiskFull, OdoopsError, UnsafeArchive, tool_error_line
from tasks.postgres import ConnInfo, tool_failure
from tasks.storage import CHUNK

CUSTOM_DUMP_MAGIC = b"PGDMP"


@dataclass
class RestoreSource:
    """What a restore reads: a description, the Odoo manifest (if any), and how to load each part."""

    description: str
    kind: str  # "catalog", "odoo-zip", "dump"
    manifest: dict[str, Any] | None
    local_path: Path | None = None
    backup_id: str | None = None
    row_counts: dict[str, int] | None = None
    missing_files: list[str] = field(default_factory=list)

    @property
    def major_version(self) -> str | None:
        return (self.manifest or {}).get("major_version") or (self.manifest or {}).get("version")

    @property
    def has_filestore(self) -> bool:
        return self.kind != "dump"


# ---------------------------------------------------------------- reading sources


@contextmanager
def fetched(spec: str) -> Iterator[Path]:
    """A local path for ``spec``: the file itself, or an S3 object downloaded to a temporary file."""
    if spec.startswith("s3://"):
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = spec[5:].partition("/")
        if not bucket or not key:
            raise ConfigError(f"{spec} is not an S3 URL: write s3://bucket/path/to/backup.zip")
        import os

        with tempfile.TemporaryDirectory(prefix="odoops-src-") as tmp:
            path = Path(tmp) / PurePosixPath(key).name
            try:
                boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None).download_file(
                    bucket, key, str(path))
            except (BotoCoreError, ClientError) as exc:
                raise OdoopsError(f"cannot download {spec}: {type(exc).__name__}: check the URL and the S3 "
                                  "credentials (AWS_ENDPOINT_URL_S3 for a non-AWS endpoint)") from None
            yield path
        return
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"restore source {spec} not found: give a backup id from 'odoops backups list', "
                          "a .zip or .dump file, or an s3:// URL")
    yield path


def check_zip(path: Path) -> zipfile.ZipFile:
    """Open an Odoo zip after refusing anything unsafe or damaged (nothing is written yet)."""
    # No full testzip() pass here (it decompresses the whole archive, ~10% of a restore): every entry's
    # CRC is checked as it is read during the restore, and a bad one discards the scratch copy.
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError):
        raise UnsafeArchive(f"{path.name} is not a readable zip (corrupt or truncated): download it again") from None
    names = set()
    for info in zf.infolist():
        name = info.filename
        parts = PurePosixPath(name).parts
        mode = info.external_attr >> 16
        if name.startswith("/") or "\\" in name or ".." in parts or (len(name) > 1 and name[1] == ":"):
            raise UnsafeArchive(f"{path.name} has an entry outside its folder ({name!r}): refusing to restore it")
        if stat.S_ISLNK(mode):
            raise UnsafeArchive(f"{path.name} holds a link ({name!r}): refusing to restore it")
        if info.is_dir():
            continue
        if name not in ("dump.sql", "manifest.json") and not name.startswith("filestore/"):
            raise UnsafeArchive(f"{path.name} has an unexpected entry {name!r}: an Odoo backup holds only "
                                "dump.sql, manifest.json and filestore/")
        names.add(name)
    if "dump.sql" not in names:
        raise UnsafeArchive(f"{path.name} has no dump.sql: it is not an Odoo backup archive (download the "
                            "'zip (includes filestore)' format)")
    return zf


def check_dump(path: Path) -> None:
    """A custom-format dump must be complete: pg_restore --list reads its whole table of contents."""
    with open(path, "rb") as f:
        if f.read(5) != CUSTOM_DUMP_MAGIC:
            raise UnsafeArchive(f"{path.name} is not a PostgreSQL custom-format dump: use Odoo's 'pg_dump custom "
                                "format' backup or a .zip")
    result = subprocess.run(["pg_restore", "--list", str(path)], capture_output=True)
    if result.returncode != 0:
        raise UnsafeArchive(f"{path.name} is damaged or truncated: pg_restore says "
                            f"{tool_error_line(result.stderr)!r}: download it again")


def open_file_source(path: Path) -> RestoreSource:
    if path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        zf = check_zip(path)
        manifest = json.loads(zf.read("manifest.json")) if "manifest.json" in zf.namelist() else None
        return RestoreSource(description=path.name, kind="odoo-zip", manifest=manifest, local_path=path)
    check_dump(path)
    return RestoreSource(description=path.name, kind="dump", manifest=None, local_path=path)


# ---------------------------------------------------------------- loading parts


def load_plain_sql_from_zip(zf: zipfile.ZipFile, conninfo: ConnInfo,
                            progress: Callable[[int], None] | None = None) -> None:
    """Stream dump.sql into psql (as Odoo's restore does), without extracting it to disk."""
    proc = subprocess.Popen(["psql", "--quiet", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "--dbname", conninfo.dbname],
                            env=conninfo.env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    errors: list[bytes] = []
    drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    drain.start()
    try:
        with zf.open("dump.sql") as src:
            while chunk := src.read(4 * CHUNK):
                proc.stdin.write(chunk)
                if progress:
                    progress(len(chunk))
        proc.stdin.close()
    except BrokenPipeError:
        pass
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        proc.kill()
        proc.wait()
        raise UnsafeArchive(f"dump.sql could not be read from the archive ({type(exc).__name__}): it is damaged") from None
    code = proc.wait()
    drain.join()
    if code != 0:
        raise tool_failure("psql", b"".join(errors))


def extract_filestore(zf: zipfile.ZipFile, target: Path, progress: Callable[[int], None] | None = None) -> dict[str, str]:
    """Extract ``filestore/*`` regular files below ``target``; returns relpath -> SHA-1 of what was written."""
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    sha1s: dict[str, str] = {}
    for info in zf.infolist():
        if info.is_dir() or not info.filename.startswith("filestore/"):
            continue
        rel = info.filename[len("filestore/"):]
        dest = (target / rel).resolve()
        if root not in dest.parents:
            raise UnsafeArchive(f"entry {info.filename!r} would be written outside the filestore: refusing")
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1()  # noqa: S324 - Odoo's filestore names and checksums are SHA-1
        try:
            with zf.open(info) as src, open(dest, "wb") as out:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFull(f"no space left on device writing the filestore in {target.parent}: free space "
                               "and restore again (the target was not touched)") from None
            raise OdoopsError(f"cannot write {dest}: {exc.strerror}") from None
        except (zipfile.BadZipFile, EOFError, zlib.error):
            raise UnsafeArchive(f"{info.filename} could not be read from the archive (bad CRC or data): it is "
                                "damaged, download it again (the target was not touched)") from None
        sha1s[rel] = digest.hexdigest()
        if progress:
            progress(info.file_size)
    return sha1s


def copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=False)
