"""The steps of one backup: a consistent snapshot of the database's facts, the dump, the filestore,
the configuration, and the manifest that commits it all (write order of docs/repository-format.md).

The database facts (installed modules, row counts, attachments) are read inside the same exported
snapshot that pg_dump uses, so a drill compares like with like even on a busy production database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from odoops import __version__
from odoops.errors import ConfigError, IntegrityError, OdoopsError, ToolFailed
from odoops.inventory import Environment
from odoops.platforms.base import Platform
from odoops.redact import SECRET_KEY_PATTERN
from tasks.archive import Repository, backup_key, now_utc, odoo_manifest
from tasks.filestore import FilestoreResult, IndexEntry, missing_attachment_files, store_filestore
from tasks.postgres import ConnInfo, connect, tool_failure

log = logging.getLogger(__name__)
_CONFIG_LINE = re.compile(r"^(\s*)([A-Za-z0-9_.]+)(\s*[=:]\s*)(.*)$")
_SECRET_CONFIG_KEYS = re.compile(r"(passw|secret|token|api_key|key$)", re.IGNORECASE)


@dataclass
class DatabaseFacts:
    db_name: str
    server_version_num: int
    modules: dict[str, str]
    size: int
    row_counts: dict[str, int]
    attachment_fnames: list[str] = field(repr=False)
    apart: list[dict[str, Any]] = field(default_factory=list)  # the tables dumped apart (dump_database_parts)


@contextmanager
def database_snapshot(conninfo: ConnInfo) -> Iterator[tuple[psycopg.Connection, str]]:
    """A REPEATABLE READ transaction with an exported snapshot id, held open until the dump is done."""
    with connect(conninfo, autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot_id = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        try:
            yield conn, snapshot_id
        except BaseException:
            try:  # a connection lost with the failure (an SSH tunnel cut) must not hide the failure itself
                conn.rollback()
            except psycopg.Error:
                pass
            raise
        conn.rollback()


def read_facts(conn: psycopg.Connection) -> DatabaseFacts:
    """What the manifest records about the database, read inside the snapshot."""
    from tasks.postgres import database_size, installed_modules, table_row_counts

    db_name = conn.execute("SELECT current_database()").fetchone()[0]
    has_modules = conn.execute("SELECT to_regclass('public.ir_module_module') IS NOT NULL").fetchone()[0]
    if not has_modules:
        raise ConfigError(f"database {db_name} is not an Odoo database (no ir_module_module table): "
                          "check the environment's dsn")
    fnames = [r[0] for r in conn.execute(
        "SELECT DISTINCT store_fname FROM ir_attachment WHERE store_fname IS NOT NULL AND store_fname <> ''")]
    return DatabaseFacts(
        db_name=db_name, server_version_num=int(conn.execute("SHOW server_version_num").fetchone()[0]),
        modules=installed_modules(conn), size=database_size(conn), row_counts=table_row_counts(conn),
        attachment_fnames=fnames,
    )


def dump_to_repository(conninfo: ConnInfo, repo: Repository, backup_id: str, snapshot_id: str | None,
                       compress: int = 1, progress: Callable[[int], None] | None = None,
                       part: str = "database.dump", selection: Sequence[str] = ()) -> dict[str, Any]:
    """One pg_dump (custom format) streamed into the repository; checks pg_dump's exit status.

    ``selection`` narrows it (``--exclude-table-data=...``, ``--data-only --table=...``)."""
    args = ["pg_dump", "--format=custom", f"--compress={compress}", "--no-owner", *selection]
    if snapshot_id:
        args.append(f"--snapshot={snapshot_id}")
    args += ["--dbname", conninfo.dbname]
    if conninfo.tools is not None:
        return _dump_where_tools_run(conninfo, repo, backup_key(backup_id, part), args, progress)
    proc = subprocess.Popen(args, env=conninfo.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    drain.start()

    try:
        size, sha = repo.store.put_stream(backup_key(backup_id, part), _Counting(proc.stdout, progress))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    code = proc.wait()
    drain.join()
    if code != 0:
        repo.store.delete(backup_key(backup_id, part))
        raise tool_failure("pg_dump", b"".join(stderr))
    if size == 0:
        raise ToolFailed("pg_dump produced an empty dump: check the database and pg_dump's version")
    return {"size": size, "sha256": sha}


class _Counting:
    """A dump's output stream that reports each chunk read to the progress bar."""

    def __init__(self, stream: Any, progress: Callable[[int], None] | None) -> None:
        self.stream, self.progress = stream, progress

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        if self.progress and data:
            self.progress(len(data))
        return data


def _dump_where_tools_run(conninfo: ConnInfo, repo: Repository, key: str, args: list[str],
                          progress: Callable[[int], None] | None) -> dict[str, Any]:
    """pg_dump run beside the database (``conninfo.tools``: an Odoo.sh build, over SSH), its output streamed
    into the repository as it comes: no dump file on either side. A failed or cut stream leaves no part."""
    try:
        with conninfo.tools.stream(args) as out:
            size, sha = repo.store.put_stream(key, _Counting(out, progress))
    except BaseException:
        repo.store.delete(key)
        raise
    if size == 0:
        repo.store.delete(key)
        raise ToolFailed("pg_dump produced an empty dump: check the database and pg_dump's version")
    return {"size": size, "sha256": sha}


# ----------------------------------------------------------------------------- big tables apart

APART_MAX_TABLES = 12
_FINGERPRINT_VERSION = 1
_FIRST_USER_OID = 16384  # FirstNormalObjectId: types above it are user-defined (enums, domains, extensions)


@dataclass(frozen=True)
class ApartTable:
    """A big table whose data is dumped into its own part (docs/repository-format.md)."""

    schema: str
    name: str
    bytes: int
    fingerprint: str | None  # None: never reused

    @property
    def part(self) -> str:
        return f"tables/{_file_name(self.schema)}.{_file_name(self.name)}.dump"

    @property
    def pattern(self) -> str:
        """A pg_dump pattern matching this table only (inside double quotes every character is literal)."""
        return ".".join('"' + n.replace('"', '""') + '"' for n in (self.schema, self.name))


def _file_name(identifier: str) -> str:
    """A PostgreSQL name as a file name: percent-encoded, dots included (the schema/table separator)."""
    return quote(identifier, safe="").replace(".", "%2E")


def pg_dump_major() -> int:
    out = subprocess.run(["pg_dump", "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"(\d+)(?:\.\d+)?", out).group(1))


def _cluster_identity(conn: psycopg.Connection) -> str | None:
    """System identifier, WAL timeline and database oid; None where unreadable (a standby, privileges)."""
    try:
        with conn.transaction():  # a savepoint: an error must not end the snapshot's transaction
            if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                return None
            row = conn.execute(
                "SELECT (SELECT system_identifier FROM pg_control_system()), "
                "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), "
                "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchone()
    except psycopg.Error:
        return None
    return "/".join(str(v) for v in row)


def _fingerprint(conn: psycopg.Connection, base: list[Any], schema: str, name: str, oid: int,
                 relfilenode: int) -> str | None:
    """What any change to the table's rows or columns alters; None when it cannot be trusted."""
    try:
        with conn.transaction():
            columns = conn.execute(
                "SELECT a.attnum, a.attname, a.atttypid, a.atttypmod, a.attnotnull, a.attisdropped, a.atthasmissing, "
                "a.attmissingval::text, a.attgenerated, a.attcollation, "
                "NOT a.attisdropped AND (a.atttypid >= %s OR coalesce(t.typelem, 0) >= %s) "
                "FROM pg_attribute a LEFT JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = %s AND a.attnum > 0 ORDER BY a.attnum",
                (_FIRST_USER_OID, _FIRST_USER_OID, oid)).fetchall()
            if any(c[-1] for c in columns):
                return None
            rows = conn.execute(sql.SQL(
                "SELECT count(*), coalesce(sum(xmin::text::bigint), 0), "
                "coalesce(sum(hashtextextended(ctid::text || '/' || xmin::text, 0)), 0) FROM {}").format(
                sql.Identifier(schema, name))).fetchone()
    except psycopg.Error:
        return None
    material = [*base, oid, relfilenode, [list(c[:-1]) for c in columns], [str(v) for v in rows]]
    return hashlib.sha256(json.dumps(material, default=str).encode()).hexdigest()


def apart_tables(conn: psycopg.Connection, min_mb: float, max_tables: int = APART_MAX_TABLES) -> list[ApartTable]:
    """The biggest tables (at least ``min_mb``), fingerprinted inside the snapshot ``conn`` holds."""
    if min_mb <= 0:
        return []
    candidates = conn.execute(
        "SELECT n.nspname, c.relname, c.oid, c.relfilenode, pg_table_size(c.oid) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%' "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
        "AND d.deptype = 'e') AND pg_table_size(c.oid) >= %s ORDER BY 5 DESC, 1, 2 LIMIT %s",
        (int(min_mb * 2**20), max_tables)).fetchall()
    if not candidates:
        return []
    identity = _cluster_identity(conn)
    base = [_FINGERPRINT_VERSION, pg_dump_major(), identity]
    return [ApartTable(schema, name, size,
                       _fingerprint(conn, base, schema, name, oid, relfilenode) if identity else None)
            for schema, name, oid, relfilenode, size in candidates]


def previous_apart(repo: Repository, environment: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The environment's newest complete backup's table parts: (schema, table) -> record + backup id."""
    latest = repo.latest(environment)
    if latest is None or latest.verification == "failed":  # never carry a damaged part forward
        return {}
    meta = repo.manifest(latest.id)["odoops"]
    return {(t["schema"], t["table"]): {**t, "backup_id": latest.id, **meta["parts"][t["part"]]}
            for t in meta["database"].get("apart", []) if t.get("fingerprint") and t["part"] in meta["parts"]}


def dump_database_parts(conninfo: ConnInfo, repo: Repository, backup_id: str, snapshot_id: str | None,
                        apart: Sequence[ApartTable] = (), previous: dict[tuple[str, str], dict[str, Any]] | None = None,
                        jobs: int = 2, progress: Callable[[int], None] | None = None
                        ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The database as ``database.dump`` plus one part per big table, an unchanged one linked, not dumped.

    Returns (parts for the manifest, the ``apart`` records)."""
    previous = previous or {}
    parts: dict[str, dict[str, Any]] = {}
    records: list[dict[str, Any]] = []
    to_dump: list[tuple[str, list[str]]] = [
        ("database.dump", [f"--exclude-table-data={t.pattern}" for t in apart])]
    for table in apart:
        before = previous.get((table.schema, table.name))
        reused = None
        if table.fingerprint and before and before["fingerprint"] == table.fingerprint:
            target = backup_key(backup_id, table.part)
            try:
                repo.store.link(backup_key(before["backup_id"], before["part"]), target)
                if repo.store.size(target) != before["size"]:  # cheap check; verify re-reads every byte
                    repo.store.delete(target)
                    raise IntegrityError(f"its size is not the {before['size']} bytes its manifest records")
                parts[table.part] = {"size": before["size"], "sha256": before["sha256"]}
                reused = before["backup_id"]
            except OdoopsError as exc:  # the previous part is gone or damaged: dump it again
                log.warning("cannot reuse %s of %s (%s): dumping it", before["part"], before["backup_id"], exc)
        if reused is None:
            to_dump.append((table.part, ["--data-only", f"--table={table.pattern}"]))
        records.append({"schema": table.schema, "table": table.name, "part": table.part, "bytes": table.bytes,
                        "fingerprint": table.fingerprint, "reused_from": reused})
    lock = threading.Lock()

    def counted(n: int) -> None:
        if progress:
            with lock:
                progress(n)

    def dump(item: tuple[str, list[str]]) -> tuple[str, dict[str, Any]]:
        part, selection = item
        return part, dump_to_repository(conninfo, repo, backup_id, snapshot_id, progress=counted, part=part,
                                        selection=selection)

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="pg_dump") as pool:
        parts.update(pool.map(dump, to_dump))
    return parts, records


def redact_odoo_config(text: str) -> str:
    """The Odoo configuration with secret values (admin_passwd, db_password, smtp_password...) masked."""
    lines = []
    for line in text.splitlines():
        match = _CONFIG_LINE.match(line)
        if match and (_SECRET_CONFIG_KEYS.search(match.group(2)) or SECRET_KEY_PATTERN.search(match.group(2))) \
                and match.group(4).strip() not in ("", "False", "None"):
            line = f"{match.group(1)}{match.group(2)}{match.group(3)}***"
        lines.append(line)
    return "\n".join(lines) + "\n"


def store_config(platform: Platform, repo: Repository, backup_id: str) -> dict[str, Any] | None:
    text = platform.read_odoo_config()
    if text is None:
        return None
    size, sha = repo.store.put_bytes(backup_key(backup_id, "odoo.conf"), redact_odoo_config(text).encode())
    return {"size": size, "sha256": sha}


def previous_index(repo: Repository, environment: str) -> dict[str, IndexEntry]:
    """The environment's newest complete backup's index, to skip unchanged files."""
    latest = repo.latest(environment)
    if latest is None:
        return {}
    try:
        return {e.relpath: e for e in repo.filestore_index(latest.id)}
    except OdoopsError:
        return {}


def store_environment_filestore(platform: Platform, repo: Repository, environment: str,
                                progress: Callable[[int], None] | None = None) -> FilestoreResult:
    if not platform.filestore_exists():
        raise ConfigError(f"environment {environment}: filestore folder {platform.env.filestore} does not exist: "
                          "fix 'filestore:' in the inventory (<data_dir>/filestore/<dbname>)")
    return store_filestore(platform, repo.store, repo.known_objects(), previous_index(repo, environment),
                           progress=progress)


def build_manifest(env: Environment, backup_id: str, kind: str, started: datetime, facts: DatabaseFacts,
                   parts: dict[str, dict[str, Any]], files: FilestoreResult) -> dict[str, Any]:
    manifest = odoo_manifest(facts.db_name, facts.modules, facts.server_version_num)
    manifest["odoops"] = {
        "format": 2 if facts.apart else 1, "backup_id": backup_id, "environment": env.name, "stage": env.stage, "kind": kind,
        "created_at": started.isoformat(timespec="microseconds"),  # orders two backups made in one second
        "completed_at": now_utc().isoformat(timespec="seconds"),
        "database": {"name": facts.db_name, "size": facts.size, "tables": len(facts.row_counts),
                     "row_counts": facts.row_counts, "layout": "parts" if facts.apart else "single",
                     "apart": facts.apart},
        "parts": parts,
        "filestore": {"files": len(files.entries), "bytes": files.total_bytes, "new_objects": files.new_objects,
                      "new_bytes": files.new_bytes},
        "missing_files": missing_attachment_files(facts.attachment_fnames, files.entries),
        "odoops_version": __version__,
    }
    return manifest
