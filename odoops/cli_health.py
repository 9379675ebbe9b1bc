"""``odoops health`` and ``odoops incident ...``: the health runbook and its remediations from a shell.

Why here: operators and monitoring scripts want one command whose exit status is the verdict, and
an incident responder wants the remediation named, shown first (dry run) and applied only on
purpose. Exit codes of ``odoops health``: 0 ok, 1 warn, 2 critical, 4 error (bad inventory,
unknown environment, usage error) so a monitoring system never mistakes a typo for an outage.
``odoops incident`` exits 0 when done (or shown), 2 on any error or refusal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from odoops.errors import OdoopsError
from odoops.inventory import inventory_path, load_inventory
from odoops.platforms import platform_for
from tasks.health import EXIT_ERROR

INCIDENT_EXIT_ERROR = 2
STATUS_STYLE = {"ok": "green", "warn": "yellow", "critical": "bold red", "skipped": "dim"}

InventoryOpt = Annotated[Path | None, typer.Option(
    "--inventory", "-i", help="Inventory file (default deployments/environments.yaml or $ODOOPS_INVENTORY).",
    dir_okay=False)]
PrefectOpt = Annotated[bool, typer.Option(
    "--prefect/--no-prefect", help="Run as the Prefect flow (state, artifacts) or as plain functions.")]


def _fail(exc: BaseException, code: int) -> None:
    """One red ``error: ...`` line on stderr, then exit ``code``."""
    typer.secho(f"error: {' '.join(str(exc).split())}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def _usage_errors() -> tuple[type[Exception], ...]:
    """click's UsageError, and the copy of click that recent typer releases vendor."""
    types: list[type[Exception]] = [click.UsageError]
    try:
        from typer._click.exceptions import UsageError as VendoredUsageError

        types.append(VendoredUsageError)
    except ImportError:  # typer using the click package itself
        pass
    return tuple(types)


class _HealthCommand(TyperCommand):
    """Usage errors exit 4 (not click's 2), so they never read as "critical"."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _usage_errors() as exc:
            exc.exit_code = EXIT_ERROR
            raise


def health(
    environment: Annotated[str | None, typer.Argument(help="Environment name from the inventory.")] = None,
    inventory: InventoryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    prefect: PrefectOpt = True,
    select: Annotated[str | None, typer.Option("--select", "-s", metavar="TERMS", help="Every environment matching "
                                               "name=…,stage=…,label=…,site=…; exit with the worst status.")] = None,
) -> None:
    """Probe an environment (HTTP, PostgreSQL, filestore); exit 0 ok, 1 warn, 2 critical, 4 error."""
    from tasks import health as h

    path = str(inventory_path(inventory))
    if bool(environment) == bool(select):
        _fail(OdoopsError("name one ENVIRONMENT or --select TERMS (e.g. --select stage=production), not both"),
              EXIT_ERROR)
    try:
        if select:
            from odoops.cli_fleet import health_selected

            raise typer.Exit(code=health_selected(select, path, as_json, prefect))
        env = load_inventory(path).environment(environment)  # fail fast, before any engine starts
        h.thresholds_for(env)
        if prefect:
            from flows.health import HealthCritical, health_flow

            try:
                data = health_flow(environment=environment, inventory=path)
            except HealthCritical as exc:
                if not exc.report:
                    raise
                data = exc.report
            report = h.HealthReport.from_dict(data)
        else:
            report = h.run_health_checks(env, platform_for(env))
    except OdoopsError as exc:
        _fail(exc, EXIT_ERROR)
        return
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        console = Console()
        table = Table(title=f"Health of {report.environment}", title_justify="left")
        for column in ("check", "status", "value", "detail"):
            table.add_column(column, overflow="fold")
        for row in h.iter_table_rows(report):
            style = STATUS_STYLE[row["status"]]
            table.add_row(row["check"], f"[{style}]{row['status']}[/]", row["value"], row["detail"])
        console.print(table)
        console.print(f"[{STATUS_STYLE[report.status]}]{report.status}[/] (exit {report.exit_code})")
    raise typer.Exit(code=report.exit_code)


# ---------------------------------------------------------------- incident


incident_app = typer.Typer(help="Incident remediations: dry run by default, --apply to act, --confirm ENV on "
                                "production; every run is audited.", no_args_is_help=True)

EnvArg = Annotated[str, typer.Argument(help="Environment name from the inventory.")]
ApplyOpt = Annotated[bool, typer.Option("--apply", help="Act; without it only show what would be done.")]
ConfirmOpt = Annotated[str | None, typer.Option(
    "--confirm", help="The environment's name again: required with --apply on production.")]


def _incident(environment: str, action: str, inventory: Path | None, apply: bool, confirm: str | None,
              prefect: bool, **options: Any) -> None:
    from flows.incident import gate, incident_flow, run_incident

    path = str(inventory_path(inventory))
    try:
        inv = load_inventory(path)
        env = inv.environment(environment)
        if prefect:
            gate(inv, env, action, apply, confirm, options)  # refuse (audited) before an engine starts
            result = incident_flow(environment=environment, action=action, apply=apply, confirm=confirm,
                                   inventory=path, **options)
        else:
            result = run_incident(inv, env, action, apply, confirm, options).to_dict()
    except OdoopsError as exc:
        _fail(exc, INCIDENT_EXIT_ERROR)
        return
    console = Console()
    table = Table(title=f"{action} on {environment}: {'applied' if apply else 'dry run'}", title_justify="left")
    table.add_column("action", overflow="fold")
    for line in result["actions"] or ["nothing to do"]:
        table.add_row(line)
    console.print(table)
    console.print(result["detail"])
    if not apply and result["actions"]:
        hint = f" --confirm {environment}" if env.is_production else ""
        console.print(f"[yellow]dry run: nothing changed; re-run with --apply{hint} to act[/]")


@incident_app.command("terminate-idle")
def terminate_idle(
    environment: EnvArg,
    older_than: Annotated[float, typer.Option("--older-than", help="Seconds idle in transaction.", min=0)] = 300,
    apply: ApplyOpt = False, confirm: ConfirmOpt = None, inventory: InventoryOpt = None, prefect: PrefectOpt = True,
) -> None:
    """Terminate sessions of the environment's database idle in transaction longer than --older-than."""
    _incident(environment, "terminate-idle", inventory, apply, confirm, prefect, older_than=older_than)


@incident_app.command("vacuum")
def vacuum(
    environment: EnvArg,
    min_dead_ratio: Annotated[float, typer.Option("--min-dead-ratio", help="Dead / (live + dead) tuples.",
                                                  min=0, max=1)] = 0.2,
    min_dead_tuples: Annotated[int, typer.Option("--min-dead-tuples", help="Ignore tables with fewer dead tuples.",
                                                 min=0)] = 1000,
    apply: ApplyOpt = False, confirm: ConfirmOpt = None, inventory: InventoryOpt = None, prefect: PrefectOpt = True,
) -> None:
    """VACUUM (ANALYZE) the tables above the dead-tuple limits."""
    _incident(environment, "vacuum", inventory, apply, confirm, prefect, min_dead_ratio=min_dead_ratio,
              min_dead_tuples=min_dead_tuples)


@incident_app.command("slow-log")
def slow_log(
    environment: EnvArg,
    on: Annotated[bool, typer.Option("--on/--off", help="Log statements slower than --ms, or stop.")],
    ms: Annotated[int, typer.Option("--ms", help="log_min_duration_statement in milliseconds.", min=0)] = 500,
    apply: ApplyOpt = False, confirm: ConfirmOpt = None, inventory: InventoryOpt = None, prefect: PrefectOpt = True,
) -> None:
    """Switch slow-query logging of the environment's database (ALTER DATABASE ... SET/RESET)."""
    _incident(environment, "slow-log", inventory, apply, confirm, prefect, slow_log="on" if on else "off", ms=ms)


@incident_app.command("restart")
def restart(
    environment: EnvArg,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for /web/health after start.",
                                        min=0)] = 60,
    apply: ApplyOpt = False, confirm: ConfirmOpt = None, inventory: InventoryOpt = None, prefect: PrefectOpt = True,
) -> None:
    """Restart Odoo through the platform (stop_command/start_command on host)."""
    _incident(environment, "restart", inventory, apply, confirm, prefect, wait_seconds=wait)


def register(app: typer.Typer) -> None:
    """Add ``health`` and the ``incident`` group to the main ``odoops`` app."""
    app.command("health", cls=_HealthCommand)(health)
    app.add_typer(incident_app, name="incident")
