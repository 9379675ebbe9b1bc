"""Odoo filestores: storing their files content-addressed, and writing them back.

A filestore file is stored once per repository, as ``objects/<sha256>``, whichever environment or backup
it came from: Odoo's own names are SHA-1 of the content, but odoops checks content itself and does not
trust names. A file whose path, size and mtime are unchanged since the environment's previous backup is
not read again (its object is known to exist): that is what makes a second backup cheap.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from odoops.errors import DiskFull, IntegrityError, OdoopsError, StorageError
from odoops.platforms.base import FilestoreEntry, Platform
from tasks.storage import CHUNK, LocalStore, Store, fsync_dir

Progress = Callable[[int], None]  # called with bytes processed


def object_key(sha256: str) -> str:
    return f"objects/{sha256[:2]}/{sha256}"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    relpath: str
    size: int
    sha256: str
    mtime_ns: int

    def as_list(self) -> list:
        return [self.relpath, self.size, self.sha256, self.mtime_ns]


@dataclass
class FilestoreResult:
    entries: list[IndexEntry]
    new_objects: int
    new_bytes: int
    read_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)


def _hash_stream(stream) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _store_local(platform: Platform, store: LocalStore, entry: FilestoreEntry, known: set[str],
                 lock: threading.Lock) -> tuple[str, int, bool]:
    """Copy while hashing into the store's tmp/, then rename to the object name if new (one read)."""
    return _store_local_opened(lambda: platform.open_filestore_file(entry.relpath), store, entry, known, lock)


def _store_local_stream(src: BinaryIO, store: LocalStore, entry: FilestoreEntry, known: set[str],
                        lock: threading.Lock) -> tuple[str, int, bool]:
    from contextlib import nullcontext

    return _store_local_opened(lambda: nullcontext(src), store, entry, known, lock)


def _store_local_opened(opener: Callable[[], Any], store: LocalStore, entry: FilestoreEntry, known: set[str],
                        lock: threading.Lock) -> tuple[str, int, bool]:
    import uuid

    tmp_dir = store.root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{uuid.uuid4().hex}.obj"
    digest = hashlib.sha256()
    size = 0
    try:
        with opener() as src, open(tmp, "wb") as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        with lock:
            is_new = sha not in known
            known.add(sha)
        target = store.root / object_key(sha)
        if is_new and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        else:
            is_new = False
            tmp.unlink()
        return sha, size, is_new
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == 28:
            raise DiskFull(f"no space left on device while storing filestore file {entry.relpath}: "
                           "free space or use another storage") from None
        raise StorageError(f"cannot store filestore file {entry.relpath}: {exc.strerror}") from None


def _store_remote(platform: Platform, store: Store, entry: FilestoreEntry, known: set[str],
                  lock: threading.Lock) -> tuple[str, int, bool]:
    """Hash first (objects are named by content), upload only if the repository lacks it."""
    with platform.open_filestore_file(entry.relpath) as src:
        sha, size = _hash_stream(src)
    with lock:
        is_new = sha not in known
        known.add(sha)
    if is_new:
        with platform.open_filestore_file(entry.relpath) as src:
            stored_size, stored_sha = store.put_stream(object_key(sha), src)
        if stored_sha != sha:
            raise IntegrityError(f"filestore file {entry.relpath} changed while being backed up: run the backup again")
    return sha, size, is_new


def store_filestore(platform: Platform, store: Store, known_objects: set[str],
                    previous: dict[str, IndexEntry] | None = None, workers: int = 4,
                    progress: Progress | None = None) -> FilestoreResult:
    """Store every filestore file not already in the repository; returns the index of this filestore."""
    previous = previous or {}
    lock = threading.Lock()
    entries: list[IndexEntry] = []
    todo: list[FilestoreEntry] = []
    for entry in platform.list_filestore():
        before = previous.get(entry.relpath)
        if (before is not None and before.size == entry.size and before.mtime_ns == entry.mtime_ns
                and before.sha256 in known_objects):
            entries.append(IndexEntry(entry.relpath, entry.size, before.sha256, entry.mtime_ns))
            if progress:
                progress(entry.size)
        else:
            todo.append(entry)
    store_one = _store_local if isinstance(store, LocalStore) else _store_remote
    new_objects = new_bytes = read_bytes = 0
    if platform.bulk_filestore_reads and todo:
        result = _store_in_one_read(platform, store, todo, known_objects, lock, progress)
        result.entries.extend(entries)
        result.entries.sort(key=lambda e: e.relpath)
        return result

    def work(entry: FilestoreEntry) -> tuple[FilestoreEntry, str, int, bool]:
        sha, size, is_new = store_one(platform, store, entry, known_objects, lock)
        if progress:
            progress(size)
        return entry, sha, size, is_new

    touched: set[str] = set()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for entry, sha, size, is_new in _bounded_map(pool, work, todo, in_flight=workers * 16):
            entries.append(IndexEntry(entry.relpath, size, sha, entry.mtime_ns))
            read_bytes += size
            if is_new:
                new_objects += 1
                new_bytes += size
                touched.add(sha[:2])
    if isinstance(store, LocalStore):
        for prefix in touched:  # the renames are durable before the index refers to them
            fsync_dir(store.root / "objects" / prefix)
    entries.sort(key=lambda e: e.relpath)
    return FilestoreResult(entries, new_objects, new_bytes, read_bytes)


def _store_remote_stream(src: BinaryIO, store: Store, entry: FilestoreEntry, known: set[str],
                         lock: threading.Lock) -> tuple[str, int, bool]:
    """A stream that can be read once: spooled (memory, then a temp file) while hashing, uploaded if new."""
    import tempfile

    with tempfile.SpooledTemporaryFile(max_size=CHUNK * 8) as spool:
        digest = hashlib.sha256()
        size = 0
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            spool.write(chunk)
        sha = digest.hexdigest()
        with lock:
            is_new = sha not in known
            known.add(sha)
        if is_new:
            spool.seek(0)
            _, stored_sha = store.put_stream(object_key(sha), spool)  # type: ignore[arg-type]
            if stored_sha != sha:
                raise IntegrityError(f"filestore file {entry.relpath} was damaged while being stored: run the backup again")
    return sha, size, is_new


def _store_in_one_read(platform: Platform, store: Store, todo: list[FilestoreEntry], known: set[str],
                       lock: threading.Lock, progress: Progress | None) -> FilestoreResult:
    """The files to store, read with one ``read_filestore_files`` call (platforms where each open is a round
    trip): sequential, since the platform's stream is."""
    wanted = {entry.relpath: entry for entry in todo}
    store_stream = _store_local_stream if isinstance(store, LocalStore) else _store_remote_stream
    result = FilestoreResult([], 0, 0, 0)
    touched: set[str] = set()
    for relpath, src in platform.read_filestore_files(list(wanted)):
        entry = wanted.pop(relpath)
        sha, size, is_new = store_stream(src, store, entry, known, lock)  # type: ignore[arg-type]
        result.entries.append(IndexEntry(entry.relpath, size, sha, entry.mtime_ns))
        result.read_bytes += size
        if is_new:
            result.new_objects += 1
            result.new_bytes += size
            touched.add(sha[:2])
        if progress:
            progress(size)
    if wanted:
        first = sorted(wanted)[0]
        raise IntegrityError(f"filestore file {first} disappeared while being backed up ({len(wanted)} files): "
                             "run the backup again")
    if isinstance(store, LocalStore):
        for prefix in touched:
            fsync_dir(store.root / "objects" / prefix)
    return result


def _bounded_map(pool: ThreadPoolExecutor, fn, items: list, in_flight: int):
    """pool.map with at most ``in_flight`` jobs queued, so memory does not grow with the filestore."""
    from collections import deque

    queue: deque = deque()
    for item in items:
        queue.append(pool.submit(fn, item))
        if len(queue) >= in_flight:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()


def missing_attachment_files(store_fnames: Iterable[str], entries: Iterable[IndexEntry]) -> list[str]:
    """Attachments whose ``store_fname`` has no file in the filestore (sorted)."""
    present = {e.relpath for e in entries}
    return sorted({name for name in store_fnames if name not in present})


def materialize(store: Store, entries: Iterable[IndexEntry], target: Path, workers: int = 4,
                progress: Progress | None = None) -> dict[str, str]:
    """Write the files of an index into ``target``, checking each sha256; returns relpath -> SHA-1.

    One read per file computes both digests: sha256 proves the object is intact, SHA-1 is what Odoo's
    ``ir_attachment.checksum`` holds. Objects are copied, never moved or linked: the backup stays
    intact whatever happens to the copy.
    """
    target.mkdir(parents=True, exist_ok=True)
    entries = list(entries)

    def write(entry: IndexEntry) -> tuple[str, str]:
        if ".." in Path(entry.relpath).parts or Path(entry.relpath).is_absolute():
            raise IntegrityError(f"filestore index entry {entry.relpath!r} escapes the filestore: the backup is corrupt")
        dest = target / entry.relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        sha256, sha1 = hashlib.sha256(), hashlib.sha1()  # noqa: S324 - SHA-1 is Odoo's checksum
        try:
            with store.open(object_key(entry.sha256)) as src, open(dest, "wb") as out:
                while chunk := src.read(CHUNK):
                    sha256.update(chunk)
                    sha1.update(chunk)
                    out.write(chunk)
        except StorageError:
            raise IntegrityError(f"object for {entry.relpath} is missing from the repository: the backup is damaged "
                                 "(run backups verify)") from None
        except OSError as exc:
            if exc.errno == 28:
                raise DiskFull(f"no space left on device writing {dest.parent}: free space and retry") from None
            raise OdoopsError(f"cannot write {dest}: {exc.strerror}") from None
        if sha256.hexdigest() != entry.sha256:
            raise IntegrityError(f"object for {entry.relpath} does not match its sha256: the backup is damaged")
        if progress:
            progress(entry.size)
        return entry.relpath, sha1.hexdigest()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(write, entries))


def sha1_of_file(path: Path) -> str:
    digest = hashlib.sha1()  # noqa: S324 - Odoo names filestore files by SHA-1; this checks them
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_attachments(filestore: Path, attachments: Iterable[tuple[str, str | None]],
                      sha1s: dict[str, str] | None = None) -> list[str]:
    """Problems with attachments' files: missing, or content not matching ``ir_attachment.checksum``.

    ``sha1s`` (relpath -> SHA-1, computed while the files were written) saves reading them again.
    """
    problems = []
    for store_fname, checksum in attachments:
        path = filestore / store_fname
        if (store_fname not in sha1s) if sha1s is not None else not path.is_file():
            problems.append(f"missing {store_fname}")
        elif checksum and (sha1s[store_fname] if sha1s is not None else sha1_of_file(path)) != checksum:
            problems.append(f"checksum mismatch {store_fname}")
    return problems
