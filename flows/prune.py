"""Runbook: apply the retention policy of each environment to its backup storage.

Shows what it would delete unless ``apply`` is set. Under the repository's exclusive lock (no backup
may be adding objects meanwhile) it deletes, in reverse write order: expired backups, unfinished
backups left by killed runs, then the filestore objects no kept backup references.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from odoops.inventory import load_inventory
from odoops.runtime import record_run, repository_for, run_name
from tasks.retention import plan_retention
from tasks.storage import LocalStore, S3Store


def plan_prune(inventory, environment: str | None = None) -> dict[str, Any]:
    """The plan per storage: kept backups with reasons, expired ones, incomplete ones."""
    plans: dict[str, Any] = {}
    for env in inventory.environments.values():
        if environment and env.name != environment:
            continue
        storage = env.backup.storage
        repo = repository_for(inventory, storage)
        plan = plans.setdefault(storage, {"repo": repo, "keep": {}, "delete": [], "incomplete": []})
        kept, delete = plan_retention(repo.list_backups(env.name), env.backup.keep)
        plan["keep"].update(kept)
        plan["delete"].extend(delete)
    for plan in plans.values():
        plan["incomplete"] = plan["repo"].incomplete_backups()
    return plans


@flow(name="prune-backups", flow_run_name=run_name("prune/{environment}"))
def prune_flow(environment: str | None = None, apply: bool = False, inventory: str | None = None) -> dict[str, Any]:
    """Delete backups the retention policy no longer keeps (dry run unless APPLY)."""
    inv = load_inventory(inventory)
    env = inv.environment(environment) if environment else None
    plans = plan_prune(inv, environment)
    summary: dict[str, Any] = {"apply": apply, "storages": {}}
    rows = []
    for storage, plan in plans.items():
        repo = plan["repo"]
        if apply:
            with repo.exclusive_lock("prune"):
                for backup_id in plan["delete"] + plan["incomplete"]:
                    repo.delete_backup(backup_id)
                objects, freed = repo.collect_garbage(apply=True)
                leftovers = repo.store.clean_tmp() if isinstance(repo.store, LocalStore) else 0
                if isinstance(repo.store, S3Store):
                    leftovers = repo.store.abort_incomplete_uploads()
        else:
            objects, freed = repo.collect_garbage(apply=False)
            leftovers = 0
        summary["storages"][storage] = {"kept": plan["keep"], "deleted": plan["delete"],
                                        "incomplete": plan["incomplete"], "objects": objects, "object_bytes": freed,
                                        "leftovers": leftovers}
        rows += [{"storage": storage, "backup": b, "action": "keep", "why": ", ".join(r)} for b, r in plan["keep"].items()]
        rows += [{"storage": storage, "backup": b, "action": "delete" if apply else "would delete", "why": "expired"}
                 for b in plan["delete"]]
        rows += [{"storage": storage, "backup": b, "action": "delete" if apply else "would delete",
                  "why": "incomplete (interrupted run)"} for b in plan["incomplete"]]
    if rows:
        create_table_artifact(rows, key="prune-plan", description="Retention decisions")
    create_markdown_artifact(
        f"## Prune ({'applied' if apply else 'dry run: nothing deleted'})\n\n" + "".join(
            f"- `{s}`: keep {len(v['kept'])}, {'deleted' if apply else 'would delete'} {len(v['deleted'])} expired and "
            f"{len(v['incomplete'])} incomplete backups, {v['objects']} unreferenced objects ({v['object_bytes']:,} bytes)\n"
            for s, v in summary["storages"].items()), key="prune-summary")
    deleted = [b for v in summary["storages"].values() for b in v["deleted"] + v["incomplete"]]
    record_run(inv, "prune", env, {"environment": environment, "apply": apply}, "success",
               deleted if apply else [], {"would_delete" if not apply else "deleted": len(deleted)})
    return summary
