"""Runbooks: verify a backup (re-read every byte) and drill it (restore it into scratch copies).

verify: every part and every filestore object is read back and its sha256 compared with the manifest.
drill: the backup is restored into a scratch database on the environment's PostgreSQL server and a
scratch filestore, checked against its manifest, then the scratch copies are dropped.
Both record their result next to the backup (the catalog shows it) and in the audit trail.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from odoops.errors import IntegrityError
from odoops.inventory import load_inventory
from odoops.platforms import platform_for
from odoops.runtime import progress, record_run, repository_for, run_name
from tasks.drill import drill_backup


def locate_backup(inventory, backup_id: str):
    """The environment and repository holding ``backup_id`` (ids start with the environment's name)."""
    from odoops.errors import BackupNotFound

    for env in sorted(inventory.environments.values(), key=lambda e: -len(e.name)):
        if backup_id.startswith(f"{env.name}-"):
            for storage in [env.backup.storage, *[s for s in inventory.storages if s != env.backup.storage]]:
                repo = repository_for(inventory, storage)
                if repo.store.exists(f"backups/{backup_id}/manifest.json"):
                    return env, repo
    raise BackupNotFound(f"no complete backup {backup_id!r} in any storage of {inventory.path}: "
                         "see 'odoops backups list' for the ids")


@task(cache_policy=NO_CACHE)
def verify_parts(repo, backup_id: str) -> list[str]:
    return repo.verify(backup_id, progress=progress("verify"))


@task(cache_policy=NO_CACHE)
def drill(repo, backup_id: str, server) -> Any:
    return drill_backup(repo, backup_id, server, progress=progress("drill filestore"))


@flow(name="verify-backup", flow_run_name=run_name("verify/{backup_id}"))
def verify_flow(backup_id: str, inventory: str | None = None) -> dict[str, Any]:
    """Re-read every part and object of BACKUP_ID and check their sha256."""
    inv = load_inventory(inventory)
    env, repo = locate_backup(inv, backup_id)
    problems = verify_parts(repo, backup_id)
    repo.record_verification(backup_id, "verify", not problems, {"problems": problems[:100]})
    create_markdown_artifact(f"## Verify {backup_id}\n\n" + ("**intact**: every part and object matches its sha256"
                             if not problems else "**damaged**:\n" + "\n".join(f"- {p}" for p in problems[:50])),
                             key="verify-result")
    record_run(inv, "verify", env, {"backup_id": backup_id}, "success" if not problems else "damaged", [backup_id],
               {"problems": len(problems)})
    if problems:
        raise IntegrityError(f"backup {backup_id} is damaged ({len(problems)} problems, first: {problems[0]}): "
                             "restore from another backup and check the storage")
    return {"backup_id": backup_id, "ok": True}


@flow(name="drill-backup", flow_run_name=run_name("drill/{backup_id}"))
def drill_flow(backup_id: str, inventory: str | None = None) -> dict[str, Any]:
    """Restore BACKUP_ID into a scratch database and filestore, check it against its manifest, drop it."""
    inv = load_inventory(inventory)
    env, repo = locate_backup(inv, backup_id)
    with platform_for(env) as platform:
        platform.ensure_can("create_database")  # the scratch database is made on the environment's server
        with platform.database() as conninfo:
            report = drill(repo, backup_id, conninfo)
    details = {"tables": report.tables, "rows": report.rows, "files": report.files,
               "attachments_checked": report.attachments_checked, "problems": report.problems[:100]}
    repo.record_verification(backup_id, "drill", report.ok, details)
    create_markdown_artifact(
        f"## Drill {backup_id}\n\n- restored into scratch database `{report.scratch_database}` (dropped)\n"
        f"- {report.tables} tables, {report.rows:,} rows, {report.files} filestore files, "
        f"{report.attachments_checked} attachments checked\n- result: **{'pass' if report.ok else 'FAIL'}**\n"
        + "".join(f"  - {p}\n" for p in report.problems[:50]), key="drill-result")
    record_run(inv, "drill", env, {"backup_id": backup_id}, "success" if report.ok else "failed", [backup_id], details)
    if not report.ok:
        raise IntegrityError(f"drill of {backup_id} failed ({len(report.problems)} problems, first: "
                             f"{report.problems[0]}): do not rely on this backup")
    return {"backup_id": backup_id, "ok": True, **details}
