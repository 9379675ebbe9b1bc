"""The "cost report" runbook as a Prefect flow: Odoo.sh against self-hosted Docker, on demand.

Operators trigger it from the Prefect UI (deployment parameters below) or with
``odoops cost-report``. The model lives in ``tasks/costs.py``; this flow only loads the inputs,
runs the model, writes the files and publishes the totals as Prefect artifacts so every run keeps
its figures next to its state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from odoops.runtime import run_name
from odoops.sizes import measure_production_sizes
from tasks import costs

TABLE_ARTIFACT_KEY = "cost-report-totals"
MARKDOWN_ARTIFACT_KEY = "cost-report"


@task(name="load-cost-inputs", cache_policy=NO_CACHE)
def load_cost_inputs(
    inputs_file: str | None, overrides: dict[str, Any], measured: dict[str, Any] | None
) -> costs.CostInputs:
    """Defaults, the inputs file, the run's parameters and measured sizes, validated."""
    return costs.load_inputs(inputs_file, overrides=overrides, measured=measured)


@task(name="compute-costs", cache_policy=NO_CACHE)
def compute_costs(inputs: costs.CostInputs) -> costs.CostReport:
    """Run the pandas model."""
    return costs.compute_costs(inputs)


@task(name="write-cost-report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def write_cost_report(report: costs.CostReport, out_dir: str) -> dict[str, str]:
    """Write CSV, Markdown, HTML and PNG; return their paths."""
    return {kind: str(path) for kind, path in costs.write_report(report, out_dir).items()}


@task(name="publish-cost-artifacts", cache_policy=NO_CACHE)
def publish_cost_artifacts(report: costs.CostReport, files: dict[str, str]) -> None:
    """A table artifact of the totals and a Markdown artifact of the summary (labelled estimates)."""
    create_table_artifact(
        table=costs.totals_table(report),
        key=TABLE_ARTIFACT_KEY,
        description=f"Odoo.sh vs self-hosted: monthly and {report.months}-month totals (estimates unless "
                    "given or measured)",
    )
    s = costs.summary(report)
    lines = [
        "# Cost report: Odoo.sh vs self-hosted Docker",
        "",
        "*Default prices are estimates, not quotes.*",
        "",
        f"| Option | Monthly | One-time | {report.months}-month total |",
        "|---|---|---|---|",
        *[f"| {costs.OPTIONS[o]} | {costs.money(report, s['monthly'][o])} | "
          f"{costs.money(report, s['one_time'][o])} | {costs.money(report, s['horizon_total'][o])} |"
          for o in costs.OPTIONS],
        "",
        *[f"- {line}" for line in costs.break_even_lines(report)],
        *[f"- {note}" for note in report.notes],
        "",
        "Files:",
        *[f"- {kind}: `{path}`" for kind, path in files.items()],
    ]
    create_markdown_artifact(
        markdown="\n".join(lines) + "\n", key=MARKDOWN_ARTIFACT_KEY,
        description="Cost report summary and break-even points")


@task(name="measure-sizes", cache_policy=NO_CACHE)
def measure_sizes(inventory: str | None) -> tuple[dict[str, float], list[str]]:
    """Database, filestore and backup repository sizes of the inventory's production environments."""
    return measure_production_sizes(inventory)


@flow(name="cost-report", log_prints=False, flow_run_name=run_name("cost-report"))
def cost_report_flow(
    inputs_file: str | None = None,
    out_dir: str = "reports/costs",
    users: int | None = None,
    workers: int | None = None,
    staging_environments: int | None = None,
    enterprise_self_hosted: bool | None = None,
    months: int | None = None,
    measured: dict[str, float] | None = None,
    measure: bool = True,
    inventory: str | None = None,
) -> dict[str, Any]:
    """Compare Odoo.sh and self-hosted costs; write costs.{csv,md,html,png} into ``out_dir``.

    ``inputs_file`` is a YAML file of prices and sizes (see deployments/cost-inputs.example.yaml);
    the other parameters override it. With ``measure``, the production environments of the inventory
    are measured (``database_gb``, ``filestore_gb``, ``backup_repository_gb``) and their sizes win over
    both; ``measured`` gives such sizes by hand and wins over the measurement.
    """
    overrides = {"users": users, "workers": workers, "staging_environments": staging_environments,
                 "enterprise_self_hosted": enterprise_self_hosted, "months": months}
    sizes, notes = measure_sizes(inventory) if measure else ({}, [])
    for note in notes:
        get_run_logger().warning("%s", note)
    inputs = load_cost_inputs(inputs_file, overrides, {**sizes, **(measured or {})} or None)
    report = compute_costs(inputs)
    files = write_cost_report(report, str(Path(out_dir)))
    publish_cost_artifacts(report, files)
    return {**costs.summary(report), "files": files, "measurement_notes": notes}
