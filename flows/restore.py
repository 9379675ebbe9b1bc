"""Runbook: restore a backup (catalog id, Odoo .zip / .dump, local or s3://) into an environment.

1. Gates: production targets need their name as confirmation (CLI --confirm, or an approval input in the
   UI) and get a fresh verified backup first; an archive of another Odoo major version is refused.
2. Build beside the target: a temporary database and filestore, loaded side by side, then checked.
3. Make it a copy: neutralize (production data into non-production, unless explicitly turned off), new
   database.uuid/secret and web.base.url, anonymize on request — all before anyone can reach it.
4. Swap it in (Odoo stopped where the platform can), keeping the replaced state as a snapshot for
   ``restore undo``; any failure before the swap leaves the target exactly as it was.
5. Artifacts and the audit record, including what was neutralized and anonymized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from odoops.errors import ConfigError, IntegrityError, RefusedError
from odoops.platforms import platform_for
from odoops.runtime import progress, record_run, resolve, run_name
from odoops.slots import environment_slot
from tasks import restore as swap
from tasks.postgres import database_exists
from tasks.restore_steps import (
    confirm_production,
    load_database,
    load_filestore,
    make_it_a_copy,
    open_source,
    post_checks,
    target_major_version,
    verify_restored,
)


@task(cache_policy=NO_CACHE)
def restore_database(source, conninfo):
    return load_database(source, conninfo, progress("database"))


@task(cache_policy=NO_CACHE)
def restore_filestore(source, folder: Path):
    return load_filestore(source, folder, progress("filestore"))


@flow(name="restore", flow_run_name=run_name("restore/{source}→{environment}"))
def restore_flow(source: str, environment: str, neutralize: bool | None = None, anonymize: bool = False,
                 rules: str | None = None, confirm: str | None = None, allow_version_change: bool = False,
                 inventory: str | None = None) -> dict[str, Any]:
    """Restore SOURCE into ENVIRONMENT, atomically, neutralized and optionally anonymized."""
    parameters = {"source": source, "environment": environment, "neutralize": neutralize, "anonymize": anonymize,
                  "rules": rules, "confirm": confirm, "allow_version_change": allow_version_change}
    inv, env = resolve(environment, inventory)
    platform_for(env).ensure_can("restore")  # an Odoo.sh build: done in its dashboard, which the refusal names
    if env.ssh is not None:
        raise ConfigError(f"environment {env.name}: restoring over SSH is not supported yet: run odoops on that host")
    pre_backup = None
    try:
        confirm_production(env, confirm)
        if anonymize and env.is_production:
            raise RefusedError(f"refusing to anonymize {env.name}: it is production (anonymize copies, never the original)")
        with environment_slot(env.name), platform_for(env) as platform, platform.database() as target, \
                open_source(inv, source) as src:
            major = target_major_version(target)
            if major and src.major_version and major != src.major_version and not allow_version_change:
                raise RefusedError(f"{src.description} is Odoo {src.major_version} but {env.name} runs Odoo {major}: "
                                   "restore it where that version runs, or pass --allow-version-change to upgrade after")
            if env.is_production and database_exists(target, target.dbname):
                from flows.backup import backup_flow
                from flows.verify import verify_flow

                pre_backup = backup_flow(env.name, kind="pre-restore", inventory=inventory)["backup_id"]
                verify_flow(pre_backup, inventory=inventory)
            target_fs, folders = platform.filestore_location(), platform.filestore_folders()
            temp_db, temp_fs, load_dir = swap.prepare_scratch(target, target.dbname, target_fs, src.description,
                                                              folders)
            try:
                db = restore_database.submit(src, target.with_dbname(temp_db))
                files = restore_filestore.submit(src, load_dir)
                db.result()
                sha1s = files.result()
                checks = verify_restored(target.with_dbname(temp_db), src, load_dir, sha1s)
                if checks["problems"]:
                    raise IntegrityError(f"the restored copy failed its checks ({len(checks['problems'])} problems, "
                                         f"first: {checks['problems'][0]}): the target was not touched")
                copy = make_it_a_copy(platform, src, target.with_dbname(temp_db), load_dir, neutralize, anonymize,
                                      rules)
                swap.place_scratch(temp_fs, load_dir, folders)
                stopped = platform.stop()
                try:
                    snapshot = swap.swap_in(target, env.name, target.dbname, target_fs, temp_db, temp_fs,
                                            src.description, folders)
                finally:
                    if stopped:
                        platform.start()
            except BaseException:
                swap.discard_scratch(target, temp_db, temp_fs, folders, load_dir)
                raise
            dropped = swap.expire_snapshots(target, env.name, folders=folders)
            after = post_checks(env, target)
    except Exception as exc:
        record_run(inv, "restore", env, parameters, f"failed: {exc}", [pre_backup] if pre_backup else [])
        raise
    rows = [{"check": k, "result": str(v)} for k, v in {**checks["summary"], **copy["summary"], **after}.items()]
    create_table_artifact(rows, key="restore-checks", description=f"Restore of {src.description} into {env.name}")
    create_markdown_artifact(
        f"## Restore into {env.name}\n\n- source: `{src.description}` ({src.kind})\n"
        f"- neutralized: **{copy['neutralized']}**, anonymized: **{copy['anonymized']}**\n"
        f"- pre-restore backup: {pre_backup or '-'}; snapshot kept: `{snapshot.database if snapshot else '-'}` "
        f"(undo: `odoops restore undo {env.name}`)\n"
        + (f"- anonymization: rows per table {copy['anonymization']['rows']}, residue scan clean\n"
           if copy["anonymized"] else ""),
        key="restore-summary")
    details = {"checks": checks["summary"], **copy["summary"], "snapshot": snapshot.database if snapshot else None,
               "dropped_snapshots": dropped, "post_checks": after}
    if copy["anonymized"]:
        details["anonymization"] = copy["anonymization"]
    record_run(inv, "restore", env, parameters, "success", [b for b in (src.backup_id, pre_backup) if b], details)
    return {"environment": env.name, "source": src.description, "neutralized": copy["neutralized"],
            "anonymized": copy["anonymized"], "snapshot": snapshot.database if snapshot else None,
            "pre_restore_backup": pre_backup, "anonymization_key": copy["summary"].get("anonymization_key"),
            **checks["summary"]}


@flow(name="restore-undo", flow_run_name=run_name("restore-undo/{environment}"))
def restore_undo_flow(environment: str, confirm: str | None = None, inventory: str | None = None) -> dict[str, Any]:
    """Put back ENVIRONMENT's state from before its last restore."""
    inv, env = resolve(environment, inventory)
    confirm_production(env, confirm)
    with environment_slot(env.name), platform_for(env) as platform, platform.database() as target:
        stopped = platform.stop()
        try:
            snapshot = swap.undo_restore(target, env.name, platform.filestore_location(),
                                         platform.filestore_folders())
        finally:
            if stopped:
                platform.start()
    record_run(inv, "restore-undo", env, {"environment": environment}, "success", [],
               {"restored_snapshot": snapshot.database})
    create_markdown_artifact(f"## Undo restore of {env.name}\n\nPut back `{snapshot.database}` from {snapshot.at}.",
                             key="restore-undo")
    return {"environment": env.name, "restored_snapshot": snapshot.database, "at": snapshot.at}

