"""The "logs" runbook as a Prefect flow: analyse Odoo logs, publish the findings, gate on errors.

Why a flow: run on a schedule or from the UI, every run keeps its findings as Prefect artifacts (top
error signatures, slowest requests, HTTP status counts, a markdown summary) next to its state, and
the ``fail_on`` gate makes the run Failed, like Odoo.sh failing a build on ERROR, so an automation can
react. The analysis itself is the plain, streaming ``tasks.logs.analyze_sources``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from odoops.errors import ConfigError
from odoops.inventory import load_inventory
from odoops.runtime import record_run, run_name
from tasks.logs import (
    AnalysisOptions,
    LogGateFailed,
    analyze_logs_task,
    gate_failed,
    parse_level,
    parse_since,
)


def _markdown(summary: dict[str, Any]) -> str:
    lv = summary["levels"]
    req = summary["requests"]
    sec = summary["security"]
    lines = [
        "# Odoo log analysis",
        "",
        f"Sources: {', '.join(s['source'] for s in summary['sources'])}  ",
        f"Period: {summary['first_timestamp'] or '-'} → {summary['last_timestamp'] or '-'}  ",
        f"Records: {summary['records']} ({summary['lines']} lines)",
        "",
        "| level | count |", "|---|---:|",
        *[f"| {k} | {v} |" for k, v in lv.items()],
        "",
        f"- Tracebacks: {summary['tracebacks']} in {summary['records_with_traceback']} records",
        f"- HTTP requests: {req['total']} ({req['timed']} timed, {req['slow']['total']} slow "
        f"≥ {req['thresholds']['total']} s)",
        f"- Failed logins: {sec['login_failed']['total']}, access denied: {sec['access_denied']['total']}, "
        f"CSRF: {sec['csrf']['total']}",
        f"- Database contention: {summary['db_contention']['total']} "
        f"({', '.join(f'{k} {v}' for k, v in summary['db_contention']['kinds'].items() if v) or 'none'})",
        f"- Worker limits: {summary['worker_limits']['total']} "
        f"({', '.join(f'{k} {v}' for k, v in summary['worker_limits']['kinds'].items() if v) or 'none'})",
        f"- Cron failures: {summary['cron_failures']['total']}, module failures: "
        f"{summary['module_failures']['total']}, CRITICAL: {summary['critical']['total']}",
    ]
    gate = summary.get("gate")
    if gate:
        lines += ["", f"**Gate `fail_on={gate['fail_on']}`: {'FAILED' if gate['failed'] else 'passed'}** "
                      f"({gate['matched']} matching, {gate['ignored']} ignored)"]
    if summary.get("format_warning"):
        lines += ["", f"⚠️ {summary['format_warning']}"]
    return "\n".join(lines)


def publish_artifacts(summary: dict[str, Any]) -> None:
    """Table artifacts (error signatures, slowest requests, status counts) and a markdown summary."""
    create_table_artifact(
        table=[{"count": s["count"], "level": s["level"], "signature": s["signature"], "first": s["first"],
                "last": s["last"]} for s in summary["errors"]["signatures"]] or [{"count": 0, "signature": "none"}],
        key="logs-error-signatures", description="Top error signatures")
    create_table_artifact(
        table=[{"timestamp": r["timestamp"], "db": r["db"], "request": f"{r['method']} {r['path']}",
                "status": r["status"], "queries": r["query_count"], "sql_s": r["query_time"],
                "python_s": r["remaining_time"]} for r in summary["requests"]["slowest"]["total"]]
        or [{"request": "none"}],
        key="logs-slowest-requests", description="Slowest requests (SQL + Python time)")
    create_table_artifact(
        table=[{"status": k, "count": v} for k, v in summary["requests"]["status"].items()] or [{"status": "none"}],
        key="logs-http-status", description="HTTP status counts")
    create_markdown_artifact(markdown=_markdown(summary), key="logs-summary", description="Log analysis summary")


def _audit(inventory: str | None, sources: list[str], parameters: dict[str, Any], outcome: str,
           details: dict[str, Any]) -> None:
    """One record per environment read (``env:NAME``), else one without environment; none without inventory."""
    try:
        inv = load_inventory(inventory)
    except ConfigError as exc:
        if any(source.startswith("env:") for source in sources):
            raise
        get_run_logger().info("no audit record for this analysis of files: %s", exc)
        return
    envs = [inv.environment(source[4:]) for source in sources if source.startswith("env:")]
    for env in envs or [None]:
        record_run(inv, "logs", env, parameters, outcome, details=details)


@flow(name="logs", flow_run_name=run_name("logs/{sources}"))
def logs_flow(sources: list[str], since: str | None = None, fail_on: str | None = None,
              ignore: list[str] | None = None, slow_threshold: float = 2.0, top: int = 10,
              inventory: str | None = None) -> dict[str, Any]:
    """Analyse ``sources`` (paths, ``.gz``, ``env:NAME``), publish artifacts, fail when the gate trips."""
    logger = get_run_logger()
    if fail_on:
        parse_level(fail_on)
    options = AnalysisOptions(since=parse_since(since) if since else None, top=top, slow_threshold=slow_threshold,
                              fail_on=fail_on, ignore=tuple(ignore or ()))
    summary = analyze_logs_task(sources, options, inventory)
    publish_artifacts(summary)
    lv = summary["levels"]
    logger.info("%d records: %d ERROR, %d CRITICAL, %d tracebacks", summary["records"], lv["ERROR"],
                lv["CRITICAL"], summary["tracebacks"])
    if summary.get("format_warning"):
        logger.warning("%s", summary["format_warning"])
    outcome = "gate failed" if gate_failed(summary) else "success"
    _audit(inventory, sources, {"sources": sources, "since": since, "fail_on": fail_on, "ignore": ignore}, outcome,
           {"records": summary["records"], "levels": lv, "tracebacks": summary["tracebacks"]})
    if gate_failed(summary):
        gate = summary["gate"]
        raise LogGateFailed(f"log gate: {gate['matched']} {gate['fail_on']}-or-worse records remain after ignores "
                            "in the analysed logs: fix them or add ignore patterns")
    return summary
