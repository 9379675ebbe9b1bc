"""Rollback runbook: back to the state before an environment's last upgrade, after it succeeded.

An upgrade that failed rolls itself back. One that succeeded keeps its snapshot (tasks/snapshot.py);
going back to it later replaces the database and filestore with the snapshot, so every write made since
is lost from the live state. Hence:

1. Without ``restore_data`` nothing is touched: the run says what would be lost (time since the snapshot,
   tables whose row count changed) and how to go ahead.
2. With it: production must be confirmed by name and gets a fresh, verified backup; Odoo is stopped; the
   snapshot is renamed into place and the replaced state is **kept** as a snapshot in its turn (the way
   forward again); the code link points back at the release the upgrade left; Odoo is started and verified.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.upgrade import _requirements, verify_serving
from odoops.errors import RefusedError
from odoops.platforms import platform_for
from odoops.runtime import record_run, resolve, run_name
from odoops.slots import environment_slot
from tasks import releases, snapshot
from tasks.postgres import ConnInfo, connect, table_row_counts
from tasks.restore_steps import confirm_production


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
    _requirements(env)
    if restore_data:
        confirm_production(env, confirm)
    try:
        with environment_slot(env.name), platform_for(env) as platform, platform.database() as target:
            kept = [s for s in snapshot.snapshots(target, env.name) if s.state == "kept"]
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
                replaced = snapshot.put_back(target, last, keep_replaced=f"state before the rollback of {last.reason}")
                if last.code:
                    link = Path(last.code["link"])
                    left = releases.point_link(link, Path(last.code["previous"]))
                    if replaced is not None:
                        snapshot.annotate(target, replaced, code={"link": str(link), "previous": str(left)})
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
