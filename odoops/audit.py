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
    """The Prefect user/schedule that triggered the run when inside Prefect, else the OS user."""
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx and ctx.flow_run:
            created_by = getattr(ctx.flow_run, "created_by", None)
            if created_by is not None and getattr(created_by, "display_value", None):
                return f"{created_by.type.lower()}:{created_by.display_value}"
            if ctx.flow_run.auto_scheduled:
                return "schedule"
            if ctx.flow_run.deployment_id:
                return "deployment"
    except Exception:  # noqa: BLE001 - outside Prefect there is no context
        pass
    try:
        return f"user:{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # noqa: BLE001
        return f"uid:{os.getuid()}"


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
