"""The steps of the restore runbook (flows/restore.py), as plain functions.

Sources are opened read-only: a catalog backup is copied out of the repository, never moved or linked,
so it verifies identically afterwards.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from odoops.errors import BackupNotFound, RefusedError
from odoops.inventory import Environment, Inventory
from odoops.platforms.base import Platform
from tasks import odoo_archive
from tasks.filestore import check_attachments, materialize
from tasks.odoo_archive import RestoreSource
from tasks.postgres import (
    ConnInfo,
    attachment_files,
    connect,
    database_exists,
    installed_modules,
    restore_dump,
    table_row_counts,
)

Progress = Callable[[int], None] | None
log = logging.getLogger(__name__)


def _in_deployment_run() -> bool:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return bool(ctx and ctx.flow_run and ctx.flow_run.deployment_id)
    except Exception:  # noqa: BLE001
        return False


def confirm_production(env: Environment, confirm: str | None, timeout: int = 3600) -> None:
    """Production is only touched when named: --confirm NAME, or typed into the UI's approval input."""
    if not env.is_production or confirm == env.name:
        return
    if confirm is not None:
        raise RefusedError(f"confirmation {confirm!r} does not name the environment {env.name!r}: "
                           f"repeat its exact name with --confirm {env.name}")
    if _in_deployment_run():
        from prefect.flow_runs import pause_flow_run
        from prefect.input import RunInput

        class Approval(RunInput):
            environment_name: str

        answer = pause_flow_run(wait_for_input=Approval.with_initial_data(
            description=f"**{env.name} is production.** Type its name to replace its database and filestore "
                        "(a verified backup is taken first).", environment_name=""), timeout=timeout)
        if answer.environment_name == env.name:
            return
    raise RefusedError(f"{env.name} is production: confirm by naming it (--confirm {env.name}, or the approval "
                       "input in the Prefect UI)")


@contextmanager
def open_source(inventory: Inventory, spec: str) -> Iterator[RestoreSource]:
    """A catalog backup id (any storage of the inventory) or an Odoo archive file / s3:// URL."""
    from tasks.archive import open_repository

    looks_like_file = spec.startswith("s3://") or "/" in spec or spec.endswith((".zip", ".dump"))
    if not looks_like_file:
        for name in inventory.storages:
            repo = open_repository(inventory.storage(name))
            if repo.store.exists(f"backups/{spec}/manifest.json"):
                manifest = repo.manifest(spec)
                source = RestoreSource(description=spec, kind="catalog", manifest=manifest, backup_id=spec,
                                       row_counts=manifest["odoops"]["database"]["row_counts"],
                                       missing_files=manifest["odoops"].get("missing_files", []))
                source.repo = repo  # type: ignore[attr-defined]
                yield source
                return
        raise BackupNotFound(f"no complete backup {spec!r} in the inventory's storages and no such file: "
                             "see 'odoops backups list'")
    with odoo_archive.fetched(spec) as path:
        yield odoo_archive.open_file_source(path)


def source_stage(source: RestoreSource) -> str | None:
    return (source.manifest or {}).get("odoops", {}).get("stage") if source.kind == "catalog" else None


def source_environment(source: RestoreSource) -> str | None:
    return (source.manifest or {}).get("odoops", {}).get("environment") if source.kind == "catalog" else None


def target_major_version(target: ConnInfo) -> str | None:
    """The Odoo version the target runs today (its base module), or None when it has no database yet."""
    if not database_exists(target, target.dbname):
        return None
    with connect(target) as conn:
        if not conn.execute("SELECT to_regclass('public.ir_module_module') IS NOT NULL").fetchone()[0]:
            return None
        row = conn.execute("SELECT latest_version FROM ir_module_module WHERE name = 'base'").fetchone()
    return ".".join(row[0].split(".")[:2]) if row and row[0] else None


def load_database(source: RestoreSource, conninfo: ConnInfo, progress: Progress = None) -> None:
    if source.kind == "catalog":
        with source.repo.database_dumps(source.backup_id) as dumps:  # type: ignore[attr-defined]
            restore_dump(conninfo, dumps)
    elif source.kind == "dump":
        restore_dump(conninfo, str(source.local_path))
    else:
        with zipfile.ZipFile(source.local_path) as zf:
            odoo_archive.load_plain_sql_from_zip(zf, conninfo, progress)


def load_filestore(source: RestoreSource, folder: Path, progress: Progress = None) -> dict[str, str] | None:
    """Write the source's filestore into ``folder``; SHA-1 of each file when computed on the way."""
    if source.kind == "catalog":
        repo = source.repo  # type: ignore[attr-defined]
        return materialize(repo.store, repo.filestore_index(source.backup_id), folder, progress=progress)
    if source.kind == "odoo-zip":
        with zipfile.ZipFile(source.local_path) as zf:
            return odoo_archive.extract_filestore(zf, folder, progress)
    return {}


def verify_restored(conninfo: ConnInfo, source: RestoreSource, folder: Path,
                    sha1s: dict[str, str] | None) -> dict[str, Any]:
    """Row counts (where the source recorded them), modules against the manifest, every attachment's file."""
    problems: list[str] = []
    with connect(conninfo) as conn:
        counts = table_row_counts(conn)
        for table, expected in sorted((source.row_counts or {}).items()):
            if counts.get(table) != expected:
                problems.append(f"table {table}: {counts.get(table)} rows, the backup recorded {expected}")
        modules = installed_modules(conn)
        if source.manifest and source.manifest.get("modules") and modules != source.manifest["modules"]:
            problems.append("installed modules differ from the archive's manifest")
        attachments = attachment_files(conn)
    files = sum(1 for p in folder.rglob("*") if p.is_file() and p.name != ".odoops-restore")
    if source.kind == "dump":
        attachment_state = "n/a (a .dump has no filestore)"
    else:
        known_missing = set(source.missing_files)
        found = check_attachments(folder, attachments, sha1s)
        problems += [p for p in found if p.removeprefix("missing ") not in known_missing]
        attachment_state = f"{len(attachments)} checked"
    summary = {"tables": len(counts), "rows": sum(counts.values()), "files": files, "attachments": attachment_state,
               "row_counts_compared": bool(source.row_counts)}
    return {"problems": problems, "summary": summary}


def make_it_a_copy(platform: Platform, source: RestoreSource, conninfo: ConnInfo, folder: Path,
                   neutralize: bool | None, anonymize: bool, rules: str | None) -> dict[str, Any]:
    """Neutralize (default for any non-production target), fresh identity, optional anonymization."""
    from tasks import odoo

    env = platform.env
    if neutralize is None:
        neutralize = not env.is_production
    result: dict[str, Any] = {"neutralized": False, "anonymized": False, "summary": {}}
    with connect(conninfo) as conn:
        if neutralize:
            if env.odoo_bin:
                platform.run_odoo(["neutralize", "-d", conninfo.dbname])
                result["summary"]["neutralized_by"] = "odoo-bin neutralize"
            else:
                report = odoo.neutralize(conn)
                result["summary"]["neutralized_by"] = "odoops (modules: " + ", ".join(report.modules) + ")"
            problems = odoo.verify_neutralized(conn)
            if problems:
                from odoops.errors import IntegrityError

                raise IntegrityError(f"neutralization incomplete ({problems[0]}): the target was not touched")
            result["neutralized"] = True
        result["summary"]["is_neutralized"] = neutralize
        if source_environment(source) != env.name:
            odoo.refresh_copy_identity(conn, env.url)
            result["summary"]["new_identity"] = True
        if anonymize:
            from tasks.anonymize import ONE_TIME_KEY_NOTE, key_from_env, key_source
            from tasks.anonymize import anonymize as run_anonymization

            report = run_anonymization(conn, rules, key_from_env(), filestore_path=folder)
            result["anonymized"] = True
            result["anonymization"] = {**report.as_dict(), "key": key_source()}
            result["summary"]["residue"] = "clean"
            result["summary"]["anonymization_key"] = key_source()
            if key_source() == "one-time":
                log.warning("%s", ONE_TIME_KEY_NOTE)
    return result


def post_checks(env: Environment, target: ConnInfo) -> dict[str, Any]:
    """After the swap: the database answers under its name and, with a URL, Odoo answers /web/health and
    (when ``health.login`` is configured) a real XML-RPC login succeeds."""
    from tasks.odoo import probe_url

    checks: dict[str, Any] = {}
    with connect(target) as conn:
        row = conn.execute("SELECT value FROM ir_config_parameter WHERE key = 'database.is_neutralized'").fetchone()
        checks["database.is_neutralized"] = bool(row and row[0].lower() in ("true", "1"))
    if env.url:
        ok, detail = probe_url(env.url)
        checks["web/health"] = detail if ok else f"FAILED: {detail}"
        from tasks.health import login_check, thresholds_for

        login = login_check(env, thresholds_for(env), env.url)
        checks["xmlrpc login"] = f"{login.status}: {login.detail}"
    return checks
