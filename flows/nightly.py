"""Runbook: the fleet's night — back up every environment whose schedule is due, on the worker next to it.

The inventory is the one place schedules live; this flow is the one deployment scheduled in prefect.yaml
(every 15 minutes). At each tick:

1. Read the inventory and the selection; find the environments whose cron (in their time zone) had an
   occurrence since the previous tick (a Prefect variable per selection): a late or missed tick catches
   up (one backup per environment, however many occurrences it missed), a tick never backs up twice.
2. Create one ``backup`` deployment run per due environment on its site's work pool (``odoops-<site>``;
   the flow does not wait for it to start), with the idempotency key ``nightly/<env>/<occurrence>``: a tick that runs again creates no second run.
3. Wait for them all. A run whose process or worker died (the host went down, an OOM kill) is marked
   Crashed and submitted once more (``…/retry``); that run finds a backup made since the occurrence, if
   the first got as far as committing it, and does not back up twice.
4. Publish one table artifact (environment, outcome, duration, size, reused tables) and a log line per
   environment; the flow fails, naming them, when any backup failed — the others still ran.

Caps on concurrent backups per storage and per database server are taken by each backup run itself
(odoops.fleet.backup_caps), so they hold across nights, the CLI and the UI's Run button alike.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from odoops import fleet
from odoops.errors import OdoopsError
from odoops.inventory import Environment, Inventory, load_inventory
from odoops.runtime import run_name

POLL_SECONDS = 2
LIVENESS_EVERY_SECONDS = 5
NO_WORKER_WARNING_SECONDS = 120
FIRST_LOOKBACK_MINUTES = 15  # the first tick of a selection looks back one scheduling interval


class FleetNightFailed(OdoopsError):
    """Some backups of the night failed or never ran; the others are done (see the summary artifact)."""


def _submit(client, deployments: dict[str, Any], env: Environment, occurrence: datetime, attempt: int,
            inventory: str | None) -> Any:
    """One backup run on the environment's pool; the same key returns the run Prefect already has."""
    name = f"backup/{fleet.backup_deployment_for(env)}"
    if name not in deployments:
        deployments[name] = client.read_deployment_by_name(name).id
    parameters: dict[str, Any] = {"environment": env.name, "kind": "scheduled",
                                  "once_since": occurrence.astimezone(UTC).isoformat()}
    if inventory:
        parameters["inventory"] = inventory
    return client.create_flow_run_from_deployment(
        deployments[name], parameters=parameters, idempotency_key=fleet.idempotency_key(env, occurrence, attempt),
        tags=["nightly", f"environment:{env.name}"])


def _wait(client, children: dict[str, dict[str, Any]], deployments: dict[str, Any], inventory: str | None,
          deadline: float) -> None:
    """Poll the children until each is final; a dead one is marked Crashed and submitted once more."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.states import Crashed

    logger = get_run_logger()
    last_liveness, started, warned = 0.0, time.monotonic(), set()
    while True:
        waiting = {str(c["run"].id): c for c in children.values() if not (c["run"].state and c["run"].state.is_final())}
        if not waiting or time.monotonic() > deadline:
            return
        check_liveness = time.monotonic() - last_liveness >= LIVENESS_EVERY_SECONDS
        if check_liveness:
            last_liveness = time.monotonic()
        ids = list(waiting)
        for start in range(0, len(ids), 200):  # one request per 200 runs, not one per run
            batch = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
                any_=[UUID(i) for i in ids[start:start + 200]])), limit=200)
            for run in batch:
                child = waiting[str(run.id)]
                child["run"] = run
                dead = None
                if run.state.is_crashed():
                    dead = run.state.message or "crashed"
                elif check_liveness and run.state.type.value in ("PENDING", "RUNNING"):
                    dead = fleet.child_is_dead(client, run, child["env"].name)
                    if dead:
                        client.set_flow_run_state(run.id, Crashed(message=f"odoops: {dead}"), force=True)
                        child["run"] = client.read_flow_run(run.id)
                elif (check_liveness and run.state.type.value == "SCHEDULED" and child["pool"] not in warned
                      and time.monotonic() - started > NO_WORKER_WARNING_SECONDS
                      and not fleet.pool_has_live_worker(client, child["pool"])):
                    warned.add(child["pool"])
                    logger.warning("no live worker polls work pool %s: start one there (prefect worker start --pool "
                                   "%s --type process) or its environments' backups wait until this night ends",
                                   child["pool"], child["pool"])
                if dead and child["attempt"] == 0:
                    logger.warning("%s: backup run %s died (%s); submitting it once more", child["env"].name,
                                   run.name, dead)
                    child["crashed"].append(str(run.id))
                    child["attempt"] = 1
                    child["run"] = _submit(client, deployments, child["env"], child["occurrence"], 1, inventory)
        time.sleep(POLL_SECONDS)


def _summary(inv: Inventory, children: dict[str, dict[str, Any]], since: datetime) -> list[dict[str, Any]]:
    records = fleet.backup_records(inv, [c["env"] for c in children.values()], since)
    rows = []
    for name, child in children.items():
        run = child["run"]
        record = records.get(str(run.id)) or {}
        details = record.get("details") or {}
        state = run.state.name if run.state else "unknown"
        if run.state and run.state.is_completed():
            outcome = "success" + (" (after a crash)" if child["crashed"] else "")
        elif run.state and not run.state.is_final():
            outcome = f"not finished ({state}): is a worker polling pool {child['pool']}?"
        else:
            outcome = f"{state.lower()}: {(run.state.message or '').strip()[:200]}"
        start, end = run.start_time, run.end_time
        rows.append({
            "environment": name, "outcome": outcome,
            "duration_s": round((end - start).total_seconds(), 1) if start and end else None,
            "size": details.get("size"), "reused_tables": ", ".join(details.get("tables_reused") or []),
            "backup_id": ", ".join(record.get("backup_ids") or []), "pool": child["pool"],
            "worker": (run.labels or {}).get("prefect.worker.name"), "occurrence": child["occurrence"].isoformat(),
            "flow_run": str(run.id), "crashed_runs": ", ".join(child["crashed"]),
        })
    return rows


@flow(name="nightly", log_prints=True, flow_run_name=run_name("nightly/{select}"))
def nightly_flow(select: str | None = None, inventory: str | None = None, everything: bool = False,
                 catch_up_hours: float = 24, wait_hours: float = 12) -> list[dict[str, Any]]:
    """Back up every selected environment whose inventory schedule is due (all of them with ``everything``)."""
    from prefect.client.orchestration import get_client

    logger = get_run_logger()
    inv = load_inventory(inventory)
    envs = fleet.select(inv, select) if select else list(inv.environments.values())
    until = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        previous = fleet.read_tick(client, select)
        since = max(previous or until - timedelta(minutes=FIRST_LOOKBACK_MINUTES),
                    until - timedelta(hours=catch_up_hours))
        night = [(env, until) for env in envs] if everything else fleet.due(envs, since, until)
        logger.info("tick %s: %d of %d selected environments due since %s", until.isoformat(timespec="seconds"),
                    len(night), len(envs), since.isoformat(timespec="seconds"))
        for site in sorted({env.site for env, _ in night if env.site}):
            fleet.ensure_site_deployment(client, site)
        children: dict[str, dict[str, Any]] = {}
        deployments: dict[str, Any] = {}
        for env, occurrence in night:
            children[env.name] = {"env": env, "occurrence": occurrence, "attempt": 0, "crashed": [],
                                  "pool": fleet.pool_for(env),
                                  "run": _submit(client, deployments, env, occurrence, 0, inventory)}
        # Only now: a tick that dies before submitting is caught up by the next; one that dies after is
        # harmless too, the next tick's idempotency keys find the same runs.
        if not everything:
            fleet.write_tick(client, select, until)
        _wait(client, children, deployments, inventory, time.monotonic() + wait_hours * 3600)
    rows = _summary(inv, children, until - timedelta(minutes=5))
    for row in rows:
        logger.info("%s: %s in %s s, %s bytes%s (pool %s, worker %s)", row["environment"], row["outcome"],
                    row["duration_s"], row["size"], f", reused {row['reused_tables']}" if row["reused_tables"] else "",
                    row["pool"], row["worker"])
    create_table_artifact(rows, key="nightly-summary",
                          description=f"Fleet night {until:%Y-%m-%d %H:%M} UTC: {len(rows)} environments"
                                      + (f" ({select})" if select else ""))
    failed = [r["environment"] for r in rows if not r["outcome"].startswith("success")]
    if failed:
        raise FleetNightFailed(f"{len(failed)} of {len(rows)} backups of the night did not succeed: "
                               f"{', '.join(failed[:10])}{'…' if len(failed) > 10 else ''}; the others are done: see "
                               "the nightly-summary artifact and each run's log")
    return rows

