"""``LogAnalyzer``: the streaming analysis state, fed block by block, merged across worker processes.

Why: one object holds every counter, bounded heap and capped table (so memory stays flat whatever the
log's size), takes bytes in blocks of any size and keeps records whole across block boundaries. Its
work is split by concern into the parts it inherits: ``scan`` (the hot loop), ``http_requests``,
``classify`` and ``report``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from odoops.errors import ConfigError
from tasks.logs.classify import MAX_EXAMPLES, _Category, _Classifier
from tasks.logs.http_requests import _RequestStats
from tasks.logs.records import LEVELS, LogRecord, _last_header, _ts_bytes, parse_level
from tasks.logs.report import _Report
from tasks.logs.scan import MAX_LOGGERS, MAX_PIDS, _BlockScanner
from tasks.logs.sources import CHUNK_SIZE

MAX_RECORD = 32 << 20  # a single record longer than this is classified on its first MAX_RECORD bytes


@dataclass
class AnalysisOptions:
    """What to count and how: time filter, top-N sizes, slow-request thresholds, CI gate."""

    since: datetime | None = None
    top: int = 10
    slow_threshold: float = 2.0
    slow_sql_threshold: float = 1.0
    slow_python_threshold: float = 1.0
    fail_on: str | None = None
    ignore: Sequence[str] = ()
    max_signatures: int = 2000


class LogAnalyzer(_BlockScanner, _RequestStats, _Classifier, _Report):
    """Streaming analysis: ``feed`` bytes in any block sizes, ``end_source`` per source, ``summary``."""

    def __init__(self, options: AnalysisOptions | None = None,
                 on_record: Callable[[LogRecord], None] | None = None,
                 on_record_level: str = "WARNING", fast: bool = True) -> None:
        self.options = opts = options or AnalysisOptions()
        self._since = _ts_bytes(opts.since) if opts.since else None
        self._gate_level = parse_level(opts.fail_on) if opts.fail_on else None
        try:
            self._ignore = [re.compile(p) for p in opts.ignore]
        except re.error as exc:
            raise ConfigError(f"invalid --ignore pattern: {exc}; use a Python regular expression") from None
        self._on_record = on_record
        # the vectorised path sees each INFO/DEBUG record only in aggregate
        self._classify_all = (self._gate_level is not None and self._gate_level < 30) or (
            on_record is not None and parse_level(on_record_level) < 30)
        self._needs_slow = not fast or (self._gate_level is not None and self._gate_level < 30) or (
            on_record is not None and parse_level(on_record_level) < 30)
        self._on_record_level = parse_level(on_record_level)
        self._carry = b"\n"
        self._overflow = False  # the previous block ended inside an over-long record
        self.sources: list[dict[str, Any]] = []
        self._src_records = 0
        self._src_lines = 0
        self._src_bytes = 0
        self._src_last_nl = True
        # counters
        self.records = 0
        self.skipped_before_since = 0
        self.lines = 0
        self.bytes = 0
        self.unparsed_lines = 0
        self.tracebacks = 0
        self.records_with_traceback = 0
        self.levels: dict[bytes, int] = {}
        self.dbs: dict[bytes, int] = {}
        self.loggers: dict[bytes, int] = {}
        self.pids: dict[bytes, int] = {}
        self.first_ts: bytes | None = None
        self.last_ts: bytes | None = None
        # requests
        self.req_total = 0
        self.req_status: dict[bytes, int] = {}
        self.req_timed = 0
        self.req_dash = 0
        self.req_no_timing = 0
        self.req_qc = 0
        self.req_qt = 0.0
        self.req_rt = 0.0
        self.req_max_qc = 0
        self.req_slow = {"total": 0, "sql": 0, "python": 0}
        self._heaps: dict[str, list[tuple[float, int, tuple[bytes, ...]]]] = {"total": [], "sql": [], "python": []}
        # a request enters a heap only when it beats the heap's smallest value (-1 until full)
        self._floor = [-1.0, -1.0, -1.0] if opts.top > 0 else [float("inf")] * 3
        self._slow_total = opts.slow_threshold
        self._slow_sql = opts.slow_sql_threshold
        self._slow_python = opts.slow_python_threshold
        self._plan_cache: dict[tuple[bytes, bytes, bytes, bytes], tuple[Any, ...]] = {}
        self._simple: dict[tuple[bytes, bytes, bytes], tuple[dict[str, Any], bool]] = {}
        # classification
        self.errors: dict[tuple[str, ...], dict[str, Any]] = {}
        self.warnings: dict[tuple[str, ...], dict[str, Any]] = {}
        self.errors_total = 0
        self.warnings_total = 0
        self.signature_overflow = 0
        self.login_failed = _Category()
        self._login_pairs: dict[tuple[str, str, str], int] = {}
        self.access_denied = _Category()
        self.csrf = _Category()
        self.contention = _Category()
        self.worker_limits = _Category()
        self.cron_failures = _Category()
        self.module_failures = _Category()
        self.critical = _Category()
        self.gate_matched = 0
        self.gate_ignored = 0
        self.gate_examples: list[dict[str, Any]] = []
        self.warnings_io: list[str] = []

    # -- feeding -----------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Add the next block of the current source (any size, any boundary)."""
        if not data:
            return
        n = data.count(b"\n")
        self.lines += n
        self._src_lines += n
        self.bytes += len(data)
        self._src_bytes += len(data)
        self._src_last_nl = data[-1:] == b"\n"
        buf = self._carry + data
        last = _last_header(buf, buf.rfind(b"\n"))
        if last > 0:
            # records before the last header are complete; the last one may go on in the next block
            self._process(buf, last)
            buf = buf[last:]
        if len(buf) > MAX_RECORD:
            # one record (or non-Odoo text) longer than MAX_RECORD: process it, count its tail apart
            end = buf.rfind(b"\n")
            if end <= 0:
                end = len(buf)
            self._process(buf, end)
            buf = buf[end:]
            self._overflow = True
        self._carry = buf

    def feed_lines(self, lines: Iterable[bytes | str]) -> None:
        """Add lines (bytes or str, with or without their newline), grouped into big blocks."""
        block: list[bytes] = []
        size = 0
        for line in lines:
            if isinstance(line, str):
                line = line.encode("utf-8", "surrogateescape")
            if not line.endswith(b"\n"):
                line += b"\n"
            block.append(line)
            size += len(line)
            if size >= CHUNK_SIZE:
                self.feed(b"".join(block))
                block, size = [], 0
        if block:
            self.feed(b"".join(block))

    def end_source(self, name: str = "-") -> dict[str, Any]:
        """Finish the current source (records never span sources) and note its figures."""
        self._flush()
        info: dict[str, Any] = {"source": name, "records": self._src_records, "lines": self._src_lines,
                                "bytes": self._src_bytes}
        if self._src_records == 0 and self._src_lines > 0:
            info["format_warning"] = (
                f"no Odoo log records found in {name}: is it an Odoo log? Expected lines like "
                "'YYYY-MM-DD HH:MM:SS,mmm PID LEVEL DB LOGGER: message'"
            )
        self.sources.append(info)
        self._src_records = self._src_lines = self._src_bytes = 0
        self._src_last_nl = True
        return info

    def _flush(self) -> None:
        """Process the open last record of the current source."""
        buf = self._carry
        end = len(buf) - 1 if buf.endswith(b"\n") else len(buf)  # the last newline ends a line
        if end > 0:
            self._process(buf, end)
        if self._src_bytes and not self._src_last_nl:
            self.lines += 1
            self._src_lines += 1
            self._src_last_nl = True
        self._carry = b"\n"
        self._overflow = False

    def merge(self, other: LogAnalyzer) -> None:
        """Add the results of ``other``, which analysed the part of the current source that follows."""
        for name in ("records", "skipped_before_since", "lines", "bytes", "unparsed_lines", "tracebacks",
                     "records_with_traceback", "req_timed", "req_dash", "req_no_timing", "req_qc", "req_qt",
                     "req_rt", "errors_total", "warnings_total", "signature_overflow", "gate_matched",
                     "gate_ignored", "_src_records", "_src_lines", "_src_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self._src_last_nl = other._src_last_nl
        for mine, theirs, cap in ((self.levels, other.levels, None), (self.dbs, other.dbs, None),
                                  (self.loggers, other.loggers, MAX_LOGGERS), (self.pids, other.pids, MAX_PIDS),
                                  (self.req_status, other.req_status, None), (self.req_slow, other.req_slow, None),
                                  (self._login_pairs, other._login_pairs, 10000)):
            for k, v in theirs.items():
                if k in mine:
                    mine[k] += v
                elif cap is None or len(mine) < cap:
                    mine[k] = v
        self.first_ts = self.first_ts or other.first_ts
        self.last_ts = other.last_ts or self.last_ts
        self.req_max_qc = max(self.req_max_qc, other.req_max_qc)
        offset = self.req_total
        self.req_total += other.req_total
        for i, key in enumerate(("total", "sql", "python")):
            for value, neg, row in sorted(other._heaps[key], key=lambda item: item[1], reverse=True):
                if value > self._floor[i]:
                    self._keep_one(i, value, offset - neg, row)
        for mine_t, theirs_t in ((self.errors, other.errors), (self.warnings, other.warnings)):
            for key, entry in theirs_t.items():
                have = mine_t.get(key)
                if have is None:
                    if len(mine_t) >= self.options.max_signatures:
                        self.signature_overflow += entry["count"]
                    else:
                        mine_t[key] = entry
                    continue
                have["count"] += entry["count"]
                have["last"] = entry["last"]
                if LEVELS.get(entry["level"], 0) > LEVELS.get(have["level"], 0):
                    have["level"] = entry["level"]
                for db in entry["databases"]:
                    if db not in have["databases"] and len(have["databases"]) < 5:
                        have["databases"].append(db)
        for name in ("login_failed", "access_denied", "csrf", "contention", "worker_limits", "cron_failures",
                     "module_failures", "critical"):
            mine_c, theirs_c = getattr(self, name), getattr(other, name)
            mine_c.count += theirs_c.count
            for k, v in theirs_c.kinds.items():
                mine_c.kinds[k] = mine_c.kinds.get(k, 0) + v
            mine_c.examples.extend(theirs_c.examples[: MAX_EXAMPLES - len(mine_c.examples)])
        self.gate_examples.extend(other.gate_examples[: MAX_EXAMPLES - len(self.gate_examples)])
        self.warnings_io.extend(other.warnings_io)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_plan_cache"], state["_simple"], state["_on_record"] = {}, {}, None  # caches stay home
        return state
