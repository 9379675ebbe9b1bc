"""Rollback runbook: back to the release and state before an environment's last deploy or upgrade, after it
succeeded.

A deploy or upgrade that failed rolls itself back. One that succeeded and updated no module changed only
the code: going back points the code at the previous release and restarts, nothing else. One that updated
modules keeps its snapshot (tasks/snapshot.py): the old code may not run on the new schema, so going back
replaces the database and filestore with the snapshot, and every write made since is lost from the live
state. Hence:

1. Without ``restore_data`` nothing is touched: the run says what would be lost (time since the snapshot,
   tables whose row count changed) and how to go ahead.
2. With it: production must be confirmed by name and gets a fresh, verified backup; Odoo is stopped; the
   snapshot is renamed into place and the replaced state is **kept** as a snapshot in its turn (the way
   forward again); the code link points back at the release the upgrade left; Odoo is started and verified.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.changes import previous_release, requirements, verify_serving
from odoops import release_history
from odoops.errors import RefusedError
from odoops.platforms import platform_for
from odoops.runtime import record_run, resolve, run_name
from odoops.slots import environment_slot
from tasks import snapshot
from tasks.postgres import ConnInfo, connect, table_row_counts
from tasks.restore_steps import confirm_production


def same_code(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """A host release is its folder, a container release its image."""
    return (a.get("path"), a.get("image")) == (b.get("path"), b.get("image"))


def writes_since(target: ConnInfo, snap: snapshot.Snapshot) -> dict[str, Any]:
    """What going back would lose from the live state: time since the snapshot, tables with other row counts."""
    with connect(target) as conn:
        now = table_row_counts(conn)
    with connect(target.with_dbname(snap.database)) as conn:
        then = table_row_counts(conn)
    changed = {t: now.get(t, 0) - then.get(t, 0) for t in sorted(set(now) | set(then)) if now.get(t) != then.get(t)}
    seconds = (datetime.now(UTC) - datetime.fromisoformat(snap.at)).total_seconds()
    return {"since": snap.at, "seconds": round(seconds), "tables_changed": changed,
            "summary": f"{seconds / 3600:.1f} h of writes since {snap.at[:19]} UTC; row counts differ in "
                       f"{len(changed)} table(s)" + (f" ({', '.join(list(changed)[:5])}…)" if changed else "")
                       + " (rows updated in place are not counted)"}


@flow(name="rollback", flow_run_name=run_name("rollback/{environment}"))
def rollback_flow(environment: str, restore_data: bool = False, confirm: str | None = None,
                  inventory: str | None = None) -> dict[str, Any]:
    """Put ENVIRONMENT back as it was before its last upgrade (database, filestore, code); needs RESTORE_DATA."""
    parameters = {"environment": environment, "restore_data": restore_data, "confirm": confirm}
    inv, env = resolve(environment, inventory)
    requirements(env, "a rollback")
    if restore_data:
        confirm_production(env, confirm)
    try:
        with environment_slot(env.name), platform_for(env) as platform, platform.database() as target:
            records = release_history.read_releases(inv, env)
            running = release_history.current(records)
            kept = [s for s in snapshot.snapshots(target, env.name) if s.state == "kept"]
            if running is not None and not running["modules_updated"] and \
                    (running["previous"].get("path") or running["previous"].get("image")) and \
                    (not kept or kept[0].at < running["time"]):
                result = _code_only(inv, env, platform, target, running)
                record_run(inv, "rollback", env, parameters, result["outcome"], details=result)
                return result
            if not kept:
                raise RefusedError(f"{env.name} has no snapshot to go back to (a successful upgrade keeps one)")
            last = kept[0]
            lost = writes_since(target, last)
            if not restore_data:
                raise RefusedError(f"going back to {env.name} before its {last.reason} replaces its database and "
                                   f"filestore with that snapshot: {lost['summary']} would be lost from the live "
                                   f"state (kept aside as a snapshot): run again with --restore-data to do it")
            if env.is_production:
                from flows.backup import backup_flow
                from flows.verify import verify_flow

                backup_id = backup_flow(env.name, kind="pre-upgrade", inventory=inventory)["backup_id"]
                verify_flow(backup_id, inventory=inventory)
                parameters["backup_id"] = backup_id
            platform.stop()
            try:
                replaced = snapshot.put_back(target, last, keep_replaced=f"state before the rollback of {last.reason}",
                                             folders=platform.filestore_folders())
                back_to = previous_release(last.code)
                if back_to is not None:
                    left = platform.switch_release(back_to)
                    if replaced is not None:
                        snapshot.annotate(target, replaced, code={"previous": left})
                    if running is not None and same_code(running["release"], left):
                        release_history.record_release(inv, env, action="rollback", release=running["previous"],
                                                       previous=running["release"], outcome="success",
                                                       snapshot=replaced.database if replaced else None)
            finally:
                platform.start()
            checks = verify_serving(env, target)
    except Exception as exc:
        record_run(inv, "rollback", env, parameters, f"failed: {exc}")
        raise
    result = {"environment": env.name, "back_to": last.at, "reason": last.reason, "lost_from_live": lost,
              "replaced_kept_as": replaced.database if replaced else None, "checks": checks}
    outcome = "success" if not checks["problems"] else f"rolled back, but: {checks['problems'][0]}"
    create_markdown_artifact(f"# Rollback of {env.name}: {outcome}\n\nBack to the state before its {last.reason} "
                             f"({last.at}). The replaced state is kept as `{result['replaced_kept_as']}`.\n",
                             key=f"rollback-{env.name.lower().replace('_', '-')}")
    record_run(inv, "rollback", env, parameters, outcome, [parameters["backup_id"]] if "backup_id" in parameters
               else [], {k: result[k] for k in ("back_to", "reason", "lost_from_live", "replaced_kept_as")})
    return result


def _code_only(inv, env, platform, target: ConnInfo, running: dict[str, Any]) -> dict[str, Any]:
    """The release being left updated no module: the previous code runs on this schema, the data stays."""
    platform.stop()
    try:
        platform.switch_release(running["previous"])
    finally:
        platform.start()
    checks = verify_serving(env, target)
    outcome = "success" if not checks["problems"] else f"rolled back, but: {checks['problems'][0]}"
    release_history.record_release(inv, env, action="rollback", release=running["previous"],
                                   previous=running["release"], outcome=outcome)
    back_to = running["previous"].get("commit") or running["previous"].get("path") or running["previous"]["image"]
    create_markdown_artifact(f"# Rollback of {env.name}: {outcome}\n\nBack to release `{back_to}` (code only: the "
                             f"release left, `{running['release'].get('commit') or running['release'].get('image')}`, updated no module; "
                             "no data changed).\n",
                             key=f"rollback-{env.name.lower().replace('_', '-')}")
    left = running["release"].get("commit") or running["release"].get("image") or "?"
    return {"environment": env.name, "outcome": outcome, "back_to": back_to, "reason": f"{running['action']} of "
            f"{left[:19]}", "code_only": True, "lost_from_live": None,
            "replaced_kept_as": None, "checks": checks}
