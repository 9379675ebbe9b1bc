"""``odoops cost-report``: the cost comparison runbook from a terminal.

The same report an operator gets from the Prefect UI, for people who live in a shell or a CI job.
Inputs are validated before Prefect starts, so a typo in the inputs file costs one red line, not
an engine start-up and a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from odoops.errors import OdoopsError


def _fail(exc: OdoopsError) -> None:
    """One red ``error: ...`` line on stderr, exit status 2."""
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def cost_report(
    inputs: Annotated[Path | None, typer.Option(
        "--inputs", help="YAML file of prices and sizes (see deployments/cost-inputs.example.yaml).",
        dir_okay=False)] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for costs.csv, .md, .html and .png.",
                                      file_okay=False)] = Path("reports/costs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print totals and break-even points as JSON.")] = False,
    measure: Annotated[bool, typer.Option(
        "--measure/--no-measure",
        help="Measure database, filestore and backup repository sizes on the inventory's production "
             "environments (they replace the estimates).")] = True,
    inventory: Annotated[Path | None, typer.Option(
        "--inventory", envvar="ODOOPS_INVENTORY", help="Environment inventory to measure.", dir_okay=False)] = None,
    prefect: Annotated[bool, typer.Option(
        "--prefect/--no-prefect",
        help="Run as the Prefect flow (state and artifacts kept) or as plain functions (no Prefect).")] = True,
) -> None:
    """Compare Odoo.sh and self-hosted Docker costs: totals, break-even, chart, CSV/Markdown/HTML."""
    from tasks import costs

    try:
        loaded = costs.load_inputs(inputs)  # fail fast on bad input, before any engine starts
        if prefect:
            from flows.cost_report import cost_report_flow

            result = cost_report_flow(inputs_file=None if inputs is None else str(inputs), out_dir=str(out),
                                      measure=measure, inventory=None if inventory is None else str(inventory))
        else:
            if measure:
                from odoops.sizes import measure_production_sizes

                sizes, notes = measure_production_sizes(None if inventory is None else str(inventory))
                for note in notes:
                    typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
                if sizes:
                    loaded = costs.load_inputs(inputs, measured=sizes)
            report = costs.compute_costs(loaded)
            files = costs.write_report(report, out)
            result = {**costs.summary(report), "files": {k: str(p) for k, p in files.items()}}
    except OdoopsError as exc:
        _fail(exc)
        return
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    cur = result["currency"]
    for option, label in costs.OPTIONS.items():
        typer.echo(f"{label}: {cur} {result['monthly'][option]:,.2f}/month, "
                   f"{cur} {result['horizon_total'][option]:,.2f} over {result['months']} months")
    be_users, be_gb = result["break_even_users"], result["break_even_storage_gb"]
    typer.echo(f"break-even: {'never' if be_users is None else f'{be_users:,.2f} users'}, "
               f"{'never' if be_gb is None else f'{be_gb:,.2f} GB'} (prices are estimates unless given)")
    for note in result.get("measurement_notes", []):
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    if result.get("measured_sizes"):
        typer.echo("measured on the environments: " + ", ".join(
            f"{key} {value:,.3f}" for key, value in result["measured_sizes"].items()))
    typer.echo(f"report: {result['files']['html']}")


def register(app: typer.Typer) -> None:
    """Add the ``cost-report`` command to the main ``odoops`` app."""
    app.command("cost-report")(cost_report)
