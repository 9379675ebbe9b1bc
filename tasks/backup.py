"""The steps of one backup: a consistent snapshot of the database's facts, the dump, the filestore,
the configuration, and the manifest that commits it all (write order of docs/repository-format.md).

The database facts (installed modules, row counts, attachments) are read inside the same exported
snapshot that pg_dump uses, so a drill compares like with like even on a busy production database.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from odoops import __version__
from odoops.errors import ConfigError, OdoopsError, ToolFailed
from odoops.inventory import Environment
from odoops.platforms.base import Platform
from odoops.redact import SECRET_KEY_PATTERN
from tasks.archive import Repository, backup_key, now_utc, odoo_manifest
from tasks.filestore import FilestoreResult, IndexEntry, missing_attachment_files, store_filestore
from tasks.postgres import ConnInfo, connect, tool_failure

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


@contextmanager
def database_snapshot(conninfo: ConnInfo) -> Iterator[tuple[psycopg.Connection, str]]:
    """A REPEATABLE READ transaction with an exported snapshot id, held open until the dump is done."""
    with connect(conninfo, autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot_id = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        try:
            yield conn, snapshot_id
        finally:
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
                       compress: int = 1, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """pg_dump (custom format) streamed into the repository; checks pg_dump's exit status."""
    args = ["pg_dump", "--format=custom", f"--compress={compress}", "--no-owner"]
    if snapshot_id:
        args.append(f"--snapshot={snapshot_id}")
    args += ["--dbname", conninfo.dbname]
    proc = subprocess.Popen(args, env=conninfo.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    drain.start()

    class _Counting:
        def read(self, n: int = -1) -> bytes:
            data = proc.stdout.read(n)
            if progress and data:
                progress(len(data))
            return data

    try:
        size, sha = repo.store.put_stream(backup_key(backup_id, "database.dump"), _Counting())
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    code = proc.wait()
    drain.join()
    if code != 0:
        repo.store.delete(backup_key(backup_id, "database.dump"))
        raise tool_failure("pg_dump", b"".join(stderr))
    if size == 0:
        raise ToolFailed("pg_dump produced an empty dump: check the database and pg_dump's version")
    return {"size": size, "sha256": sha}


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
        "format": 1, "backup_id": backup_id, "environment": env.name, "stage": env.stage, "kind": kind,
        "created_at": started.isoformat(timespec="seconds"), "completed_at": now_utc().isoformat(timespec="seconds"),
        "database": {"name": facts.db_name, "size": facts.size, "tables": len(facts.row_counts),
                     "row_counts": facts.row_counts},
        "parts": parts,
        "filestore": {"files": len(files.entries), "bytes": files.total_bytes, "new_objects": files.new_objects,
                      "new_bytes": files.new_bytes},
        "missing_files": missing_attachment_files(facts.attachment_fnames, files.entries),
        "odoops_version": __version__,
    }
    return manifest
