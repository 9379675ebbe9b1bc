"""The fleet: which environments a command or a night touches, when each is due, where its run goes and
how many backups run at once.

- **Selection** (``--select name=shop-*,stage=production,label=eu,site=a``): one parser for every fleet
  command and the nightly flow. Terms are ``key=value`` separated by commas; the same key twice means
  either value, different keys must all hold; values are shell-style patterns (``shop-*``).
- **Schedules** live only in the inventory (``backup.schedule`` + ``backup.timezone``). The nightly flow,
  scheduled once, asks :func:`due` which environments had an occurrence since its previous tick
  (several missed occurrences give one backup, never one per occurrence).
- **Routing**: an environment with ``site: eu`` runs on work pool ``odoops-eu`` (the worker next to its
  database); without a site, on ``odoops``.
- **Caps**: Prefect global concurrency limits ``odoops-storage-<name>`` and
  ``odoops-dbserver-<host:port>`` (sizes from the inventory's ``fleet:`` block) held by every backup.
- **Dead child runs**: :func:`child_is_dead` tells the nightly flow a backup run whose process or worker
  is gone, so it can be marked crashed and submitted once more.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from odoops.errors import ConfigError
from odoops.inventory import STAGES, Environment, Inventory

DEFAULT_POOL = "odoops"
SELECT_KEYS = ("name", "stage", "label", "site")
# A worker whose heartbeat is older than this many of its own intervals is gone (Prefect marks it
# OFFLINE after 3 missed beats too); its runs that never took their environment's slot are dead.
WORKER_MISSED_BEATS = 3
PENDING_STUCK_SECONDS = 120
CAP_LEASE_SECONDS = 60


# ------------------------------------------------------------------ selection


@dataclass(frozen=True)
class Selection:
    """``key -> patterns``; an environment matches when every key has a matching pattern."""

    terms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    text: str = ""

    def matches(self, env: Environment) -> bool:
        values = {"name": [env.name], "stage": [env.stage], "label": list(env.labels), "site": [env.site or ""]}
        return all(any(fnmatch.fnmatchcase(v, p) for v in values[key] for p in patterns)
                   for key, patterns in self.terms.items())


def parse_selection(text: str | None) -> Selection:
    """``name=a,stage=production,label=eu`` → Selection; a bare word is a name. Bad terms name the fix."""
    terms: dict[str, list[str]] = {}
    for raw in (text or "").split(","):
        term = raw.strip()
        if not term:
            continue
        key, sep, value = term.partition("=")
        key, value = (key.strip(), value.strip()) if sep else ("name", key.strip())
        if key not in SELECT_KEYS:
            raise ConfigError(f"--select: unknown key {key!r} in {term!r}: use {', '.join(k + '=' for k in SELECT_KEYS)}"
                              " (e.g. --select stage=production,label=eu)")
        if not value:
            raise ConfigError(f"--select: {term!r} has no value: write {key}=VALUE")
        if key == "stage" and not any(fnmatch.fnmatchcase(s, value) for s in STAGES):
            raise ConfigError(f"--select: stage {value!r} is not one of {', '.join(STAGES)}: use one of them")
        terms.setdefault(key, []).append(value)
    return Selection({k: tuple(v) for k, v in terms.items()}, (text or "").strip())


def select(inventory: Inventory, selection: str | Selection | None) -> list[Environment]:
    """The environments ``selection`` names, in inventory order; an empty result is an error (a typo)."""
    sel = selection if isinstance(selection, Selection) else parse_selection(selection)
    chosen = [env for env in inventory.environments.values() if sel.matches(env)]
    if not chosen:
        raise ConfigError(f"--select {sel.text!r} matches no environment of {inventory.path}: known environments are "
                          f"{', '.join(sorted(inventory.environments))}")
    return chosen


# ------------------------------------------------------------------ schedules


def _occurrences(env: Environment, start: datetime, reverse: bool = False) -> Iterator[datetime]:
    """Occurrences strictly after (before, with ``reverse``) ``start``'s minute, in UTC."""
    from cronsim import CronSim

    zone = ZoneInfo(env.backup.timezone)
    # cronsim works in the datetime's own zone, wall-clock rules included (a 02:30 that does not exist
    # on the spring-forward night runs at 03:00, a repeated hour runs once)
    for when in CronSim(env.backup.schedule, start.astimezone(zone).replace(second=0, microsecond=0), reverse=reverse):
        yield when.astimezone(UTC)


def last_occurrence(env: Environment, since: datetime, until: datetime) -> datetime | None:
    """The newest occurrence of the environment's schedule in ``(since, until]``, or None."""
    if not env.backup.schedule:
        return None
    when = next(_occurrences(env, until + timedelta(minutes=1), reverse=True), None)
    return when if when is not None and since < when <= until else None


def next_occurrence(env: Environment, after: datetime) -> datetime | None:
    """The first occurrence strictly after ``after``, or None without a schedule."""
    if not env.backup.schedule:
        return None
    return next(_occurrences(env, after), None)


def due(environments: list[Environment], since: datetime, until: datetime) -> list[tuple[Environment, datetime]]:
    """(environment, occurrence) for each environment whose schedule fell in ``(since, until]``."""
    out = []
    for env in environments:
        when = last_occurrence(env, since, until)
        if when is not None:
            out.append((env, when))
    return out


def idempotency_key(env: Environment, occurrence: datetime, attempt: int = 0) -> str:
    """``nightly/<env>/<occurrence>``: Prefect creates one run per key, so a tick seen twice backs up once."""
    key = f"nightly/{env.name}/{occurrence.astimezone(UTC):%Y-%m-%dT%H:%MZ}"
    return key + "/retry" * attempt


# ------------------------------------------------------------------ routing


def pool_for(env: Environment) -> str:
    return f"{DEFAULT_POOL}-{env.site}" if env.site else DEFAULT_POOL


def backup_deployment_for(env: Environment) -> str:
    """``backup`` (pool odoops) or the site's copy ``backup-<site>`` (pool odoops-<site>)."""
    return f"backup-{env.site}" if env.site else "backup"


def ensure_site_deployment(client, site: str) -> str:
    """Create or refresh ``backup/backup-<site>``: the ``backup`` deployment on pool ``odoops-<site>``.

    Sites live in the inventory only, so their deployments are derived here rather than written by hand
    in prefect.yaml; Prefect updates a deployment of the same flow and name in place."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    pool = f"{DEFAULT_POOL}-{site}"
    try:
        client.read_work_pool(pool)
    except ObjectNotFound:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists:
            pass
    base = client.read_deployment_by_name("backup/backup")
    client.create_deployment(
        flow_id=base.flow_id, name=f"backup-{site}", work_pool_name=pool, entrypoint=base.entrypoint, path=base.path,
        pull_steps=base.pull_steps, parameters=base.parameters, job_variables=base.job_variables,
        parameter_openapi_schema=base.parameter_openapi_schema, enforce_parameter_schema=base.enforce_parameter_schema,
        description=f"{base.description or 'Back up one environment.'} Runs on the workers of site {site}.",
        tags=list(base.tags or []),
    )
    return f"backup/backup-{site}"


# ------------------------------------------------------------------ caps


def _limit_safe(text: str) -> str:
    return re.sub(r"[/%&<>\s]", "_", text)


def storage_limit(storage: str) -> str:
    return f"odoops-storage-{_limit_safe(storage)}"


def db_server_of(env: Environment) -> str:
    """``host:port`` of the environment's PostgreSQL server, as its dsn names it (an Odoo.sh build's
    database, reached through its shell, is keyed by the build's SSH host)."""
    from psycopg.conninfo import conninfo_to_dict

    if not env.database.dsn:
        return env.ssh.host if env.ssh else env.name
    params = conninfo_to_dict(env.database.dsn)
    return f"{params.get('host') or 'localhost'}:{params.get('port') or '5432'}"


def db_server_limit(env: Environment) -> str:
    return f"odoops-dbserver-{_limit_safe(db_server_of(env))}"


def ensure_limit(client, name: str, limit: int) -> None:
    """Create the global concurrency limit, or set its size to the inventory's when it changed."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        current = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            return
        except ObjectAlreadyExists:
            current = client.read_global_concurrency_limit_by_name(name)
    if current.limit != limit:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit))


def caps_record(environment: str) -> str:
    """The Prefect variable naming the caps lease a backup of ``environment`` holds."""
    from odoops.slots import record_name

    return record_name(environment).replace("odoops_slot_", "odoops_caps_", 1)


def _take_caps(client, names: list[str], run_id, timeout_seconds: float, environment: str) -> str:
    """One lease on every cap at once (Prefect increments all or none); waits while they are full."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.exceptions import PrefectHTTPStatusError

    from odoops.errors import LockedError

    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names, 1, "concurrency", CAP_LEASE_SECONDS, holder=ConcurrencyLeaseHolder(type="flow_run", id=run_id))
            return response.json()["lease_id"]
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 423:
                raise
        if time.monotonic() > deadline:
            raise LockedError(f"{environment}: no backup slot on {' / '.join(names)} after {timeout_seconds:.0f} s: "
                              "other backups hold them; raise fleet.max_backups_per_storage / "
                              "max_backups_per_db_server in the inventory, or wait")
        time.sleep(1)


@contextmanager
def backup_caps(inventory: Inventory, env: Environment, storage: str, timeout_seconds: float) -> Iterator[None]:
    """Hold one slot of the storage's and the database server's caps for the duration of a backup.

    Call it holding the environment's slot: then a caps lease recorded for this environment
    (``odoops_caps_<env>``) can only be a dead run's — the run before it lost its slot — and is given back
    at once, instead of when its 60 s lease expires. Outside a flow run it does nothing."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        yield
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    names = {storage_limit(storage): inventory.fleet.max_backups_per_storage,
             db_server_limit(env): inventory.fleet.max_backups_per_db_server}
    record = caps_record(env.name)
    with get_client(sync_client=True) as client:
        for name, size in names.items():
            ensure_limit(client, name, size)
        left = client.read_variable_by_name(record)
        if left is not None and isinstance(left.value, str):  # an unknown (expired) lease is a no-op
            client.release_concurrency_slots_with_lease(UUID(left.value))
        lease_id = _take_caps(client, list(names), ctx.flow_run.id, timeout_seconds, env.name)
        try:
            try:
                client.create_variable(VariableCreate(name=record, value=lease_id, tags=["odoops", "caps"]))
            except ObjectAlreadyExists:
                client.update_variable(VariableUpdate(name=record, value=lease_id))
            with maintain_concurrency_lease(UUID(lease_id), CAP_LEASE_SECONDS, raise_on_lease_renewal_failure=True):
                yield
        finally:
            client.release_concurrency_slots_with_lease(UUID(lease_id))
            try:
                client.delete_variable_by_name(record)
            except ObjectNotFound:
                pass


# ------------------------------------------------------------------ the night's bookkeeping


def tick_variable(selection: str | None) -> str:
    """The Prefect variable holding the previous tick of the nightly flow for this selection."""
    from hashlib import sha1

    text = (selection or "").strip()
    return "odoops_nightly_tick" + (f"_{sha1(text.encode()).hexdigest()[:12]}" if text else "")


def read_tick(client, selection: str | None) -> datetime | None:
    variable = client.read_variable_by_name(tick_variable(selection))
    if variable is None or not isinstance(variable.value, str):
        return None
    return datetime.fromisoformat(variable.value)


def write_tick(client, selection: str | None, when: datetime) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    name, value = tick_variable(selection), when.astimezone(UTC).isoformat()
    try:
        client.create_variable(VariableCreate(name=name, value=value, tags=["odoops", "nightly"]))
    except ObjectAlreadyExists:
        client.update_variable(VariableUpdate(name=name, value=value))


def child_is_dead(client, run, environment: str) -> str | None:
    """Why a not-yet-final backup run is provably gone, or None while it may still be alive.

    - Its environment's slot record (odoops.slots) names it: its process is gone (same machine), or its
      heartbeat has been silent for ``ODOOPS_SLOT_STALE_SECONDS`` (elsewhere).
    - No record names it yet: the worker that took it (the run's ``prefect.worker.name`` label) missed
      three heartbeats; a run still pending with no worker label after two minutes, likewise.

    Calling a live run dead costs nothing but a wait: the re-submitted run and the first one both carry
    ``once_since``, so whichever takes the environment's slot second finds the backup and stops."""
    from odoops import holders
    from odoops.slots import slot_state, stale_after

    if run.state is None or run.state.type.value not in ("PENDING", "RUNNING"):
        return None
    state = slot_state(client, environment)
    if state.holder and state.holder.get("flow_run_id") == str(run.id):
        live = holders.liveness(state.holder, stale_after())
        return f"its process is gone ({live.reason})" if live.dead else None
    worker = (run.labels or {}).get("prefect.worker.name")
    if not worker or not run.work_pool_name:
        age = (datetime.now(UTC) - run.state.timestamp).total_seconds() if run.state.timestamp else 0
        if run.state.type.value == "PENDING" and age > PENDING_STUCK_SECONDS:
            return f"pending for {age:.0f} s and no worker runs it"
        return None
    for w in client.read_workers_for_work_pool(run.work_pool_name):
        if w.name == worker and w.last_heartbeat_time is not None:
            silent = time.time() - w.last_heartbeat_time.timestamp()
            if silent > WORKER_MISSED_BEATS * (w.heartbeat_interval_seconds or 30):
                return f"its worker {worker} has not heart-beaten for {silent:.0f} s"
    return None


def pool_has_live_worker(client, pool: str) -> bool:
    """Whether any worker of ``pool`` heart-beat within three of its intervals (runs there will start)."""
    from prefect.exceptions import ObjectNotFound

    try:
        workers = client.read_workers_for_work_pool(pool)
    except ObjectNotFound:
        return False
    return any(w.last_heartbeat_time is not None and time.time() - w.last_heartbeat_time.timestamp()
               <= WORKER_MISSED_BEATS * (w.heartbeat_interval_seconds or 30) for w in workers)


def backup_records(inventory: Inventory, environments: list[Environment], since: datetime) -> dict[str, dict[str, Any]]:
    """The backup audit records written since ``since`` by runs on these environments, by flow run id.

    Only the audit months from ``since`` on are listed, so a night costs the same in the tenth year."""
    import json

    from odoops.runtime import audit_repository

    names = {env.name for env in environments}
    stores = {env.backup.storage: audit_repository(inventory, env).store for env in environments}
    months = sorted({f"{since:%Y-%m}", f"{datetime.now(UTC):%Y-%m}"})
    first = f"{since.astimezone(UTC):%Y%m%dT%H%M%S}"
    out: dict[str, dict[str, Any]] = {}
    for store in stores.values():
        for month in months:
            for key in sorted(store.list(f"audit/{month}/")):
                if not key.endswith(".json") or key.rsplit("/", 1)[-1] < first:
                    continue
                try:
                    record = json.loads(store.get_bytes(key))
                except (ValueError, OSError):
                    continue
                if record.get("runbook") == "backup" and record.get("environment") in names and record.get("flow_run_id"):
                    out[record["flow_run_id"]] = record
    return out
