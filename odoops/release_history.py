"""Each environment's release history: which code it ran, since when, who put it there, and how it went.

Kept in the backup storage beside the audit trail (``releases/<environment>/<time>-<id>.json``, one object
per deploy, promote or rollback, never rewritten), so it outlives Prefect's database and any version of
odoops. The release an environment runs is its newest successful record; a deploy that was rolled back
names the release it tried and leaves the one before it current. A deploy writes an ``in-progress``
record before it changes anything: a run killed half-way leaves it last, the journal ``--resume-rollback``
reads.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from odoops.audit import started_by
from odoops.inventory import Environment, Inventory
from odoops.runtime import audit_repository
from tasks import snapshot

FORMAT = 1
RUNNING_OUTCOMES = ("success",)  # a deploy, promote or rollback after which the record's release serves


def _prefix(environment: str) -> str:
    return f"releases/{environment}/"


def record_release(inventory: Inventory, env: Environment, *, action: str, release: dict[str, Any],
                   outcome: str, previous: dict[str, Any] | None = None, backup_id: str | None = None,
                   snapshot: str | None = None, modules_updated: list[str] | None = None,
                   details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Append one record. ``release``: {"commit", "ref", "path" (host) or "image"/"digest" (docker)}."""
    stamp = datetime.now(UTC)
    record = {"format": FORMAT, "time": stamp.isoformat(timespec="seconds"), "environment": env.name,
              "action": action, "release": release, "previous": previous, "outcome": outcome, "who": started_by(),
              "backup_id": backup_id, "snapshot": snapshot, "modules_updated": modules_updated or [],
              "details": details or {}}
    key = f"{_prefix(env.name)}{stamp:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}.json"
    audit_repository(inventory, env).store.put_bytes(key, json.dumps(record, sort_keys=True, default=str).encode())
    return record


def read_releases(inventory: Inventory, env: Environment) -> list[dict[str, Any]]:
    """Every record of ``env``, oldest first."""
    store = audit_repository(inventory, env).store
    return [json.loads(store.get_bytes(key)) for key in sorted(k for k in store.list(_prefix(env.name))
                                                               if k.endswith(".json"))]


def current(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The record whose release serves now (None before the first deploy)."""
    return next((r for r in reversed(records) if r["outcome"] in RUNNING_OUTCOMES), None)


def interrupted_change(inventory: Inventory, env: Environment, target) -> str | None:
    """A change a killed run left half-done (a snapshot still in progress, or a deploy's in-progress record
    left last), as one line naming the command that puts things back; None when there is none."""
    pending = snapshot.interrupted(target, env.name)
    if pending is not None:
        runbook = pending.reason.split()[0]
        return (f"the last {runbook} of {env.name} was interrupted ({pending.reason}, {pending.at}): put the previous state "
                f"back with odoops {runbook} {env.name} --resume-rollback")
    records = read_releases(inventory, env)
    if records and records[-1]["outcome"] == "in-progress":
        return (f"the last deploy of {env.name} was interrupted ({records[-1]['release']['commit'][:12]}, "
                f"{records[-1]['time']}): put the previous release back with odoops deploy {env.name} --resume-rollback")
    return None
