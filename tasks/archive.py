"""The backup repository (docs/repository-format.md is its specification; read it first).

Catalog, manifests, locks, deletion in reverse write order, verification, and export as Odoo's own
backup archive. Everything goes through a ``tasks.storage.Store`` so the same code serves a local
folder and S3.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from odoops import holders
from odoops.errors import (
    BackupNotFound,
    ConfigError,
    IntegrityError,
    LockedError,
    OdoopsError,
    StorageError,
    tool_error_line,
)
from tasks.filestore import IndexEntry, object_key
from tasks.postgres import DumpSet
from tasks.storage import CHUNK, HashingReader, Store

FORMAT_NAME = "odoops-backup-repository"
FORMAT_VERSION = 1
BACKUP_FORMAT = 2  # the newest manifest ``odoops.format`` this version can restore (2: database in parts)
LOCK_HEARTBEAT_SECONDS = 60
LOCK_STALE_SECONDS = 15 * 60  # a remote holder silent this long (15 missed heartbeats) is gone
TAKEOVER_STALE_SECONDS = 60
ODOO_MANIFEST_KEYS = ("odoo_dump", "db_name", "version", "version_info", "major_version", "pg_version", "modules")


@dataclass(frozen=True)
class BackupInfo:
    """One complete backup as the catalog lists it."""

    id: str
    environment: str
    kind: str
    created_at: datetime
    size: int
    db_name: str
    odoo_version: str | None
    pinned: bool
    verification: str  # "unverified", "verified", "drilled", "failed"
    verified_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "environment": self.environment, "kind": self.kind,
                "created_at": self.created_at.isoformat(), "size": self.size, "db_name": self.db_name,
                "odoo_version": self.odoo_version, "pinned": self.pinned, "verification": self.verification,
                "verified_at": self.verified_at}


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_backup_id(environment: str, at: datetime | None = None) -> str:
    at = at or now_utc()
    return f"{environment}-{at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def backup_key(backup_id: str, part: str) -> str:
    if "/" in backup_id or backup_id.startswith("."):
        raise BackupNotFound(f"invalid backup id {backup_id!r}: copy it from 'odoops backups list'")
    return f"backups/{backup_id}/{part}"


class Repository:
    """A backup repository inside one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------ identity

    def ensure_initialized(self) -> dict[str, Any]:
        """Create config.json on first use; refuse a repository of a newer format."""
        if self.store.exists("config.json"):
            config = json.loads(self.store.get_bytes("config.json"))
            if config.get("format") != FORMAT_NAME:
                raise ConfigError(f"{self.store.describe()} is not an odoops backup repository: "
                                  "point the storage at an empty folder or an existing repository")
            if int(config.get("version", 0)) > FORMAT_VERSION:
                raise ConfigError(f"repository {self.store.describe()} has format version {config['version']}, "
                                  f"this odoops reads up to {FORMAT_VERSION}: upgrade odoops")
            return config
        config = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "id": str(uuid.uuid4()),
                  "created_at": now_utc().isoformat(timespec="seconds")}
        self.store.create_exclusive("config.json", json.dumps(config, indent=1).encode())
        return json.loads(self.store.get_bytes("config.json"))

    # ------------------------------------------------------------ catalog

    def _backup_ids(self) -> tuple[set[str], set[str]]:
        """(complete ids, every id that has a folder)."""
        complete, seen = set(), set()
        for key in self.store.list("backups/"):
            parts = key.split("/")
            if len(parts) == 3:
                seen.add(parts[1])
                if parts[2] == "manifest.json":
                    complete.add(parts[1])
        return complete, seen

    def manifest(self, backup_id: str) -> dict[str, Any]:
        key = backup_key(backup_id, "manifest.json")
        if not self.store.exists(key):
            raise BackupNotFound(f"no complete backup {backup_id!r} in {self.store.describe()}: "
                                 "see 'odoops backups list' for the ids")
        return json.loads(self.store.get_bytes(key))

    def filestore_index(self, backup_id: str) -> list[IndexEntry]:
        data = json.loads(self.store.get_bytes(backup_key(backup_id, "filestore.json")))
        return [IndexEntry(*row) for row in data["files"]]

    def verification(self, backup_id: str) -> dict[str, Any] | None:
        key = backup_key(backup_id, "verification.json")
        return json.loads(self.store.get_bytes(key)) if self.store.exists(key) else None

    def record_verification(self, backup_id: str, kind: str, ok: bool, details: dict[str, Any]) -> None:
        record = {"kind": kind, "ok": ok, "at": now_utc().isoformat(timespec="seconds"), **details}
        self.store.put_bytes(backup_key(backup_id, "verification.json"), json.dumps(record, indent=1).encode())

    def is_pinned(self, backup_id: str) -> bool:
        return self.store.exists(backup_key(backup_id, "pinned"))

    def pin(self, backup_id: str, who: str, pinned: bool = True) -> None:
        self.manifest(backup_id)  # must exist
        if pinned:
            record = {"by": who, "at": now_utc().isoformat(timespec="seconds")}
            self.store.put_bytes(backup_key(backup_id, "pinned"), json.dumps(record).encode())
        else:
            self.store.delete(backup_key(backup_id, "pinned"))

    def info(self, backup_id: str, manifest: dict[str, Any] | None = None) -> BackupInfo:
        manifest = manifest or self.manifest(backup_id)
        meta = manifest["odoops"]
        verification = self.verification(backup_id)
        if verification is None:
            state, at = "unverified", None
        else:
            state = ("drilled" if verification["kind"] == "drill" else "verified") if verification["ok"] else "failed"
            at = verification["at"]
        size = sum(p["size"] for p in meta["parts"].values()) + meta["filestore"]["bytes"]
        return BackupInfo(id=backup_id, environment=meta["environment"], kind=meta["kind"],
                          created_at=datetime.fromisoformat(meta["created_at"]), size=size,
                          db_name=manifest.get("db_name", ""), odoo_version=manifest.get("version"),
                          pinned=self.is_pinned(backup_id), verification=state, verified_at=at)

    def list_backups(self, environment: str | None = None) -> list[BackupInfo]:
        """Complete backups, oldest first. Incomplete ones are never listed."""
        complete, _ = self._backup_ids()
        result = []
        for backup_id in complete:
            if environment and not backup_id.startswith(f"{environment}-"):
                continue
            info = self.info(backup_id)
            if environment is None or info.environment == environment:
                result.append(info)
        return sorted(result, key=lambda b: (b.created_at, b.id))

    def incomplete_backups(self) -> list[str]:
        complete, seen = self._backup_ids()
        return sorted(seen - complete)

    def latest(self, environment: str) -> BackupInfo | None:
        backups = self.list_backups(environment)
        return backups[-1] if backups else None

    def known_objects(self) -> set[str]:
        return {key.rsplit("/", 1)[1] for key in self.store.list("objects/")}

    # ------------------------------------------------------------ writing a backup

    def write_json(self, backup_id: str, part: str, data: Any) -> dict[str, Any]:
        size, sha = self.store.put_bytes(backup_key(backup_id, part), json.dumps(data, indent=1).encode())
        return {"size": size, "sha256": sha}

    def write_index(self, backup_id: str, entries: list[IndexEntry]) -> dict[str, Any]:
        return self.write_json(backup_id, "filestore.json", {"version": 1, "files": [e.as_list() for e in entries]})

    def commit(self, backup_id: str, manifest: dict[str, Any]) -> None:
        """Write the manifest: the backup exists from this instant on."""
        self.write_json(backup_id, "manifest.json", manifest)

    # ------------------------------------------------------------ deleting

    def delete_backup(self, backup_id: str) -> None:
        """Reverse write order: manifest (the backup ceases to exist), index, parts, markers."""
        prefix = f"backups/{backup_id}/"
        keys = list(self.store.list(prefix))
        order = {"manifest.json": 0, "filestore.json": 1}
        for key in sorted(keys, key=lambda k: order.get(k.rsplit("/", 1)[1], 2)):
            self.store.delete(key)

    def referenced_objects(self) -> set[str]:
        complete, _ = self._backup_ids()
        refs: set[str] = set()
        for backup_id in complete:
            refs.update(e.sha256 for e in self.filestore_index(backup_id))
        return refs

    def collect_garbage(self, apply: bool) -> tuple[int, int]:
        """Delete objects no complete backup references; returns (count, bytes)."""
        refs = self.referenced_objects()
        count = size = 0
        for key in list(self.store.list("objects/")):
            if key.rsplit("/", 1)[1] not in refs:
                count += 1
                size += self.store.size(key)
                if apply:
                    self.store.delete(key)
        return count, size

    # ------------------------------------------------------------ locks

    def _is_stale(self, record: dict[str, Any], silent_for: float = LOCK_STALE_SECONDS) -> bool:
        record = {"heartbeat": record.get("time"), **record}  # records older than heartbeats
        return holders.liveness(record, silent_for).dead

    def _read_lock(self, key: str) -> tuple[dict[str, Any], bytes] | None:
        try:
            raw = self.store.get_bytes(key)
            return json.loads(raw), raw
        except (StorageError, ValueError):
            return None

    def _take_over(self, key: str, stale: bytes) -> None:
        """Break a stale lock so that of two takers only one deletes it (docs/repository-format.md, Locks)."""
        marker = f"locks/takeover-{hashlib.sha256(stale).hexdigest()[:16]}.json"
        if not self.store.create_exclusive(marker, json.dumps(holders.me()).encode()):
            found = self._read_lock(marker)
            if found is not None and self._is_stale(found[0], TAKEOVER_STALE_SECONDS):
                self.store.delete(marker)
            return
        try:
            current = self._read_lock(key)
            if current is not None and current[1] == stale:
                self.store.delete(key)
        finally:
            self.store.delete(marker)

    def _acquire(self, key: str, operation: str, wait: float) -> bytes:
        deadline = time.monotonic() + wait
        while True:
            record = json.dumps(holders.me(operation=operation, time=time.time())).encode()
            if self.store.create_exclusive(key, record):
                return record
            found = self._read_lock(key)
            if found is not None and self._is_stale(found[0]):
                self._take_over(key, found[1])
                continue
            if time.monotonic() >= deadline:
                who = holders.describe(found[0]) if found else "another run"
                raise LockedError(f"{key} is held ({who}): wait for it to finish; a lock whose process is gone is "
                                  "taken over by the next run")
            time.sleep(0.5)

    @contextmanager
    def _kept_alive(self, held: dict[str, bytes]) -> Iterator[None]:
        """Rewrite each held lock's heartbeat every minute, so other hosts can tell a live holder."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(LOCK_HEARTBEAT_SECONDS):
                for key, raw in list(held.items()):
                    try:
                        current = self._read_lock(key)
                        if current is None or current[1] != raw:
                            continue  # taken over: never overwrite another holder's lock
                        record = {**current[0], "heartbeat": time.time()}
                        held[key] = json.dumps(record).encode()
                        self.store.put_bytes(key, held[key])
                    except OdoopsError:
                        continue  # the next beat tries again

        thread = threading.Thread(target=beat, daemon=True, name="odoops-lock-heartbeat")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    @contextmanager
    def environment_lock(self, environment: str, operation: str, wait: float = 0) -> Iterator[None]:
        """One backup/restore per environment at a time, plus a shared hold that keeps prune away."""
        env_key = f"locks/env-{environment}.json"
        shared_key = f"locks/shared-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}.json"
        held = {env_key: self._acquire(env_key, operation, wait)}
        try:
            held[shared_key] = self._acquire(shared_key, operation, 0)
            try:
                exclusive = self._read_lock("locks/repository.json")
                if exclusive is not None and not self._is_stale(exclusive[0]):
                    raise LockedError("the repository is being pruned: run the backup again in a minute")
                with self._kept_alive(held):
                    yield
            finally:
                self.store.delete(shared_key)
        finally:
            self.store.delete(env_key)

    @contextmanager
    def exclusive_lock(self, operation: str) -> Iterator[None]:
        """Held by prune: no backup may be adding objects meanwhile."""
        key = "locks/repository.json"
        held = {key: self._acquire(key, operation, 0)}
        try:
            for lock_key in self.store.list("locks/"):
                if lock_key.rsplit("/", 1)[1].startswith("shared-"):
                    found = self._read_lock(lock_key)
                    if found is not None and self._is_stale(found[0]):
                        self._take_over(lock_key, found[1])
                    elif found is not None:
                        raise LockedError(f"a {holders.describe(found[0])} is running: prune again when it has "
                                          "finished")
            with self._kept_alive(held):
                yield
        finally:
            self.store.delete(key)

    # ------------------------------------------------------------ verification

    def verify(self, backup_id: str, progress: Callable[[int], None] | None = None) -> list[str]:
        """Re-read every part and every object; problems found (empty = intact)."""
        manifest = self.manifest(backup_id)
        problems = []
        for part, expected in manifest["odoops"]["parts"].items():
            try:
                with self.store.open(backup_key(backup_id, part)) as f:
                    reader = HashingReader(f)
                    while chunk := reader.read(CHUNK):
                        if progress:
                            progress(len(chunk))
            except StorageError:
                problems.append(f"{part}: missing")
                continue
            if reader.sha256.hexdigest() != expected["sha256"] or reader.size != expected["size"]:
                problems.append(f"{part}: sha256 mismatch")
        if any(p.startswith("filestore.json") for p in problems):
            return problems
        checked: dict[str, bool] = {}
        lock = threading.Lock()

        def check(entry: IndexEntry) -> str | None:
            with lock:
                if entry.sha256 in checked:
                    return None if checked[entry.sha256] else f"{entry.relpath}: object damaged or missing"
            try:
                with self.store.open(object_key(entry.sha256)) as f:
                    reader = HashingReader(f)
                    while chunk := reader.read(CHUNK):
                        if progress:
                            progress(len(chunk))
                ok = reader.sha256.hexdigest() == entry.sha256 and reader.size == entry.size
            except StorageError:
                ok = False
            with lock:
                checked[entry.sha256] = ok
            return None if ok else f"{entry.relpath}: object damaged or missing"

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=4) as pool:
            problems.extend(p for p in pool.map(check, self.filestore_index(backup_id)) if p)
        return problems

    # ------------------------------------------------------------ export as Odoo's archive

    @contextmanager
    def database_dumps(self, backup_id: str) -> Iterator[DumpSet]:
        """The backup's database archives as local files (downloaded to a temporary folder for S3)."""
        meta = self.manifest(backup_id)["odoops"]
        if meta.get("format", 1) > BACKUP_FORMAT:
            raise ConfigError(f"backup {backup_id} was written by a newer odoops (backup format {meta['format']}, "
                              f"this version reads up to {BACKUP_FORMAT}): upgrade odoops to restore it")
        apart = meta["database"].get("apart", [])
        parts = ["database.dump", *(t["part"] for t in apart)]
        with tempfile.TemporaryDirectory(prefix="odoops-dump-") as tmp:
            paths = []
            for n, part in enumerate(parts):
                key = backup_key(backup_id, part)
                local = self.store.local_path(key)
                if local is None:
                    local = Path(tmp) / f"{n}.dump"
                    with self.store.open(key) as src, open(local, "wb") as out:
                        while chunk := src.read(CHUNK):
                            out.write(chunk)
                elif not local.exists():
                    raise IntegrityError(f"{part} of {backup_id} is missing: the backup is damaged")
                paths.append(local)
            yield DumpSet(paths[0], tuple((t["schema"], t["table"], path) for t, path in zip(apart, paths[1:],
                                                                                             strict=True)))

    def export_odoo_zip(self, backup_id: str, out: BinaryIO, progress: Callable[[int], None] | None = None) -> None:
        """Write Odoo's standard backup archive: dump.sql (plain, --no-owner), manifest.json, filestore/.

        Streams: dump.sql comes from pg_restore's stdout and filestore files straight from the objects.
        """
        manifest = self.manifest(backup_id)
        index = self.filestore_index(backup_id)
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            with self.database_dumps(backup_id) as dumps, \
                    zf.open(_zipinfo("dump.sql"), "w", force_zip64=True) as sql_entry:
                for stage in dumps.stages():
                    for tail in stage:  # one after the other: plain SQL in restore order
                        _pg_restore_to(["pg_restore", "--no-owner", "--file=-", *tail], sql_entry, backup_id, progress)
            odoo_manifest = {k: manifest[k] for k in ODOO_MANIFEST_KEYS if k in manifest}
            zf.writestr(_zipinfo("manifest.json"), json.dumps(odoo_manifest, indent=4))
            for entry in index:
                with self.store.open(object_key(entry.sha256)) as src, \
                        zf.open(_zipinfo(f"filestore/{entry.relpath}"), "w", force_zip64=entry.size > 2**31) as dst:
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)
                if progress:
                    progress(entry.size)


def _pg_restore_to(args: list[str], out: BinaryIO, backup_id: str, progress: Callable[[int], None] | None) -> None:
    """Stream pg_restore's plain SQL into ``out``; its own error line when it fails."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    try:
        while chunk := proc.stdout.read(CHUNK):
            out.write(chunk)
            if progress:
                progress(len(chunk))
    except BaseException:
        proc.kill()
        raise
    finally:
        code = proc.wait()
        reader.join()
    if code != 0:
        raise IntegrityError(f"pg_restore could not read the dump of {backup_id}: {tool_error_line(b''.join(errors))}")


def _zipinfo(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o100644 << 16
    return info


def odoo_manifest(db_name: str, modules: dict[str, str], server_version_num: int) -> dict[str, Any]:
    """Odoo's own manifest keys, computed the way Odoo's database manager does."""
    base = modules.get("base", "")
    parts = base.split(".")
    major = ".".join(parts[:2]) if len(parts) >= 2 else None
    version_info: list[Any] = []
    if major:
        head, _, minor = major.rpartition(".")
        number = head.split("~")[-1]
        version_info = [int(number) if number.isdigit() else number, int(minor) if minor.isdigit() else minor,
                        0, "final", 0, ""]
    pg_major, pg_minor = divmod(server_version_num / 100, 100)
    return {"odoo_dump": "1", "db_name": db_name, "version": major, "version_info": version_info,
            "major_version": major, "pg_version": f"{int(pg_major)}.{int(pg_minor)}", "modules": modules}


def open_repository(storage: Any) -> Repository:
    """The repository in one storage of the inventory, created on first use."""
    from tasks.storage import open_store

    repo = Repository(open_store(storage))
    repo.ensure_initialized()
    return repo
