"""Runbook: back up one Odoo environment (database + filestore + configuration).

1. Resolve the environment and its backup storage; take the environment's slot (one run at a time).
2. Open a consistent snapshot of the database and read its facts (modules, row counts, attachments).
3. Side by side: the filestore's new files, and pg_dump of that snapshot into the repository — the big
   tables apart, each linked from the previous backup instead of dumped when its fingerprint is unchanged.
4. The configuration file (secrets masked), the filestore index, then the manifest: the commit point.
5. Publish the summary artifacts and append the audit record — also when the run fails.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from odoops.fleet import backup_caps
from odoops.inventory import BACKUP_KINDS
from odoops.platforms import platform_for
from odoops.runtime import progress, record_run, repository_for, resolve, run_name
from odoops.slots import environment_slot, wait_seconds
from tasks import backup as steps
from tasks.archive import new_backup_id, now_utc


@task(cache_policy=NO_CACHE)
def dump_database(conninfo, repo, backup_id: str, snapshot_id: str, apart: list[steps.ApartTable],
                  previous: dict[tuple[str, str], dict[str, Any]]):
    return steps.dump_database_parts(conninfo, repo, backup_id, snapshot_id, apart, previous,
                                     progress=progress("database dump"))


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=3,
      retry_condition_fn=lambda task, run, state: not getattr(state.result(raise_on_failure=False), "permanent", True))
def store_filestore(platform, repo, environment: str):
    return steps.store_environment_filestore(platform, repo, environment, progress=progress("filestore"))


@task(cache_policy=NO_CACHE)
def commit_backup(env, repo, backup_id, kind, started, facts, parts, files) -> dict[str, Any]:
    parts["filestore.json"] = repo.write_index(backup_id, files.entries)
    manifest = steps.build_manifest(env, backup_id, kind, started, facts, parts, files)
    repo.commit(backup_id, manifest)
    return manifest


def _publish(manifest: dict[str, Any], storage: str) -> None:
    meta = manifest["odoops"]
    files = meta["filestore"]
    rows = [{"part": name, "bytes": p["size"], "sha256": p["sha256"][:16]} for name, p in meta["parts"].items()]
    rows.append({"part": f"filestore ({files['files']} files)", "bytes": files["bytes"],
                 "sha256": f"{files['new_objects']} new objects, {files['new_bytes']} new bytes"})
    create_table_artifact(rows, key="backup-parts", description=f"Parts of backup {meta['backup_id']}")
    missing = meta["missing_files"]
    apart = meta["database"].get("apart", [])
    create_markdown_artifact(
        f"## Backup {meta['backup_id']}\n\n"
        f"- environment **{meta['environment']}** ({meta['stage']}), kind **{meta['kind']}**, storage `{storage}`\n"
        f"- database `{manifest['db_name']}`: Odoo {manifest['version']}, {len(manifest['modules'])} modules, "
        f"{meta['database']['tables']} tables\n"
        f"- tables dumped apart: {len(apart)}, reused unchanged from the previous backup: "
        f"{sum(1 for t in apart if t['reused_from'])}\n"
        f"- filestore: {files['files']} files, {files['bytes']:,} bytes ({files['new_bytes']:,} new)\n"
        f"- attachments whose file is missing: **{len(missing)}**"
        + ("".join(f"\n  - `{m}`" for m in missing[:20]) if missing else "") + "\n",
        key="backup-summary",
    )


@flow(name="backup", log_prints=True, flow_run_name=run_name("backup/{environment}"))
def backup_flow(environment: str, kind: str = "manual", storage: str | None = None,
                inventory: str | None = None, once_since: str | None = None) -> dict[str, Any]:
    """Back up ENVIRONMENT's database, filestore and configuration into its backup storage.

    ``once_since`` (an ISO time, set by the nightly flow): when a complete backup of this kind made since
    then already exists, return it instead of backing up again: a run re-submitted after its worker died
    never backs up twice, even when the first run got as far as committing. Every backup holds one slot
    of its storage's and its database server's caps (odoops.fleet)."""
    parameters = {"environment": environment, "kind": kind, "storage": storage}
    inv, env = resolve(environment, inventory)
    if kind not in BACKUP_KINDS:
        from odoops.errors import ConfigError

        raise ConfigError(f"unknown backup kind {kind!r}: use one of {', '.join(BACKUP_KINDS)}")
    storage = storage or env.backup.storage
    backup_id = None
    try:
        repo = repository_for(inv, storage)
        with environment_slot(env.name):
            done = _already_done(repo, env.name, kind, once_since)
            if done is not None:
                record_run(inv, "backup", env, parameters, "success", [done["backup_id"]],
                           {"already_done": True, "size": done["size"], "tables_reused": done["tables_reused"]})
                return done
            with backup_caps(inv, env, storage, wait_seconds()), repo.environment_lock(env.name, "backup"), \
                    platform_for(env) as platform, platform.database() as conninfo, \
                    steps.database_snapshot(conninfo) as (conn, snapshot_id):
                backup_id, started = new_backup_id(env.name), now_utc()
                facts = steps.read_facts(conn)
                print(f"backing up {env.name} ({env.stage}) as {backup_id} into {storage}: database {facts.db_name}, "
                      f"{len(facts.modules)} modules, {len(facts.row_counts)} tables, "
                      f"{sum(facts.row_counts.values()):,} rows, {facts.size:,} bytes on the server")
                files = store_filestore.submit(platform, repo, env.name)
                apart = steps.apart_tables(conn, env.backup.tables_apart_mb)
                dump = dump_database.submit(conninfo, repo, backup_id, snapshot_id, quote(apart),
                                            quote(steps.previous_apart(repo, env.name) if apart else {}))
                parts, facts.apart = dump.result()
                reused = [t["table"] for t in facts.apart if t["reused_from"]]
                print(f"database dumped: {len(parts)} parts, {sum(p['size'] for p in parts.values()):,} bytes; "
                      f"{len(facts.apart)} big tables apart, {len(reused)} unchanged and reused"
                      + (f" ({', '.join(reused[:5])}{' …' if len(reused) > 5 else ''})" if reused else ""))
                stored = files.result()
                print(f"filestore: {len(stored.entries)} files, {stored.total_bytes:,} bytes; {stored.new_objects} "
                      f"new objects ({stored.new_bytes:,} bytes) written, the rest already in the repository")
                config = steps.store_config(platform, repo, backup_id)
                if config:
                    parts["odoo.conf"] = config
                # quote(): Prefect need not walk 20,000 index entries looking for futures in the arguments
                manifest = commit_backup(env, repo, backup_id, kind, started, quote(facts), parts, quote(stored))
    except Exception as exc:
        record_run(inv, "backup", env, parameters, f"failed: {exc}", [backup_id] if backup_id else [])
        raise
    _publish(manifest, storage)
    result = _result(manifest)
    files = manifest["odoops"]["filestore"]
    print(f"backup {backup_id} of {env.name} committed to {storage}: {result['size']:,} bytes "
          f"(database dump and {files['files']} filestore files)")
    record_run(inv, "backup", env, parameters, "success", [backup_id],
               {"missing_files": len(manifest["odoops"]["missing_files"]), "size": result["size"],
                "tables_reused": result["tables_reused"]})
    return result


def _already_done(repo, environment: str, kind: str, once_since: str | None) -> dict[str, Any] | None:
    """The newest complete backup of ``kind`` made since ``once_since``, as the flow returns it, or None."""
    if not once_since:
        return None
    from datetime import datetime

    try:
        since = datetime.fromisoformat(once_since)
    except ValueError:
        from odoops.errors import ConfigError

        raise ConfigError(f"once_since {once_since!r} is not an ISO time: write e.g. 2026-12-02T01:00:00+00:00") from None
    done = [b for b in repo.list_backups(environment) if b.kind == kind and b.created_at >= since]
    if not done:
        return None
    print(f"{environment}: backup {done[-1].id} made since {once_since} exists already: not backing up twice")
    return {**_result(repo.manifest(done[-1].id)), "already_done": True}


def _result(manifest: dict[str, Any]) -> dict[str, Any]:
    meta = manifest["odoops"]
    return {"backup_id": meta["backup_id"], "missing_files": meta["missing_files"],
            "tables_reused": [t["table"] for t in meta["database"].get("apart", []) if t["reused_from"]],
            "size": sum(p["size"] for name, p in meta["parts"].items() if name.endswith(".dump"))
            + meta["filestore"]["bytes"]}
