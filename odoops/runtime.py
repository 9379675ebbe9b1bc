"""What every flow needs from its surroundings: the inventory, the repository of an environment,
one-run-per-environment limits, progress reporting and the audit record."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from odoops.audit import append_audit, make_record
from odoops.inventory import Environment, Inventory, load_inventory
from tasks.archive import Repository
from tasks.storage import open_store

log = logging.getLogger("odoops")

# The CLI installs a Rich progress here; inside a worker, progress goes to the run's log.
_progress_factory: Callable[[str, int | None], Callable[[int], None]] | None = None


def set_progress_factory(factory: Callable[[str, int | None], Callable[[int], None]] | None) -> None:
    global _progress_factory
    _progress_factory = factory


def progress(description: str, total: int | None = None) -> Callable[[int], None]:
    """A callback taking bytes done; shows a Rich bar in the CLI, logs every ~10 s elsewhere."""
    if _progress_factory is not None:
        return _progress_factory(description, total)
    state = {"done": 0, "last": time.monotonic()}
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            state["done"] += n
            if time.monotonic() - state["last"] > 10:
                state["last"] = time.monotonic()
                of = f" of {total / 1e6:.0f} MB" if total else ""
                _run_logger().info("%s: %.0f MB%s", description, state["done"] / 1e6, of)

    return advance


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run
        return log


def repository_for(inventory: Inventory, storage: str) -> Repository:
    repo = Repository(open_store(inventory.storage(storage)))
    repo.ensure_initialized()
    return repo


def audit_repository(inventory: Inventory, env: Environment | None = None) -> Repository:
    """Where the audit trail of a run goes: the environment's backup storage, else the first storage."""
    name = env.backup.storage if env else ("local" if "local" in inventory.storages else next(iter(inventory.storages)))
    return repository_for(inventory, name)


def resolve(environment: str, inventory: str | None) -> tuple[Inventory, Environment]:
    inv = load_inventory(inventory)
    return inv, inv.environment(environment)


def record_run(inventory: Inventory, runbook: str, env: Environment | None, parameters: dict[str, Any],
               outcome: str, backup_ids: list[str] | None = None, details: dict[str, Any] | None = None) -> None:
    """Append the audit record; a failure to audit is logged, never hides the run's own outcome."""
    try:
        append_audit(audit_repository(inventory, env).store,
                     make_record(runbook, env.name if env else None, parameters, outcome, backup_ids, details))
    except Exception as exc:  # noqa: BLE001
        _run_logger().error("could not write the audit record: %s", exc)


def _in_flow_run() -> bool:
    try:
        from prefect.context import FlowRunContext

        return FlowRunContext.get() is not None
    except Exception:  # noqa: BLE001
        return False


_held_slots: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("odoops_held_slots", default=frozenset())


@contextmanager
def environment_slot(environment: str, timeout_seconds: float = 3600) -> Iterator[None]:
    """A Prefect global concurrency limit of 1 per environment: a second run on it waits its turn.

    Re-entrant: a runbook that holds the slot may call another on the same environment (the restore of
    production takes its pre-restore backup inside its own slot).
    """
    held = _held_slots.get()
    if not _in_flow_run() or environment in held:
        yield
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = f"odoops-env-{environment}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass
    # The slot is a lease renewed while the run lives: a killed run frees it within lease_duration.
    with concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True, lease_duration=60):
        token = _held_slots.set(held | {environment})
        try:
            yield
        finally:
            _held_slots.reset(token)
