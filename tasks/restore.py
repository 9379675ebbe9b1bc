"""Atomic restores: everything is built beside the target, then swapped in by renames.

The database is restored into ``<target>__odoops_restore`` and the filestore into a hidden sibling
folder of the target's; only when both are complete and checked are they swapped in: the current
database is renamed to ``<target>__odoops_prev_<time>`` and its filestore to a hidden ``…odoops-prev-<time>``
folder (the pre-restore snapshot, kept for ``restore undo``), the new ones renamed into place. A failure
during the swap renames back what was already renamed. odoops marks every database it creates with a
``COMMENT ON DATABASE 'odoops:…'`` and never touches one with a reserved name that lacks its mark.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from odoops.errors import RefusedError
from odoops.platforms.base import LOCAL_FOLDERS, FilestoreFolders
from tasks.postgres import ConnInfo, connect

MARK = "odoops:"
SNAPSHOTS_KEPT = 2  # pre-restore snapshots kept per environment (older ones are dropped by the next restore)


def owned_name(target: str, tag: str) -> str:
    """A database name reserved for odoops next to ``target`` (PostgreSQL names are at most 63 bytes)."""
    name = f"{target}__odoops_{tag}"
    if len(name.encode()) <= 63:
        return name
    short = hashlib.sha1(target.encode()).hexdigest()[:8]  # noqa: S324 - a name, not a security hash
    return f"{target.encode()[:63 - len(tag) - 18].decode(errors='ignore')}_{short}__odoops_{tag}"


SCRATCH_MARKER = ".odoops-restore"  # in a restore's temporary folder: odoops made it, and may remove it


def sibling_folder(target_fs: Path, tag: str) -> Path:
    return target_fs.parent / f".{target_fs.name}.odoops-{tag}"


def database_mark(conn, dbname: str) -> str | None:
    row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                       (dbname,)).fetchone()
    return None if row is None else (row[0] or "")


def set_database_mark(conn, dbname: str, data: dict[str, Any] | None) -> None:
    value = None if data is None else MARK + json.dumps(data, sort_keys=True)
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(dbname), sql.Literal(value)))


def terminate_sessions(conn, dbname: str) -> None:
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                 "pg_backend_pid()", (dbname,))


def rename_database(conn, old: str, new: str, attempts: int = 10) -> None:
    """Rename a database, pushing out sessions (Odoo may reconnect if it could not be stopped)."""
    for attempt in range(attempts):
        terminate_sessions(conn, old)
        try:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))
            return
        except psycopg.Error:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)


def prepare_scratch(server: ConnInfo, target_db: str, target_fs: str, source: str,
                    folders: FilestoreFolders = LOCAL_FOLDERS) -> tuple[str, str, Path]:
    """Create the empty temporary database and folder; clean what an interrupted restore left.

    Returns the temporary database, the temporary filestore folder beside the target (as ``folders``
    addresses it) and the local folder the files are loaded into: that same folder where this machine sees
    it, else a local staging folder that :func:`place_scratch` moves there before the swap.
    """
    temp_db, temp_fs = owned_name(target_db, "restore"), str(sibling_folder(Path(target_fs), "restore"))
    with connect(server.with_dbname("postgres")) as conn:
        comment = database_mark(conn, temp_db)
        if comment is not None:
            if not comment.startswith(MARK):
                raise RefusedError(f"database {temp_db!r} exists and odoops did not create it: rename or drop it "
                                   "yourself (odoops never drops a database it does not own)")
            terminate_sessions(conn, temp_db)
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(temp_db)))
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(sql.Identifier(temp_db)))
        set_database_mark(conn, temp_db, {"kind": "restore-in-progress", "target": target_db, "source": source,
                                     "at": datetime.now(UTC).isoformat(timespec="seconds")})
    if folders.exists(temp_fs):
        if not folders.exists(f"{temp_fs}/{SCRATCH_MARKER}"):
            raise RefusedError(f"folder {temp_fs} exists and odoops did not create it: move it away")
        folders.remove(temp_fs)
    if folders.is_local:
        load_dir = Path(temp_fs)
        load_dir.mkdir(parents=True)
    else:
        import tempfile

        load_dir = Path(tempfile.mkdtemp(prefix="odoops-restore-")) / "filestore"
        load_dir.mkdir()
    (load_dir / SCRATCH_MARKER).write_text(source)
    return temp_db, temp_fs, load_dir


def place_scratch(temp_fs: str, load_dir: Path, folders: FilestoreFolders = LOCAL_FOLDERS) -> None:
    """Where this machine does not see the filestore, move the loaded files beside the target now."""
    if not folders.is_local:
        folders.import_tree(load_dir, temp_fs)
        shutil.rmtree(load_dir.parent, ignore_errors=True)


def discard_scratch(server: ConnInfo, temp_db: str, temp_fs: str, folders: FilestoreFolders = LOCAL_FOLDERS,
                    load_dir: Path | None = None) -> None:
    """Drop the temporary database and folder of a restore that did not complete."""
    with connect(server.with_dbname("postgres")) as conn:
        comment = database_mark(conn, temp_db)
        if comment is not None and comment.startswith(MARK):
            terminate_sessions(conn, temp_db)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(temp_db)))
    if folders.exists(f"{temp_fs}/{SCRATCH_MARKER}"):
        folders.remove(temp_fs)
    if load_dir is not None and not folders.is_local:
        shutil.rmtree(load_dir.parent, ignore_errors=True)


@dataclass(frozen=True)
class Snapshot:
    """A pre-restore state kept beside the target: its database and filestore under reserved names."""

    environment: str
    target: str
    database: str
    filestore: str | None
    at: str
    source: str


def swap_in(server: ConnInfo, environment: str, target_db: str, target_fs: str, temp_db: str, temp_fs: str,
            source: str, folders: FilestoreFolders = LOCAL_FOLDERS) -> Snapshot | None:
    """Rename the restored copy into place, keeping the replaced one as a snapshot; all or nothing."""
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
    prev_db, prev_fs = owned_name(target_db, f"prev_{stamp}"), str(sibling_folder(Path(target_fs), f"prev-{stamp}"))
    undo: list = []
    snapshot = None
    folders.unlink(f"{temp_fs}/{SCRATCH_MARKER}")
    with connect(server.with_dbname("postgres")) as conn:
        try:
            had_target = database_mark(conn, target_db) is not None
            if had_target:
                rename_database(conn, target_db, prev_db)
                undo.append(lambda: rename_database(conn, prev_db, target_db))
            rename_database(conn, temp_db, target_db)
            undo.append(lambda: rename_database(conn, target_db, temp_db))
            if folders.exists(target_fs):
                folders.rename(target_fs, prev_fs)
                undo.append(lambda: folders.rename(prev_fs, target_fs))
            folders.makedirs(str(Path(target_fs).parent))
            folders.rename(temp_fs, target_fs)
            undo.append(lambda: folders.rename(target_fs, temp_fs))
        except BaseException:
            for step in reversed(undo):
                step()
            folders.write_text(f"{temp_fs}/{SCRATCH_MARKER}", source)
            raise
        set_database_mark(conn, target_db, None)
        if had_target:
            snapshot = Snapshot(environment, target_db, prev_db, prev_fs if folders.exists(prev_fs) else None,
                                datetime.now(UTC).isoformat(), source)
            set_database_mark(conn, prev_db, {"kind": "pre-restore", **snapshot.__dict__})
    return snapshot


def marked_databases(server: ConnInfo, kind: str, environment: str) -> list[dict[str, Any]]:
    """The marks (without ``kind``) of the databases odoops keeps for ``environment`` as ``kind``, newest first."""
    with connect(server.with_dbname("postgres")) as conn:
        rows = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                            "WHERE shobj_description(oid, 'pg_database') LIKE %s", (MARK + "%",)).fetchall()
    marks = []
    for (comment,) in rows:
        data = json.loads(comment[len(MARK):])
        if data.pop("kind", None) == kind and data.get("environment") == environment:
            marks.append(data)
    return sorted(marks, key=lambda m: m["at"], reverse=True)


def list_snapshots(server: ConnInfo, environment: str) -> list[Snapshot]:
    """This environment's pre-restore snapshots, newest first."""
    return [Snapshot(**mark) for mark in marked_databases(server, "pre-restore", environment)]


class Kept(Protocol):
    """A state kept beside its environment under reserved names (a pre-restore or a rollback snapshot)."""

    database: str
    filestore: str | None


def drop_snapshot(server: ConnInfo, snapshot: Kept, folders: FilestoreFolders = LOCAL_FOLDERS) -> None:
    with connect(server.with_dbname("postgres")) as conn:
        comment = database_mark(conn, snapshot.database)
        if comment is None or not comment.startswith(MARK):
            raise RefusedError(f"database {snapshot.database!r} is not an odoops snapshot: not dropping it")
        terminate_sessions(conn, snapshot.database)
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(snapshot.database)))
    if snapshot.filestore:
        folders.remove(snapshot.filestore)


def expire_snapshots(server: ConnInfo, environment: str, keep: int = SNAPSHOTS_KEPT,
                     folders: FilestoreFolders = LOCAL_FOLDERS) -> list[str]:
    dropped = []
    for snapshot in list_snapshots(server, environment)[keep:]:
        drop_snapshot(server, snapshot, folders)
        dropped.append(snapshot.database)
    return dropped


def undo_restore(server: ConnInfo, environment: str, target_fs: str,
                 folders: FilestoreFolders = LOCAL_FOLDERS) -> Snapshot:
    """Put the newest pre-restore snapshot back; the replaced state becomes a snapshot in its turn."""
    snapshots = list_snapshots(server, environment)
    if not snapshots:
        raise RefusedError(f"environment {environment} has no pre-restore snapshot to go back to")
    last = snapshots[0]
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
    undone_db, undone_fs = owned_name(last.target, f"prev_{stamp}"), str(sibling_folder(Path(target_fs), f"prev-{stamp}"))
    with connect(server.with_dbname("postgres")) as conn:
        steps: list = []
        try:
            rename_database(conn, last.target, undone_db)
            steps.append(lambda: rename_database(conn, undone_db, last.target))
            rename_database(conn, last.database, last.target)
            steps.append(lambda: rename_database(conn, last.target, last.database))
            if folders.exists(target_fs):
                folders.rename(target_fs, undone_fs)
                steps.append(lambda: folders.rename(undone_fs, target_fs))
            if last.filestore:
                folders.rename(last.filestore, target_fs)
        except BaseException:
            for step in reversed(steps):
                step()
            raise
        set_database_mark(conn, last.target, None)
        replaced = Snapshot(environment, last.target, undone_db, undone_fs if folders.exists(undone_fs) else None,
                            datetime.now(UTC).isoformat(), f"undo of restore from {last.source}")
        set_database_mark(conn, undone_db, {"kind": "pre-restore", **replaced.__dict__})
    return last
