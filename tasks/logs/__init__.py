"""Odoo server log analysis in one streaming pass with flat memory (the "logs" runbook).

Why: the runbook must read multi-gigabyte Odoo logs (files, rotated ``.gz``, standard input, SSH file
objects, container log streams) and say what went wrong: errors grouped by signature, tracebacks,
HTTP status and slow requests, security events, database contention, worker limit kills, cron and
module failures, without ever holding the log in memory. The parts, one idea each:

- ``records``: the Odoo log format (headers, multi-line records, werkzeug request lines, levels);
- ``sources``: where the bytes come from (paths, ``.gz``, ``-``, ``env:NAME`` over SSH, any stream);
- ``analyzer``: ``LogAnalyzer``, the state fed block by block, built from ``scan`` (the hot loop),
  ``http_requests`` (request figures), ``classify`` (signatures and categories) and ``report``
  (the summary and the ``--fail-on`` gate);
- ``analyze``: the entry points (worker processes for big files) and the Prefect task;
- ``follow``: ``tail -F`` with alerts.

The public names are importable from here, as they were when this was one module.
"""

from __future__ import annotations

from tasks.logs.analyze import analyze_lines, analyze_logs_task, analyze_sources, analyze_stream
from tasks.logs.analyzer import AnalysisOptions, LogAnalyzer
from tasks.logs.classify import normalize_message
from tasks.logs.follow import follow
from tasks.logs.records import LogRecord, parse_level, parse_records, parse_since
from tasks.logs.report import EXIT_GATE_FAILED, LogGateFailed, gate_failed
from tasks.logs.sources import (
    LogSourceError,
    expand_sources,
    iter_chunks,
    iter_lines_from_stream,
    open_source,
)

__all__ = [
    "EXIT_GATE_FAILED",
    "AnalysisOptions",
    "LogAnalyzer",
    "LogGateFailed",
    "LogRecord",
    "LogSourceError",
    "analyze_lines",
    "analyze_logs_task",
    "analyze_sources",
    "analyze_stream",
    "expand_sources",
    "follow",
    "gate_failed",
    "iter_chunks",
    "iter_lines_from_stream",
    "normalize_message",
    "open_source",
    "parse_level",
    "parse_records",
    "parse_since",
]
