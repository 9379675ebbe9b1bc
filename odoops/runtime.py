"""What every flow needs from its surroundings: the inventory, the repository of an environment,
progress reporting and the audit record (one run per environment: odoops.slots)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from odoops.audit import append_audit, make_record
from odoops.inventory import Environment, Inventory, load_inventory
from tasks.archive import Repository, open_repository

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
    return open_repository(inventory.storage(storage))


def audit_repository(inventory: Inventory, env: Environment | None = None) -> Repository:
    """Where the audit trail of a run goes: the environment's backup storage, else the first storage."""
    name = env.backup.storage if env else ("local" if "local" in inventory.storages else next(iter(inventory.storages)))
    return repository_for(inventory, name)


def resolve(environment: str, inventory: str | None) -> tuple[Inventory, Environment]:
    inv = load_inventory(inventory)
    env = inv.environment(environment)
    tag_run(env)
    return inv, env


def tag_run(env: Environment) -> None:
    """Tag the running flow run ``runbook:<flow>``, ``environment:<name>``, ``stage:<stage>``: the UI's run
    list filters on them. Outside a flow run it does nothing; a failure to tag never fails the run."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx is None or ctx.flow_run is None:
            return
        wanted = [f"runbook:{ctx.flow.name}", f"environment:{env.name}", f"stage:{env.stage}"]
        tags = list(dict.fromkeys([*(ctx.flow_run.tags or []), *wanted]))
        if tags != list(ctx.flow_run.tags or []):
            with get_client(sync_client=True) as client:
                client.update_flow_run(ctx.flow_run.id, tags=tags)
    except Exception as exc:  # noqa: BLE001
        _run_logger().warning("could not tag the run: %s", exc)


def record_run(inventory: Inventory, runbook: str, env: Environment | None, parameters: dict[str, Any],
               outcome: str, backup_ids: list[str] | None = None, details: dict[str, Any] | None = None) -> None:
    """Append the audit record; a failure to audit is logged, never hides the run's own outcome."""
    try:
        append_audit(audit_repository(inventory, env).store,
                     make_record(runbook, env.name if env else None, parameters, outcome, backup_ids, details))
    except Exception as exc:  # noqa: BLE001
        _run_logger().error("could not write the audit record: %s", exc)


def run_name(template: str) -> Callable[[], str]:
    """Name a flow run after what it does, e.g. ``backup/{environment}`` → ``backup/production/2026-12-02T02:00``.

    The UI's run list then says which environment each run touched (Prefect's default is a random
    ``adjective-animal``). Parameters fill the template, shortened: a path by its file name, a list joined.
    """
    def name() -> str:
        import string
        from datetime import UTC, datetime

        from prefect.runtime import flow_run

        values = {key: _short(value) for key, value in (flow_run.parameters or {}).items()}
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        text = template.format(**{f: values.get(f) or "-" for f in fields})
        return f"{text}/{datetime.now(UTC):%Y-%m-%dT%H:%M}"

    return name


def _short(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_short(v) for v in value)[:60]
    text = "" if value is None or value is False else str(value)
    return (text.rsplit("/", 1)[-1] if "/" in text else text)[:60]
