"""The audit trail: one append-only JSON line per runbook run, kept with the backups.

It lives in the backup storage (``audit/<year-month>/<time>-<run>.json``, one object per record, never
rewritten), so it survives a reset of Prefect's database and is as durable as the backups it speaks of.
Parameters are redacted before they are written: secrets never reach it.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

from odoops.redact import redact


def started_by() -> str:
    """Who or what started the run, for the audit record and the release history.

    ``schedule:<slug>`` a deployment's schedule (e.g. ``schedule:nightly-production``);
    ``automation:<name>`` a Prefect automation's run-deployment action;
    ``deployment:<name> (UI or API)`` a deployment run started from the UI's Run button or through the API
    (``prefect deployment run``, a script): Prefect's open-source server has no users, so it cannot say who;
    ``prefect-user:<name>`` a Prefect Cloud user; ``user:<os user>@<host>`` the CLI or a script running the
    flow itself. A subflow (the backup a restore takes first) names what started its parent.
    """
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx and ctx.flow_run:
            origin = _prefect_origin(ctx.flow_run)
            if origin:
                return origin
    except Exception:  # noqa: BLE001 - outside Prefect (or its API unreachable) the OS user is the answer
        pass
    try:
        return f"user:{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # noqa: BLE001
        return f"uid:{os.getuid()}"


def _prefect_origin(flow_run: Any, depth: int = 0) -> str | None:
    """What Prefect knows of who created ``flow_run`` (None: nobody but the process running it)."""
    created_by = getattr(flow_run, "created_by", None)
    if created_by is not None and getattr(created_by, "display_value", None):
        kind = str(created_by.type).lower()
        return f"{'prefect-user' if kind == 'user' else kind}:{created_by.display_value}"
    if flow_run.auto_scheduled:
        return "schedule"
    if flow_run.deployment_id is None and flow_run.parent_task_run_id is None:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        if flow_run.deployment_id is not None:
            return f"deployment:{client.read_deployment(flow_run.deployment_id).name} (UI or API)"
        if depth >= 5:
            return None
        parent_task = client.read_task_run(flow_run.parent_task_run_id)
        if parent_task.flow_run_id is None:
            return None
        parent = client.read_flow_run(parent_task.flow_run_id)
    return _prefect_origin(parent, depth + 1)


def _flow_run_id() -> str | None:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    except Exception:  # noqa: BLE001
        return None


def make_record(runbook: str, environment: str | None, parameters: dict[str, Any], outcome: str,
                backup_ids: list[str] | None = None, details: dict[str, Any] | None = None,
                who: str | None = None) -> dict[str, Any]:
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "runbook": runbook,
        "environment": environment,
        "who": who or started_by(),
        "flow_run_id": _flow_run_id(),
        "parameters": redact(parameters),
        "outcome": outcome,
        "backup_ids": backup_ids or [],
        "details": redact(details or {}),
    }


def append_audit(store, record: dict[str, Any]) -> str:
    """Write one record as a new object in ``store`` (a tasks.storage.Store); returns its key."""
    stamp = datetime.now(UTC)
    key = f"audit/{stamp:%Y-%m}/{stamp:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}.json"
    store.put_bytes(key, json.dumps(record, sort_keys=True).encode())
    return key


def read_audit(store, environment: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Records oldest first (optionally one environment's, optionally the last ``limit``)."""
    records = []
    for key in sorted(k for k in store.list("audit/") if k.endswith(".json")):
        try:
            record = json.loads(store.get_bytes(key))
        except (ValueError, OSError):
            continue
        if environment is None or record.get("environment") == environment:
            records.append(record)
    return records[-limit:] if limit else records
