"""Restore drills: prove a backup restores, in a scratch database and a scratch filestore.

A checksum says the bytes are the ones written; only a restore says they make a working Odoo
database. The drill restores with pg_restore, rebuilds the filestore from the objects, then checks
tables and row counts against the manifest, installed modules against the manifest, and that every
``ir_attachment.store_fname`` has its file with the right SHA-1. The scratch copies are always dropped.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.archive import Repository
from tasks.filestore import check_attachments, materialize
from tasks.postgres import (
    ConnInfo,
    attachment_files,
    connect,
    create_database,
    drop_database,
    installed_modules,
    restore_dump,
    table_row_counts,
)

SCRATCH_PREFIX = "odoops_scratch_"


@dataclass
class DrillReport:
    backup_id: str
    scratch_database: str
    tables: int = 0
    rows: int = 0
    files: int = 0
    attachments_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def scratch_name(kind: str = "drill") -> str:
    return f"{SCRATCH_PREFIX}{kind}_{secrets.token_hex(4)}"


def restore_into_scratch(repo: Repository, backup_id: str, server: ConnInfo, dbname: str, filestore: Path,
                         progress: Callable[[int], None] | None = None, jobs: int = 2) -> dict[str, str]:
    """Database and filestore of a backup into a new database and an empty folder (the backup is only read).

    Returns relpath -> SHA-1 of the files written."""
    create_database(server, dbname)
    with repo.database_dumps(backup_id) as dumps:
        restore_dump(server.with_dbname(dbname), dumps, jobs=jobs)
    return materialize(repo.store, repo.filestore_index(backup_id), filestore, progress=progress)


def compare_with_manifest(conn, manifest: dict, filestore: Path, report: DrillReport,
                          sha1s: dict[str, str] | None = None) -> None:
    expected_counts = manifest["odoops"]["database"]["row_counts"]
    counts = table_row_counts(conn)
    report.tables, report.rows = len(counts), sum(counts.values())
    for table, expected in sorted(expected_counts.items()):
        if table not in counts:
            report.problems.append(f"table {table} missing")
        elif counts[table] != expected:
            report.problems.append(f"table {table}: {counts[table]} rows, backup recorded {expected}")
    modules = installed_modules(conn)
    if modules != manifest["modules"]:
        missing = sorted(set(manifest["modules"]) - set(modules))
        extra = sorted(set(modules) - set(manifest["modules"]))
        report.problems.append(f"installed modules differ from the manifest (missing {missing}, extra {extra})")
    attachments = attachment_files(conn)
    report.attachments_checked = len(attachments)
    known_missing = set(manifest["odoops"].get("missing_files", []))
    report.problems.extend(
        p for p in check_attachments(filestore, attachments, sha1s) if p.removeprefix("missing ") not in known_missing
    )


def drill_backup(repo: Repository, backup_id: str, server: ConnInfo, keep_scratch: bool = False,
                 progress: Callable[[int], None] | None = None) -> DrillReport:
    manifest = repo.manifest(backup_id)
    dbname = scratch_name()
    report = DrillReport(backup_id=backup_id, scratch_database=dbname)
    scratch_root = Path(tempfile.mkdtemp(prefix="odoops-drill-"))
    filestore = scratch_root / "filestore" / dbname
    try:
        sha1s = restore_into_scratch(repo, backup_id, server, dbname, filestore, progress)
        report.files = sum(1 for p in filestore.rglob("*") if p.is_file())
        if report.files != manifest["odoops"]["filestore"]["files"]:
            report.problems.append(f"filestore has {report.files} files, backup recorded "
                                   f"{manifest['odoops']['filestore']['files']}")
        with connect(server.with_dbname(dbname)) as conn:
            compare_with_manifest(conn, manifest, filestore, report, sha1s)
    finally:
        if not keep_scratch:
            drop_database(server, dbname, only_scratch_prefix=SCRATCH_PREFIX)
            shutil.rmtree(scratch_root, ignore_errors=True)
    return report
