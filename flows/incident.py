"""Incident runbooks as one Prefect flow: explicit, dry-run by default, confirmed for production, audited.

Why one flow with an ``action`` parameter: the operator picks the remediation from one deployment in
the Prefect UI (or ``odoops incident ...``), and every action goes through the same gates in the
same order: dry run unless ``apply``; on production, ``confirm`` must repeat the environment's name;
an audit record for every run (refusals included); an applied remediation holds the environment's slot
(odoops.slots), so it never lands in the middle of a backup or restore. The remediations are plain functions in
``tasks/health.py``:

- ``terminate-idle``: ``pg_terminate_backend`` of sessions idle in transaction > ``older_than`` s;
- ``vacuum``: ``VACUUM (ANALYZE)`` of tables above ``min_dead_ratio`` and ``min_dead_tuples``;
- ``slow-log``: ``ALTER DATABASE <db> SET/RESET log_min_duration_statement`` (``slow_log`` on/off, ``ms``);
- ``restart``: stop and start Odoo through the platform, then wait for ``/web/health``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.health import artifact_key
from odoops.errors import ConfigError, OdoopsError, RefusedError
from odoops.inventory import Environment, Inventory, load_inventory
from odoops.platforms import platform_for
from odoops.runtime import record_run, run_name, tag_run
from odoops.slots import environment_slot
from tasks import health

Action = Literal["terminate-idle", "vacuum", "slow-log", "restart"]
ACTIONS: tuple[str, ...] = ("terminate-idle", "vacuum", "slow-log", "restart")


def require_confirmation(env: Environment, action: str, apply: bool, confirm: str | None) -> None:
    """The production gate: applying anything on production needs ``confirm == env.name``."""
    if apply and env.is_production and confirm != env.name:
        raise RefusedError(f"{env.name} is production: repeat its name to apply {action} "
                           f"(--confirm {env.name}); nothing was changed")


def run_action(env: Environment, action: str, apply: bool, *, older_than: float = 300, min_dead_ratio: float = 0.2,
               min_dead_tuples: int = 1000, slow_log: str = "on", ms: int = 500,
               wait_seconds: float = 60) -> health.IncidentResult:
    """Dispatch to the remediation (no Prefect, no gate: callers hold the gate)."""
    if action not in ACTIONS:
        raise ConfigError(f"unknown incident action {action!r}: use one of {', '.join(ACTIONS)}")
    if slow_log not in ("on", "off"):
        raise ConfigError(f"slow_log must be 'on' or 'off', got {slow_log!r}")
    with platform_for(env) as platform:
        if action == "restart":
            return health.restart_odoo(env, platform, apply=apply, wait_seconds=wait_seconds)
        with platform.database() as conninfo:
            if action == "terminate-idle":
                return health.terminate_idle_in_transaction(env, conninfo, older_than, apply=apply)
            if action == "vacuum":
                return health.vacuum_analyze(env, conninfo, min_dead_ratio, min_dead_tuples, apply=apply)
            return health.set_slow_query_log(env, conninfo, on=slow_log == "on", ms=ms, apply=apply)


@task(name="incident-action", cache_policy=NO_CACHE)
def action_task(env: Environment, action: str, apply: bool, options: dict[str, Any]) -> health.IncidentResult:
    """The remediation itself; never retried (a half-done restart or kill must be looked at, not repeated)."""
    return run_action(env, action, apply, **options)


def result_markdown(result: health.IncidentResult) -> str:
    mode = "applied" if result.applied else "dry run (nothing changed)"
    lines = [f"# Incident `{result.action}` on {result.environment}: {mode}", "", result.detail, ""]
    lines += [f"- {line}" for line in result.actions] or ["- nothing to do"]
    return "\n".join(lines) + "\n"


Runner = Callable[[Environment, str, bool, dict[str, Any]], health.IncidentResult]


def gate(inv: Inventory, env: Environment, action: str, apply: bool, confirm: str | None,
         options: dict[str, Any]) -> dict[str, Any]:
    """The production gate, with an audit record when it refuses; returns the run's audit parameters."""
    parameters = {"environment": env.name, "action": action, "apply": apply, "confirm": confirm, **options}
    try:
        require_confirmation(env, action, apply, confirm)
    except RefusedError as exc:
        record_run(inv, "incident", env, parameters, "refused", details={"error": str(exc)})
        raise
    return parameters


def run_incident(inv: Inventory, env: Environment, action: str, apply: bool, confirm: str | None,
                 options: dict[str, Any], runner: Runner | None = None) -> health.IncidentResult:
    """Gate, remediation, audit record: what the flow and ``odoops incident --no-prefect`` both do."""
    parameters = gate(inv, env, action, apply, confirm, options)
    try:
        result = (runner or (lambda e, a, ap, o: run_action(e, a, ap, **o)))(env, action, apply, options)
    except OdoopsError as exc:
        record_run(inv, "incident", env, parameters, "failed", details={"error": str(exc)})
        raise
    record_run(inv, "incident", env, parameters, "applied" if apply else "dry-run",
               details={"actions": result.actions, "detail": result.detail})
    return result


@flow(name="incident", log_prints=False, flow_run_name=run_name("incident/{action}/{environment}"))
def incident_flow(environment: str, action: Action, apply: bool = False, confirm: str | None = None,
                  inventory: str | None = None, older_than: float = 300, min_dead_ratio: float = 0.2,
                  min_dead_tuples: int = 1000, slow_log: Literal["on", "off"] = "on", ms: int = 500,
                  wait_seconds: float = 60) -> dict[str, Any]:
    """Run one incident remediation; a dry run unless ``apply``; production needs ``confirm=<env name>``."""
    logger = get_run_logger()
    inv = load_inventory(inventory)
    env = inv.environment(environment)
    tag_run(env)
    options = {"older_than": older_than, "min_dead_ratio": min_dead_ratio, "min_dead_tuples": min_dead_tuples,
               "slow_log": slow_log, "ms": ms, "wait_seconds": wait_seconds}
    # An applied remediation (a restart, terminated sessions) must not land in the middle of a backup or restore.
    with environment_slot(env.name) if apply else nullcontext():
        result = run_incident(inv, env, action, apply, confirm, options, runner=action_task)
    create_markdown_artifact(markdown=result_markdown(result), key=artifact_key("incident", env.name),
                             description=f"{action} on {env.name}: {'applied' if apply else 'dry run'}")
    for line in result.actions:
        logger.info("%s", line)
    return result.to_dict()
