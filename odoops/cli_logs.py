"""``odoops logs``: analyse Odoo logs from a terminal or a CI job.

Why: an operator wants one command that reads a log (file, rotated ``.gz``, standard input, or an
inventory environment's logs) and says what went wrong, and a CI job wants an exit status it can
gate on, like Odoo.sh failing a build on ERROR. Exit codes: 0 success, 2 bad input or an operational
error (one red ``error: ...`` line on stderr, e.g. a missing file or a file that is not an Odoo log),
3 the ``--fail-on`` gate found records at or above its level that no ``--ignore`` pattern covers.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from odoops.errors import OdoopsError
from tasks.logs import EXIT_GATE_FAILED, AnalysisOptions, follow, gate_failed, parse_level, parse_since

EXIT_ERROR = 2


def _fail(exc: BaseException) -> None:
    typer.secho(f"error: {' '.join(str(exc).split())}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=EXIT_ERROR)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if i and col in {"count", "records", "ms", "queries", "s"} else "left",
                         overflow="fold")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    return table


def render_report(summary: dict[str, Any], console: Console) -> None:
    """The human report: overview, HTTP, slow requests, error signatures and classified events."""
    lv = summary["levels"]
    console.print(_table("Overview", ["figure", "value"], [
        ["sources", ", ".join(s["source"] for s in summary["sources"])],
        ["period", f"{summary['first_timestamp'] or '-'} → {summary['last_timestamp'] or '-'}"],
        ["records / lines", f"{summary['records']} / {summary['lines']}"],
        ["levels", "  ".join(f"{k} {v}" for k, v in lv.items())],
        ["tracebacks", f"{summary['tracebacks']} in {summary['records_with_traceback']} records"],
        ["databases", ", ".join(f"{k} {v}" for k, v in list(summary["databases"].items())[:8]) or "-"],
    ]))
    req = summary["requests"]
    if req["total"]:
        console.print(_table("HTTP requests", ["status", "count"],
                             [[k, v] for k, v in req["status"].items()]
                             + [["timed", req["timed"]], ["query count", req["query_count"]],
                                ["query time s", req["query_time"]], ["python time s", req["remaining_time"]],
                                [f"slow (≥{req['thresholds']['total']}s)", req["slow"]["total"]]]))
        slow = req["slowest"]["total"]
        if slow:
            console.print(_table("Slowest requests", ["timestamp", "db", "request", "status", "queries", "sql s",
                                                      "python s"],
                                 [[r["timestamp"], r["db"], f"{r['method']} {r['path']}", r["status"],
                                   r["query_count"], r["query_time"], r["remaining_time"]] for r in slow]))
    for key, title in (("errors", "Error signatures"), ("warnings", "Warning signatures")):
        sigs = summary[key]["signatures"]
        if sigs:
            console.print(_table(f"{title} ({summary[key]['total']} records, {summary[key]['distinct']} distinct)",
                                 ["count", "level", "signature", "first", "last"],
                                 [[s["count"], s["level"], s["signature"], s["first"], s["last"]] for s in sigs]))
    rows: list[list[Any]] = []
    sec = summary["security"]
    rows.append(["security", "login failed", sec["login_failed"]["total"]])
    rows.append(["security", "access denied", sec["access_denied"]["total"]])
    rows.append(["security", "CSRF", sec["csrf"]["total"]])
    for section in ("db_contention", "worker_limits"):
        for kind, n in summary[section]["kinds"].items():
            rows.append([section.replace("_", " "), kind.replace("_", " "), n])
    rows.append(["cron", "failures", summary["cron_failures"]["total"]])
    rows.append(["modules", "load failures", summary["module_failures"]["total"]])
    rows.append(["critical", "records", summary["critical"]["total"]])
    console.print(_table("Events", ["area", "kind", "count"], rows))
    top = sec["login_failed"]["top"]
    if top:
        console.print(_table("Failed logins", ["db", "login", "from", "count"],
                             [[t["db"], t["login"], t["ip"], t["count"]] for t in top]))
    for warning in summary.get("io_warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    gate = summary.get("gate")
    if gate:
        verdict = "[bold red]FAILED[/bold red]" if gate["failed"] else "[green]passed[/green]"
        console.print(f"gate --fail-on {gate['fail_on']}: {verdict} ({gate['matched']} matching, "
                      f"{gate['ignored']} ignored)")


def register(app: typer.Typer) -> None:
    """Add the ``logs`` command to ``app``."""

    @app.command("logs")
    def logs_command(
        sources: Annotated[list[str], typer.Argument(
            help="Log files (.gz too), - for standard input, or env:NAME for an inventory environment's logs.")],
        since: Annotated[str | None, typer.Option(
            "--since", help="Only records at or after this time: ISO (2024-05-01T10:00) or relative (30m, 2h, 1d); "
                            "Odoo logs in UTC.")] = None,
        follow_: Annotated[bool, typer.Option("--follow", "-f", help="Tail the file (rotation-safe) and alert.")] = False,
        json_: Annotated[bool, typer.Option("--json", help="Print one JSON summary object.")] = False,
        fail_on: Annotated[str | None, typer.Option(
            "--fail-on", help="Exit 3 when records at this level or above remain after --ignore (e.g. error).")] = None,
        ignore: Annotated[list[str] | None, typer.Option(
            "--ignore", help="Regular expression of records the gate ignores (repeatable).")] = None,
        slow_threshold: Annotated[float, typer.Option(
            "--slow-threshold", help="Seconds (SQL + Python) from which a request counts as slow.")] = 2.0,
        top: Annotated[int, typer.Option("--top", help="Rows in top-N tables.")] = 10,
        threshold_errors: Annotated[int | None, typer.Option(
            "--threshold-errors", help="With --follow: alert when more than N error records arrive in --window.")] = None,
        window: Annotated[float, typer.Option("--window", help="With --follow: alert window in minutes.")] = 5.0,
        duration: Annotated[float | None, typer.Option(
            "--duration", help="With --follow: stop after this many seconds (default: until Ctrl-C).")] = None,
        inventory: Annotated[str | None, typer.Option(
            "--inventory", envvar="ODOOPS_INVENTORY", help="Inventory for env:NAME sources.")] = None,
    ) -> None:
        """Analyse Odoo logs: errors by signature, HTTP status and slow requests, security, contention, limits."""
        out = Console()
        try:
            if fail_on:
                parse_level(fail_on)
            options = AnalysisOptions(since=parse_since(since) if since else None, top=top,
                                      slow_threshold=slow_threshold, fail_on=fail_on, ignore=tuple(ignore or ()))
            if follow_:
                if len(sources) != 1:
                    raise OdoopsError("--follow takes exactly one log file: run one odoops logs --follow per file")
                logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s",
                                    stream=sys.stderr)

                def on_alert(alert: dict[str, Any]) -> None:
                    typer.secho(f"ALERT {alert['source']}: {alert['count']} {alert['level']}-or-worse records in "
                                f"{alert['window_minutes']:g} min (threshold {alert['threshold']})",
                                fg=typer.colors.RED, err=True)

                try:
                    summary = follow(sources[0], options, threshold_errors=threshold_errors,
                                     window_minutes=window, max_seconds=duration, on_alert=on_alert)
                except KeyboardInterrupt:
                    raise typer.Exit(code=0) from None
            else:
                from tasks.logs import analyze_sources

                summary = analyze_sources(sources, options, inventory=inventory)
                if summary.get("format_warning"):
                    raise OdoopsError(summary["format_warning"])
        except OdoopsError as exc:
            _fail(exc)
            return
        if json_:
            typer.echo(json.dumps(summary, indent=1, default=str))
        else:
            render_report(summary, out)
        if gate_failed(summary):
            raise typer.Exit(code=EXIT_GATE_FAILED)
