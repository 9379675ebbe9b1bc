"""Snapshots for rollback: the exact state of an environment, taken in seconds, put back by renames.

Before a risky change (a module update, an upgrade, a deploy) with Odoo stopped:

- the database is copied with ``CREATE DATABASE <target>__odoops_snap_<time> TEMPLATE <target> STRATEGY
  FILE_COPY``: PostgreSQL copies the data files as they are, so every table's rows (and every byte of them)
  are the same, in seconds for a GB, without dumping anything;
- the filestore is copied as hard links into a hidden sibling folder ``.<db>.odoops-snap-<time>``: Odoo
  never rewrites a filestore file in place (a new content is a new sha1, a new file; garbage collection
  deletes), so a link keeps the old file whatever the change does to the live folder.

Putting it back renames the changed database and folder aside (``…__odoops_failed_<time>``), renames the
snapshot into place, and drops what was set aside once the swap succeeded. Every database odoops
creates carries its ``COMMENT ON DATABASE 'odoops:{…}'`` mark (tasks/restore.py); the snapshot's mark is
also the journal of the change in progress: ``"state": "in-progress"`` until the change is confirmed,
so a run killed half-way is found by the next one (``--resume-rollback``).
"""

from __future__ import annotations

import errno
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from odoops.errors import DiskFull, OdoopsError, RefusedError
from odoops.platforms.base import LOCAL_FOLDERS, FilestoreFolders
from tasks.postgres import ConnInfo, connect
from tasks.restore import (
    MARK,
    database_mark,
    drop_snapshot,
    marked_databases,
    owned_name,
    rename_database,
    set_database_mark,
    sibling_folder,
    terminate_sessions,
)

SNAPSHOT_KIND = "rollback-snapshot"
KEPT = 2  # confirmed snapshots kept per environment; in-progress ones are never dropped automatically


@dataclass(frozen=True)
class Snapshot:
    """The state of one environment before a change: its database and filestore under reserved names."""

    environment: str
    target: str  # the environment's database name
    database: str
    filestore: str | None
    target_filestore: str | None
    at: str
    reason: str  # e.g. "upgrade -u acme_custom"
    state: str  # "in-progress" (the change is running or was interrupted) or "kept"
    files: int = 0
    target_comment: str | None = None  # the database's own COMMENT, which a TEMPLATE copy does not carry
    process: dict[str, Any] | None = None  # the change's own process (odoops.holders record), while it runs
    code: dict[str, Any] | None = None  # {"previous": release}: the code the change replaced (Platform.switch_release)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")


def _mark(conn, snapshot: Snapshot) -> None:
    set_database_mark(conn, snapshot.database, {"kind": SNAPSHOT_KIND, **asdict(snapshot)})


def take_snapshot(server: ConnInfo, environment: str, target_db: str, target_fs: str | None, reason: str,
                  folders: FilestoreFolders = LOCAL_FOLDERS) -> Snapshot:
    """Copy the database (FILE_COPY) and hard-link the filestore; Odoo must be stopped (sessions are ended)."""
    stamp = _stamp()
    snap_db = owned_name(target_db, f"snap_{stamp}")
    snap_fs = str(sibling_folder(Path(target_fs), f"snap-{stamp}")) \
        if target_fs is not None and folders.exists(target_fs) else None
    snapshot = Snapshot(environment, target_db, snap_db, str(snap_fs) if snap_fs else None,
                        str(target_fs) if target_fs else None, datetime.now(UTC).isoformat(), reason, "in-progress")
    with connect(server.with_dbname("postgres")) as conn:
        comment = database_mark(conn, target_db)
        if comment is None:
            raise RefusedError(f"database {target_db!r} does not exist: nothing to snapshot")
        snapshot = Snapshot(**{**asdict(snapshot), "target_comment": comment or None})
        terminate_sessions(conn, target_db)
        # the filestore's links are made while PostgreSQL copies the database: the snapshot takes the longer one
        with ThreadPoolExecutor(max_workers=1) as pool:
            links = pool.submit(folders.link_copy, target_fs, snap_fs) if snap_fs is not None else None
            try:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(snap_db), sql.Identifier(target_db)))
            except psycopg.errors.DiskFull:
                _discard_links(links, snap_fs, folders)
                raise DiskFull(f"no space left on the PostgreSQL server to copy {target_db}: free some space "
                               "(the snapshot needs about the database's size); nothing was changed") from None
            except BaseException:
                _discard_links(links, snap_fs, folders)
                raise
            _mark(conn, snapshot)
            try:
                files = links.result() if links is not None else 0
            except (OSError, OdoopsError) as exc:
                _discard_links(None, snap_fs, folders)
                conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(snap_db)))
                if isinstance(exc, OdoopsError):
                    raise
                if exc.errno == errno.ENOSPC:
                    raise DiskFull(f"no space left to snapshot the filestore in {Path(snap_fs).parent}: free some "
                                   "space; nothing was changed") from None
                raise RefusedError(f"cannot hard-link the filestore into {snap_fs} ({exc.strerror}): the "
                                   "snapshot folder must be on the filestore's file system; nothing was changed") \
                    from None
        if files:
            snapshot = Snapshot(**{**asdict(snapshot), "files": files})
            _mark(conn, snapshot)
    return snapshot


def _discard_links(links: Future | None, folder: str | None, folders: FilestoreFolders) -> None:
    if links is not None:
        links.exception()  # wait for it: never delete a folder still being written
    if folder is not None:
        folders.remove(folder)


def annotate(server: ConnInfo, snapshot: Snapshot, **changes: Any) -> None:
    """Journal what the change did so far (its process, the code it switched), on the snapshot's mark,
    so the run that finds it interrupted can stop that process and undo those steps."""
    with connect(server.with_dbname("postgres")) as conn:
        mark = database_mark(conn, snapshot.database)
        current = json.loads(mark[len(MARK):]) if mark and mark.startswith(MARK) else {"kind": SNAPSHOT_KIND,
                                                                                        **asdict(snapshot)}
        set_database_mark(conn, snapshot.database, {**current, **changes})


def snapshots(server: ConnInfo, environment: str) -> list[Snapshot]:
    """The environment's rollback snapshots, newest first."""
    return [Snapshot(**mark) for mark in marked_databases(server, SNAPSHOT_KIND, environment)]


def interrupted(server: ConnInfo, environment: str) -> Snapshot | None:
    """The snapshot of a change that never finished (its run was killed), if any."""
    return next((s for s in snapshots(server, environment) if s.state == "in-progress"), None)


def keep(server: ConnInfo, snapshot: Snapshot, kept: int = KEPT, folders: FilestoreFolders = LOCAL_FOLDERS) -> list[str]:
    """The change succeeded: the snapshot stays for a later rollback; older confirmed ones are dropped."""
    annotate(server, snapshot, state="kept")  # over the journal: the code it switched stays recorded
    dropped = []
    for old in [s for s in snapshots(server, snapshot.environment) if s.state == "kept"][kept:]:
        drop_snapshot(server, old, folders)
        dropped.append(old.database)
    return dropped


def put_back(server: ConnInfo, snapshot: Snapshot, keep_replaced: str | None = None,
             folders: FilestoreFolders = LOCAL_FOLDERS) -> Snapshot | None:
    """Rename the changed state aside, the snapshot into place, then drop the changed state. All or nothing.

    With ``keep_replaced`` (a reason), the replaced state is not dropped but kept as a snapshot in its
    turn (returned): a rollback after a success can itself be undone, since that state has real writes.
    """
    stamp = _stamp()
    failed_db = owned_name(snapshot.target, f"failed_{stamp}")
    target_fs = snapshot.target_filestore
    failed_fs = str(sibling_folder(Path(target_fs), f"failed-{stamp}")) if target_fs is not None else None
    with connect(server.with_dbname("postgres")) as conn:
        undo: list = []
        try:
            if database_mark(conn, snapshot.target) is not None:
                rename_database(conn, snapshot.target, failed_db)
                undo.append(lambda: rename_database(conn, failed_db, snapshot.target))
            rename_database(conn, snapshot.database, snapshot.target)
            undo.append(lambda: rename_database(conn, snapshot.target, snapshot.database))
            if target_fs is not None and snapshot.filestore:
                if folders.exists(target_fs):
                    folders.rename(target_fs, failed_fs)
                    undo.append(lambda: folders.rename(failed_fs, target_fs))
                folders.rename(snapshot.filestore, target_fs)
        except BaseException:
            for step in reversed(undo):
                step()
            raise
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(snapshot.target), sql.Literal(snapshot.target_comment)))
        if keep_replaced and database_mark(conn, failed_db) is not None:
            replaced = Snapshot(snapshot.environment, snapshot.target, failed_db,
                                failed_fs if failed_fs is not None and folders.exists(failed_fs) else None,
                                snapshot.target_filestore, datetime.now(UTC).isoformat(), keep_replaced, "kept",
                                target_comment=snapshot.target_comment)
            _mark(conn, replaced)
            return replaced
        if database_mark(conn, failed_db) is not None:
            set_database_mark(conn, failed_db, {"kind": "rolled-back", "environment": snapshot.environment})
            terminate_sessions(conn, failed_db)
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(failed_db)))
    if failed_fs is not None and folders.exists(failed_fs):
        folders.remove(failed_fs)
    return None
