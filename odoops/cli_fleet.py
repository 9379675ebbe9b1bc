"""The fleet from a shell: ``odoops schedules list``, and ``--select`` for ``backup``, ``backups verify`` and
``health`` (one environment's failure never stops the others; the exit code says whether any failed).

The selection syntax is odoops.fleet's: ``--select name=shop-*,stage=production,label=eu,site=a``.
"""


import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

SelectOpt = Annotated[str | None, typer.Option(
    "--select", "-s", metavar="TERMS", help="Environments by name, stage, label or site: "
    "name=shop-*,stage=production,label=eu (same key twice: either; different keys: all).")]

schedules_app = typer.Typer(help="Backup schedules: they live in the inventory; the nightly deployment runs them.",
                            no_args_is_help=True)


def _selected(select: str, inventory: str | None):
    from odoops.fleet import select as pick
    from odoops.inventory import load_inventory

    inv = load_inventory(inventory)
    return inv, pick(inv, select)


def _table(rows: list[dict[str, Any]], columns: list[str], title: str) -> Table:
    table = Table(*columns, title=title, title_justify="left")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    return table


def schedules_rows(inventory: str | None, select: str | None, now: datetime | None = None) -> list[dict[str, Any]]:
    """Each environment's schedule, time zone, pool and next run (in its zone and in UTC)."""
    from zoneinfo import ZoneInfo

    from odoops.fleet import next_occurrence, pool_for
    from odoops.fleet import select as pick
    from odoops.inventory import load_inventory

    inv = load_inventory(inventory)
    envs = pick(inv, select) if select else list(inv.environments.values())
    now = now or datetime.now(UTC)
    rows = []
    for env in envs:
        nxt = next_occurrence(env, now)
        rows.append({"environment": env.name, "stage": env.stage, "site": env.site, "labels": list(env.labels),
                     "pool": pool_for(env), "schedule": env.backup.schedule, "timezone": env.backup.timezone,
                     "next_run": nxt.astimezone(ZoneInfo(env.backup.timezone)).isoformat() if nxt else None,
                     "next_run_utc": nxt.isoformat() if nxt else None})
    return rows


def backup_selected(select: str, kind: str, storage: str | None, inventory: str | None, as_json: bool) -> None:
    """``odoops backup --select``: each selected environment in turn, in this process."""
    from odoops.cli import console, fail, operator_errors
    from odoops.errors import OdoopsError

    with operator_errors():
        _inv, envs = _selected(select, inventory)
        from flows.backup import backup_flow
    rows = []
    for env in envs:
        started = datetime.now(UTC)
        try:
            result = backup_flow(env.name, kind=kind, storage=storage, inventory=inventory)
            outcome, size, reused, backup_id = "success", result["size"], result["tables_reused"], result["backup_id"]
        except OdoopsError as exc:
            outcome, size, reused, backup_id = f"failed: {exc}", None, [], None
        rows.append({"environment": env.name, "outcome": outcome,
                     "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1), "size": size,
                     "reused_tables": ", ".join(reused), "backup_id": backup_id})
    _finish(rows, as_json, "backups", console, fail)


def verify_selected(select: str, inventory: str | None, as_json: bool = False) -> None:
    """``odoops backups verify --select``: the newest complete backup of each selected environment."""
    from odoops.cli import console, fail, operator_errors
    from odoops.errors import OdoopsError
    from odoops.runtime import repository_for

    with operator_errors():
        inv, envs = _selected(select, inventory)
        from flows.verify import verify_flow
    rows = []
    for env in envs:
        backups = []
        try:
            backups = repository_for(inv, env.backup.storage).list_backups(env.name)
            if not backups:
                raise OdoopsError(f"{env.name} has no complete backup in storage {env.backup.storage}: "
                                  f"run odoops backup {env.name}")
            verify_flow(backups[-1].id, inventory=inventory)
            rows.append({"environment": env.name, "outcome": "intact", "backup_id": backups[-1].id})
        except OdoopsError as exc:
            rows.append({"environment": env.name, "outcome": f"failed: {exc}",
                         "backup_id": backups[-1].id if backups else None})
    _finish(rows, as_json, "verifications", console, fail, ok="intact")


def health_selected(select: str, inventory: str | None, as_json: bool, prefect: bool) -> int:
    """``odoops health --select``: every selected environment probed; returns the worst exit code."""
    from flows.health import HealthCritical, health_flow
    from odoops.platforms import platform_for
    from tasks import health as h

    _inv, envs = _selected(select, inventory)
    reports, worst = [], 0
    for env in envs:
        if prefect:
            try:
                report = h.HealthReport.from_dict(health_flow(environment=env.name, inventory=inventory))
            except HealthCritical as exc:
                if not exc.report:
                    raise
                report = h.HealthReport.from_dict(exc.report)
        else:
            report = h.run_health_checks(env, platform_for(env))
        reports.append(report)
        worst = max(worst, report.exit_code)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in reports], indent=2, sort_keys=True, default=str))
    else:
        from rich.console import Console

        rows = [{"environment": r.environment, "status": r.status,
                 "problems": "; ".join(f"{row['check']}: {row['status']}" for row in h.iter_table_rows(r)
                                       if row["status"] not in ("ok", "skipped"))} for r in reports]
        Console().print(_table(rows, ["environment", "status", "problems"], f"Health of {len(rows)} environments"))
    return worst


def _finish(rows: list[dict[str, Any]], as_json: bool, what: str, console, fail, ok: str = "success") -> None:
    failed = [r["environment"] for r in rows if r["outcome"] != ok]
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        console.print(_table(rows, list(rows[0]), f"{len(rows)} {what}"))
    if failed:
        fail(f"{len(failed)} of {len(rows)} {what} failed ({', '.join(failed)}): see each line above; the others are done")


def register(app: typer.Typer) -> None:
    from odoops.cli import InventoryOpt, JsonOpt, console, operator_errors

    @schedules_app.command("list")
    def schedules_list(select: SelectOpt = None, inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
        """Each environment's backup schedule (from the inventory) and its next run."""
        with operator_errors():
            rows = schedules_rows(inventory, select)
        if as_json:
            print(json.dumps(rows, indent=1))
            return
        console.print(_table(rows, ["environment", "stage", "site", "pool", "schedule", "timezone", "next_run"],
                             "Backup schedules (the nightly deployment starts each when due)"))

    app.add_typer(schedules_app, name="schedules")
