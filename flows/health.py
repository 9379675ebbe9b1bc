"""The "health" runbook as a Prefect flow: probe one environment, publish the verdict, fail when critical.

Why a flow: scheduled from ``prefect.yaml`` or run on demand, every run keeps its checks as Prefect
artifacts next to its state, and a ``critical`` verdict makes the run Failed so a Prefect automation
(see deployments/automation-health-webhook.yaml) can page someone. The checks themselves are plain
functions in ``tasks/health.py``; these tasks only wrap them (no retries: a health probe that
retries hides the flakiness it should report).
"""

from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from odoops.errors import OdoopsError
from odoops.inventory import Environment, load_inventory
from odoops.platforms import platform_for
from odoops.runtime import record_run, run_name, tag_run
from tasks import health

STATUS_ICON = {"ok": "✅", "warn": "⚠️", "critical": "❌", "skipped": "➖"}


class HealthCritical(Exception):  # noqa: N818 - a verdict, not an error of odoops
    """Raised by ``health_flow`` when the worst check is critical, so the Prefect run is Failed.

    Carries the report (``.report``, a dict) so the CLI can still print it; picklable through args.
    """

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message, report)
        self.report = report

    def __str__(self) -> str:
        return str(self.args[0])

    def __repr__(self) -> str:  # Prefect logs the repr: keep the report out of it
        return f"HealthCritical({self.args[0]!r})"


def artifact_key(prefix: str, environment: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return f"{prefix}-" + re.sub(r"[^a-z0-9-]+", "-", environment.lower()).strip("-")


@task(name="health-http", cache_policy=NO_CACHE)
def http_task(env: Environment) -> list[health.CheckResult]:
    """/web/health, response time, version, optional XML-RPC login."""
    return health.http_checks(env, health.thresholds_for(env))


@task(name="health-postgres", cache_policy=NO_CACHE)
def postgres_task(env: Environment) -> list[health.CheckResult]:
    """Connections, idle in transaction, long queries, locks, dead tuples, database size."""
    t = health.thresholds_for(env)
    try:
        with platform_for(env) as platform, platform.database() as conninfo:
            return health.postgres_checks(conninfo, t)
    except OdoopsError as exc:
        return [health.CheckResult("pg.connection", "critical", None, str(exc)),
                *[health.CheckResult(n, "skipped", None, "database unreachable") for n in health.PG_CHECK_NAMES]]


@task(name="health-filestore-containers", cache_policy=NO_CACHE)
def platform_task(env: Environment) -> list[health.CheckResult]:
    """Filestore size; container CPU/memory where the platform runs containers (else n/a)."""
    t = health.thresholds_for(env)
    with platform_for(env) as platform:
        return [health.filestore_check(platform, t), health.container_check(platform, t)]


def report_markdown(report: health.HealthReport) -> str:
    lines = [f"# Health of {report.environment}: {STATUS_ICON[report.status]} {report.status}", "",
             f"Checked at {report.checked_at}; exit code {report.exit_code} (0 ok, 1 warn, 2 critical).", "",
             "| Check | Status | Value | Detail |", "|---|---|---|---|"]
    for row in health.iter_table_rows(report):
        detail = row["detail"].replace("|", "\\|")
        lines.append(f"| {row['check']} | {STATUS_ICON[row['status']]} {row['status']} | {row['value']} | {detail} |")
    for check in report.problems():
        if check.items:
            lines += ["", f"## {check.name}", ""]
            keys = [k for k in check.items[0] if k not in ("query",)] + (["query"] if "query" in check.items[0] else [])
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            for item in check.items:
                cells = [str(item.get(k, "")).replace("|", "\\|") for k in keys]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@task(name="health-publish", cache_policy=NO_CACHE)
def publish_task(report: health.HealthReport) -> None:
    create_table_artifact(table=list(health.iter_table_rows(report)), key=artifact_key("health", report.environment),
                          description=f"Health checks of {report.environment}: {report.status}")
    create_markdown_artifact(markdown=report_markdown(report), key=artifact_key("health-report", report.environment),
                             description=f"Health of {report.environment}: {report.status}")


@flow(name="health", log_prints=False, flow_run_name=run_name("health/{environment}"))
def health_flow(environment: str, inventory: str | None = None) -> dict[str, Any]:
    """Check one environment; return the report as a dict; raise ``HealthCritical`` when it is critical.

    Thresholds come from the inventory's ``health:`` mapping (docs/health.md); ``inventory`` is the
    inventory file (default ``deployments/environments.yaml`` or ``$ODOOPS_INVENTORY``).
    """
    logger = get_run_logger()
    inv = load_inventory(inventory)
    env = inv.environment(environment)
    tag_run(env)
    health.thresholds_for(env)  # a bad threshold fails the run at once, before any probe
    checks = http_task(env) + postgres_task(env) + platform_task(env)
    report = health.HealthReport(environment=env.name, checks=checks)
    publish_task(report)
    problems = report.problems()
    record_run(inv, "health", env, {"environment": environment}, report.status,
               details={"problems": [{"check": c.name, "status": c.status, "detail": c.detail} for c in problems]})
    for check in problems:
        (logger.error if check.status == "critical" else logger.warning)("%s %s: %s", check.name, check.status,
                                                                          check.detail)
    data = report.to_dict()
    if report.status == "critical":
        names = ", ".join(f"{c.name} ({c.detail})" for c in problems if c.status == "critical")
        raise HealthCritical(f"health of {env.name} is critical: {names}", data)
    logger.info("health of %s: %s", env.name, report.status)
    return data
