"""The summary: the analysis as one JSON-ready dict, and the ``--fail-on`` gate read from it.

Why apart: while counting, the analyzer keeps bytes, heaps and bounded tables (cheap to update); the
CLI report, the flow's artifacts and JSON consumers all read this one rendering of them.
``_Report`` is a part of ``LogAnalyzer``.
"""

from __future__ import annotations

from typing import Any

from odoops.errors import OdoopsError
from tasks.logs.classify import _short
from tasks.logs.records import STANDARD_LEVELS, _dec

EXIT_GATE_FAILED = 3


class LogGateFailed(OdoopsError):
    """The ``--fail-on`` gate found records at or above its level that no ``--ignore`` pattern covers."""


class _Report:
    """Part of ``LogAnalyzer``: the counters rendered as the summary."""

    def summary(self) -> dict[str, Any]:
        """The analysis as one JSON-ready dict."""
        top = self.options.top
        levels = {k: 0 for k in STANDARD_LEVELS}
        for k, v in self.levels.items():
            name = _dec(k)
            levels[name] = levels.get(name, 0) + v

        def slowest(key: str) -> list[dict[str, Any]]:
            rows = []
            for value, _neg, (ts, db, method, path, status, qc, qt, rt) in sorted(self._heaps[key], reverse=True):
                rows.append({"timestamp": _dec(ts), "db": _dec(db), "method": _dec(method),
                             "path": _short(_dec(path), 200), "status": int(status), "query_count": int(qc),
                             "query_time": float(qt), "remaining_time": float(rt),
                             "total_time": round(float(qt) + float(rt), 3), "value": round(value, 3)})
            return rows

        def signatures(table: dict[tuple[str, ...], dict[str, Any]]) -> list[dict[str, Any]]:
            rows = sorted(table.values(), key=lambda e: (-e["count"], e["first"]))[:top]
            return [{**e, "last": _dec(e["last"]), "databases": [_dec(d) for d in e["databases"]]} for e in rows]

        logins = sorted(self._login_pairs.items(), key=lambda kv: -kv[1])[:top]
        status = {_dec(k): v for k, v in sorted(self.req_status.items())}
        result: dict[str, Any] = {
            "sources": self.sources,
            "records": self.records,
            "lines": self.lines,
            "bytes": self.bytes,
            "unparsed_lines": self.unparsed_lines,
            "skipped_before_since": self.skipped_before_since,
            "since": self.options.since.isoformat(sep=" ") if self.options.since else None,
            "first_timestamp": _dec(self.first_ts) if self.first_ts else None,
            "last_timestamp": _dec(self.last_ts) if self.last_ts else None,
            "levels": levels,
            "tracebacks": self.tracebacks,
            "records_with_traceback": self.records_with_traceback,
            "requests": {
                "total": self.req_total,
                "status": status,
                "timed": self.req_timed,
                "untimed_dash": self.req_dash,
                "no_timing": self.req_no_timing,
                "query_count": self.req_qc,
                "query_time": round(self.req_qt, 3),
                "remaining_time": round(self.req_rt, 3),
                "max_query_count": self.req_max_qc,
                "thresholds": {"total": self.options.slow_threshold, "sql": self.options.slow_sql_threshold,
                               "python": self.options.slow_python_threshold},
                "slow": dict(self.req_slow),
                "slowest": {"total": slowest("total"), "sql": slowest("sql"), "python": slowest("python")},
            },
            "databases": {_dec(k): v for k, v in sorted(self.dbs.items(), key=lambda kv: (-kv[1], kv[0]))},
            "loggers": {_dec(k): v for k, v in sorted(self.loggers.items(), key=lambda kv: (-kv[1], kv[0]))[:50]},
            "pids": {_dec(k): v for k, v in self.pids.items()},
            "errors": {"total": self.errors_total, "distinct": len(self.errors),
                       "signatures": signatures(self.errors)},
            "warnings": {"total": self.warnings_total, "distinct": len(self.warnings),
                         "signatures": signatures(self.warnings)},
            "signature_overflow": self.signature_overflow,
            "security": {
                "login_failed": {**self.login_failed.as_dict(),
                                 "top": [{"db": d, "login": lg, "ip": ip, "count": n} for (d, lg, ip), n in logins]},
                "access_denied": self.access_denied.as_dict(),
                "csrf": self.csrf.as_dict(),
            },
            "db_contention": self.contention.as_dict(
                ("serialization_failure", "deadlock", "pool_full", "lock_timeout", "statement_timeout",
                 "connection_failed", "bad_query")),
            "worker_limits": self.worker_limits.as_dict(
                ("memory", "memory_hard", "cpu_time", "real_time", "request_limit", "crash")),
            "cron_failures": self.cron_failures.as_dict(),
            "module_failures": self.module_failures.as_dict(),
            "critical": self.critical.as_dict(),
            "format_warning": None,
            "io_warnings": self.warnings_io,
        }
        bad = [s["format_warning"] for s in self.sources if "format_warning" in s]
        if bad:
            result["format_warning"] = bad[0] if len(bad) == 1 else "; ".join(bad)
        if self._gate_level is not None:
            result["gate"] = {"fail_on": (self.options.fail_on or "").upper(), "ignore": list(self.options.ignore),
                              "matched": self.gate_matched, "ignored": self.gate_ignored,
                              "failed": self.gate_matched > 0, "examples": self.gate_examples}
        return result


def gate_failed(summary: dict[str, Any]) -> bool:
    """True when the summary's ``--fail-on`` gate found records that no ignore pattern covers."""
    return bool(summary.get("gate", {}).get("failed"))
