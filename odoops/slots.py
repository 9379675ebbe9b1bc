"""One run per environment at a time, and what happens when a run dies holding its environment.

The slot is a Prefect global concurrency limit ``odoops-env-<environment>`` of 1, taken with a Prefect
lease (60 s, renewed by Prefect while the run lives). On a long-lived Prefect server that runs its
services, the server revokes the lease of a dead run by itself. But a lease lives in the server's
lease storage, in memory by default: when the CLI's temporary server dies with a killed run, or a
server restarts, the lease is forgotten while the limit's ``active_slots`` stays taken for good.

So odoops keeps its own record of the holder beside the slot, in a Prefect variable
``odoops_slot_<environment>``: runbook, flow run, host, boot id, pid and the pid's start time, lease,
and a heartbeat renewed every 15 s. A run that finds the environment busy reads the record and says
who holds it; it frees the slot itself only when the holder is provably gone (odoops.holders): on this
machine its process no longer exists (or the machine rebooted), elsewhere its heartbeat has been silent
for ``ODOOPS_SLOT_STALE_SECONDS`` (default 300). A slot busy with no record at all for 90 s (a run
killed between taking the slot and writing its record, or a slot left by an older odoops) is freed too.
A live holder is never freed; ``odoops envs unlock ENV --force`` is the person's decision for a remote
holder that stopped heart-beating.

Freeing deletes the limit and creates it again (a new id), so nothing can later decrement the new
limit for the dead lease; the dead lease is revoked too, so a frozen holder that wakes up loses its run
(Prefect ends a run whose lease renewal fails). Two freers cannot both succeed: each first creates the
variable ``odoops_slot_reclaim_<limit id>`` (one wins) and checks the holder again, while a run that
has just taken the slot writes its record and then looks for that variable, giving the slot back if it
exists. Of the two, at least one sees the other.

The wait is bounded: ``ODOOPS_SLOT_WAIT_SECONDS`` (the CLI's ``--wait``; one hour by default, for
scheduled runs queued behind a long restore), then :class:`EnvironmentBusy` names the holder and the fix.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha1
from typing import Any
from uuid import UUID

from odoops import holders
from odoops.errors import EnvironmentBusy, RefusedError

log = logging.getLogger("odoops")

LEASE_SECONDS = 60
HEARTBEAT_SECONDS = 15
ORPHAN_SECONDS = 90  # busy without any holder record: longer than any live run needs to write its record
UNLOCK_SILENCE_SECONDS = 60  # a remote holder silent this long has lost its 60 s lease too
POLL_SECONDS = 2
REPORT_EVERY_SECONDS = 30


def limit_name(environment: str) -> str:
    return f"odoops-env-{environment}"


def record_name(environment: str) -> str:
    """Prefect variable names take lowercase letters, digits, '-' and '_' only."""
    if re.fullmatch(r"[a-z0-9_-]{1,200}", environment):
        return f"odoops_slot_{environment}"
    return f"odoops_slot_{sha1(environment.encode()).hexdigest()[:16]}"


def _gate_name(limit_id: Any) -> str:
    return f"odoops_slot_reclaim_{str(limit_id).replace('-', '')}"


def stale_after() -> float:
    return float(os.environ.get("ODOOPS_SLOT_STALE_SECONDS", 300))


def wait_seconds() -> float:
    return float(os.environ.get("ODOOPS_SLOT_WAIT_SECONDS", 3600))


# ------------------------------------------------------------------ how a wait is shown

# (environment, holder line or None, seconds waited, seconds allowed); the CLI shows a status line,
# elsewhere the run's log says it once and then every 30 s.
WaitReporter = Callable[[str, str | None, float, float], None]
_wait_reporter: WaitReporter | None = None


def set_wait_reporter(reporter: WaitReporter | None) -> None:
    global _wait_reporter
    _wait_reporter = reporter


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run
        return log


def _report(environment: str, holder: str | None, waited: float, allowed: float, last: list[float]) -> None:
    """The run's log (the UI's Logs tab) says it at once and every 30 s; the CLI also shows a live line."""
    if _wait_reporter is not None:
        _wait_reporter(environment, holder, waited, allowed)
    if last and waited - last[0] < REPORT_EVERY_SECONDS:
        return
    last[:] = [waited]
    who = holder or "another run (no holder record yet)"
    _run_logger().warning("%s is busy: held by %s; waited %.0f s of %.0f s", environment, who, waited, allowed)


# ------------------------------------------------------------------ reading the state


@dataclass
class SlotState:
    """The environment's limit and its holder, as a waiting run or ``envs unlock`` sees them."""

    environment: str
    limit_id: str | None
    active_slots: int
    holder: dict[str, Any] | None
    liveness: holders.Liveness | None

    @property
    def busy(self) -> bool:
        return self.active_slots > 0

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "busy": self.busy, "limit": limit_name(self.environment),
                "active_slots": self.active_slots, "holder": self.holder,
                "holder_dead": self.liveness.dead if self.liveness else None,
                "liveness": self.liveness.reason if self.liveness else None}


def _read_record(client, environment: str) -> dict[str, Any] | None:
    variable = client.read_variable_by_name(record_name(environment))
    return variable.value if variable is not None and isinstance(variable.value, dict) else None


def _write_record(client, environment: str, record: dict[str, Any]) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    name = record_name(environment)
    try:
        client.create_variable(VariableCreate(name=name, value=record, tags=["odoops", "slot"]))
    except ObjectAlreadyExists:  # a dead holder's record, its slot since revoked by the server
        client.update_variable(VariableUpdate(name=name, value=record))


def _delete_variable(client, name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        client.delete_variable_by_name(name)
        return True
    except ObjectNotFound:
        return False


def _ensure_limit(client, environment: str):
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = limit_name(environment)
    try:
        return client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass
        return client.read_global_concurrency_limit_by_name(name)


def slot_state(client, environment: str) -> SlotState:
    from prefect.exceptions import ObjectNotFound

    try:
        limit = client.read_global_concurrency_limit_by_name(limit_name(environment))
    except ObjectNotFound:
        limit = None
    holder = _read_record(client, environment)
    live = holders.liveness(holder, stale_after()) if holder else None
    return SlotState(environment, str(limit.id) if limit else None, limit.active_slots if limit else 0, holder, live)


# ------------------------------------------------------------------ freeing a dead holder's slot


def free_slot(client, state: SlotState) -> bool:
    """Give back the slot ``state`` found taken by a dead holder (or by no holder at all).

    Returns False, touching nothing, when another run frees it at the same moment or the holder
    changed since ``state`` was read.
    """
    from prefect.client.schemas.actions import VariableCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    if state.limit_id is None:
        return False
    gate = _gate_name(state.limit_id)
    try:
        client.create_variable(VariableCreate(name=gate, value=holders.me(), tags=["odoops", "slot"]))
    except ObjectAlreadyExists:
        _drop_dead_gate(client, gate)
        return False
    try:
        current = _read_record(client, state.environment)
        dead_lease = (state.holder or {}).get("lease_id")
        if (current or {}).get("lease_id") != dead_lease:
            return False  # somebody took the slot (or wrote a record) since we looked
        if current is not None:
            _delete_variable(client, record_name(state.environment))
        try:
            client.delete_global_concurrency_limit_by_name(state.limit_id)  # by id: never a newer limit
        except ObjectNotFound:
            pass
        if dead_lease:
            client.release_concurrency_slots_with_lease(dead_lease)  # revoked: a frozen holder loses its run
        _ensure_limit(client, state.environment)
        who = holders.describe(state.holder) if state.holder else "no holder record"
        why = state.liveness.reason if state.liveness else f"busy for {ORPHAN_SECONDS} s without a holder record"
        _run_logger().warning("freed the slot of %s held by %s: %s", state.environment, who, why)
        return True
    finally:
        _delete_variable(client, gate)


def _drop_dead_gate(client, gate: str) -> None:
    """A freer killed half-way leaves its gate: without this, that limit could never be freed again."""
    variable = client.read_variable_by_name(gate)
    if variable is not None and isinstance(variable.value, dict) and \
            holders.liveness(variable.value, UNLOCK_SILENCE_SECONDS).dead:
        _delete_variable(client, gate)


def unlock(client, environment: str, force: bool) -> tuple[SlotState, bool]:
    """``odoops envs unlock``: the state, and whether it was freed. A live holder is refused."""
    state = slot_state(client, environment)
    if not state.busy:
        return state, False
    if state.holder is not None:
        state.liveness = holders.liveness(state.holder, UNLOCK_SILENCE_SECONDS)
    if not force:
        return state, False
    if state.liveness is not None and not state.liveness.dead:
        raise RefusedError(f"{environment} is held by {holders.describe(state.holder)} and that run is alive "
                           f"({state.liveness.reason}): let it finish, or stop that run first")
    if not free_slot(client, state):
        raise RefusedError(f"the slot of {environment} changed while unlocking: run odoops envs unlock again")
    return state, True


# ------------------------------------------------------------------ taking the slot


def _flow_run() -> tuple[Any, str | None, str | None]:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
    except Exception:  # noqa: BLE001
        return None, None, None
    if ctx is None or ctx.flow_run is None:
        return None, None, None
    return ctx.flow_run.id, ctx.flow_run.name, getattr(ctx.flow, "name", None)


def _try_acquire(client, environment: str) -> tuple[str, str] | None:
    """One non-blocking attempt: (lease id, limit id), or None when the slot is taken."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.exceptions import PrefectHTTPStatusError

    _ensure_limit(client, environment)
    run_id, _, _ = _flow_run()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=run_id) if run_id else None
    try:
        response = client.increment_concurrency_slots_with_lease(
            [limit_name(environment)], 1, "concurrency", LEASE_SECONDS, holder=holder)
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code == 423:
            return None
        raise
    body = response.json()
    if not body.get("limits"):  # the limit was deleted (freed) between our read and the increment
        client.release_concurrency_slots_with_lease(body["lease_id"])
        return None
    return body["lease_id"], body["limits"][0]["id"]


def _heartbeat(environment: str, lease_id: str, stop: threading.Event) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableUpdate

    with get_client(sync_client=True) as client:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                record = _read_record(client, environment)
                if record is None or record.get("lease_id") != lease_id:
                    _run_logger().error("the slot of %s was freed by someone else while this run held it "
                                        "(odoops envs unlock --force?)", environment)
                    return
                record["heartbeat"] = time.time()
                client.update_variable(VariableUpdate(name=record_name(environment), value=record))
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried at the next one
                _run_logger().warning("could not renew the heartbeat of %s: %s", environment, exc)


def _release(client, environment: str, lease_id: str) -> None:
    record = _read_record(client, environment)
    if record is not None and record.get("lease_id") == lease_id:
        _delete_variable(client, record_name(environment))
    client.release_concurrency_slots_with_lease(lease_id)


def _take(client, environment: str, timeout: float) -> str:
    """Wait for the slot, freeing it from a provably dead holder; returns the lease id."""
    started = time.monotonic()
    orphan_since: float | None = None
    reported: list[float] = []
    run_id, run_name, runbook = _flow_run()
    while True:
        taken = _try_acquire(client, environment)
        if taken is not None:
            lease_id, limit_id = taken
            try:
                _write_record(client, environment, holders.me(
                    runbook=runbook, flow_run_id=str(run_id) if run_id else None, flow_run_name=run_name,
                    lease_id=lease_id, limit_id=limit_id))
                gate = client.read_variable_by_name(_gate_name(limit_id))
            except BaseException:
                client.release_concurrency_slots_with_lease(lease_id)  # never a slot held without a record
                raise
            if gate is None or (isinstance(gate.value, dict) and
                                holders.liveness(gate.value, UNLOCK_SILENCE_SECONDS).dead):
                return lease_id
            _release(client, environment, lease_id)  # a freer is deleting this limit: take the next one
            time.sleep(POLL_SECONDS)
            continue
        state = slot_state(client, environment)
        if state.holder is not None:
            orphan_since = None
            if state.liveness is not None and state.liveness.dead and free_slot(client, state):
                continue
        elif state.busy:
            orphan_since = orphan_since or time.monotonic()
            if time.monotonic() - orphan_since >= ORPHAN_SECONDS and free_slot(client, state):
                continue
        waited = time.monotonic() - started
        line = holders.describe(state.holder) if state.holder else None
        if waited >= timeout:
            who = line or "a run that left no holder record"
            raise EnvironmentBusy(f"{environment} is busy: held by {who}; still held after {waited:.0f} s: wait "
                                  f"for it to end, or see it with odoops envs unlock {environment} (--force frees "
                                  "it once that run is gone)")
        _report(environment, line, waited, timeout, reported)
        time.sleep(POLL_SECONDS)


_held_slots: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("odoops_held_slots", default=frozenset())


@contextmanager
def environment_slot(environment: str, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold the environment for the duration of a runbook; a second run waits its turn.

    Re-entrant: a runbook that holds the slot may call another on the same environment (the restore of
    production takes its pre-restore backup inside its own slot). Outside a flow run it does nothing.
    """
    held = _held_slots.get()
    if _flow_run()[0] is None or environment in held:
        yield
        return
    from prefect.client.orchestration import get_client
    from prefect.concurrency._leases import maintain_concurrency_lease

    with get_client(sync_client=True) as client:
        lease_id = _take(client, environment, wait_seconds() if timeout_seconds is None else timeout_seconds)
        stop = threading.Event()
        beat = threading.Thread(target=contextvars.copy_context().run, args=(_heartbeat, environment, lease_id, stop),
                                daemon=True, name=f"odoops-slot-heartbeat-{environment}")
        beat.start()
        token = _held_slots.set(held | {environment})
        try:
            with maintain_concurrency_lease(UUID(lease_id), LEASE_SECONDS, raise_on_lease_renewal_failure=True):
                yield
        finally:
            _held_slots.reset(token)
            stop.set()
            beat.join(timeout=5)
            _release(client, environment, lease_id)
