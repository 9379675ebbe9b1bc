"""Odoo server log analysis in one streaming pass with flat memory.

Why: the "logs" runbook must read multi-gigabyte Odoo logs (files, rotated ``.gz``, standard input,
and later SSH file objects and container log streams) and say what went wrong: errors grouped by
signature, tracebacks, HTTP status and slow requests (werkzeug timing fields), security events,
database contention, worker limit kills, cron and module failures. It must never hold the log in
memory, so the parser works on 4 MB byte blocks: a few regular-expression passes per block count the
headers and request lines in C (``Counter`` over ``findall``), Python only touches the rare records
(WARNING and above, INFO lines holding a keyword; repeated ones come from a cache), and every result
is a counter, a bounded heap or a capped table. Big plain files are split at record boundaries over
worker processes and merged in order. ``_scan_slow`` is the one-step-per-record reference path
(``--since`` boundaries, gates below WARNING, callbacks); tests check both paths agree.

Odoo's log format (12 to 18): ``YYYY-MM-DD HH:MM:SS,mmm PID LEVEL DB LOGGER: message``, followed by
any number of lines that do not start with such a header (tracebacks, SQL, empty lines). ``?`` and
``None`` in the DB column are placeholders. Odoo sets ``TZ=UTC``, so timestamps are UTC.
"""

from __future__ import annotations

import gzip
import heapq
import io
import logging
import os
import re
import sys
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, BinaryIO

from odoops.errors import ConfigError, OdoopsError
from odoops.redact import redact_text

__all__ = [
    "AnalysisOptions",
    "LogAnalyzer",
    "LogGateFailed",
    "LogRecord",
    "LogSourceError",
    "analyze_lines",
    "analyze_sources",
    "analyze_stream",
    "expand_sources",
    "follow",
    "gate_failed",
    "iter_chunks",
    "iter_lines_from_stream",
    "open_source",
    "parse_level",
    "parse_records",
    "parse_since",
]

alert_logger = logging.getLogger("odoops.alerts")
_log = logging.getLogger(__name__)

CHUNK_SIZE = 4 << 20  # bytes read per call: big enough to amortise Python overhead, small for memory
MAX_RECORD = 32 << 20  # a single record longer than this is classified on its first MAX_RECORD bytes
MAX_CLASSIFY_TEXT = 256 << 10  # bytes of one record's text examined for classification
MAX_EXAMPLES = 20  # examples kept per category
PARALLEL_MIN_BYTES = 256 << 20  # plain local files from this size are analysed by several processes
PLAN_CACHE_SIZE = 2048  # classified records remembered (logs repeat the same records again and again)
PLAN_CACHE_MAX_TEXT = 4096  # ... when their continuation text is at most this long (bounds the cache)
MAX_PIDS = 1000
MAX_LOGGERS = 5000

LEVELS: dict[str, int] = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
STANDARD_LEVELS = tuple(LEVELS)
EXIT_GATE_FAILED = 3

_HDR = rb"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\d+) ([A-Z][A-Z_]*) (\S+) ([^\s:]+):"
_HDR_NC = rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ [A-Z][A-Z_]* \S+ [^\s:]+:"
# One record: the header line and every following line that does not start with a header.
_RX_RECORD = re.compile(rb"\n" + _HDR + rb" ?([^\n]*)((?:\n(?!" + _HDR_NC + rb")[^\n]*)*)")
_RX_HEADER = re.compile(_HDR + rb" ?(.*)")
_TS = rb"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
_RX_HDR_AT = re.compile(_HDR_NC)
_RX_FIRST = re.compile(rb"\n" + _TS + rb" \d+ [A-Z][A-Z_]* \S+ [^\s:]+:")
_RX_TS = re.compile(rb"\n" + _TS + rb" \d+ [A-Z][A-Z_]* \S+ [^\s:]+:")
_RX_TB_LINE = re.compile(rb"\nTraceback \(most recent call last\):\r?(?=\n|\Z)")
_TB = b"\nTraceback (most recent call last):"
# werkzeug request line: IP - - [date] "METHOD path HTTP/x.y" STATUS SIZE[ QUERIES QUERY_TIME REMAINING | - - -]
# Speed: sre runs an optional or repeated *group* (``(?:...)?``, ``(?: x)*?``) through its REPEAT machinery,
# which costs a context per attempt; ``(?:X|)`` and an explicit alternation try the same candidates in the same
# order (so they match exactly the same text) at a fraction of the cost. Hence the spellings below.
# lazy: a normal path is one token (first branch); a path with spaces still matches, shortest first
_PATH = rb"(?:\S+|\S+(?: \S+)+?)"
_TIMING = rb"(?: (?:(\d+) (\d+\.\d+) (\d+\.\d+)|(- - -))(?: [\w-]+|)|)[ \t\r]*$"
_REQ = rb'\S+ - - \[[^\]\n]*\] "([A-Z]+) (' + _PATH + rb') HTTP/\d(?:\.\d|)" (\d{3}) \S+' + _TIMING
_RX_REQUEST = re.compile(_REQ)
_TS_NC = rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
# Fast path, one findall per block. Every record gives (timestamp, "PID LEVEL DB LOGGER", status, timing, message,
# continuation): status and timing on werkzeug request lines only (read in a lookahead), timestamp, message and
# continuation only for records at levels other than INFO and DEBUG. INFO/DEBUG records thus collapse in a
# Counter to one entry per distinct key and request figures; the others come with their text, in log order.
_RX_KEYS_REQ = re.compile(
    rb"\n(?:" + _TS_NC + rb" (?=\d+ (?:INFO|DEBUG) )|(" + _TS_NC + rb") )(\d+ [A-Z][A-Z_]* \S+ [^\s:]+):"
    rb"(?:(?<= werkzeug:)(?= ?"
    rb'\S+ - - \[[^\]\n]*\] "[A-Z]+ ' + _PATH + rb' HTTP/\d(?:\.\d|)" (\d{3}) \S+'
    rb"( \d+ \d+\.\d+ \d+\.\d+| - - -|)(?: [\w-]+|)[ \t\r]*$)|)"
    rb"(?(1) ?([^\n]*)((?:\n(?!" + _HDR_NC + rb")[^\n]*)*))", re.M)
# Two-pass fast path (LogAnalyzer._scan_fast). Headers: one string per record: "PID LEVEL DB LOGGER" for INFO and
# DEBUG records (few distinct strings, counted in C by Counter), the whole record text (timestamp, header, message,
# continuation) for the others (rare). Requests: one string per werkzeug request line (the rest of the line from
# the request's opening quote), found from the literal " werkzeug:"; valid only when every " werkzeug:" of the
# block is a werkzeug header's logger field (checked by counting), else the one-pass _RX_KEYS_REQ is used.
_TS_U = rb"\d\d\d\d-\d\d-\d\d \d\d:\d\d:\d\d,\d\d\d"  # _TS_NC unrolled: same text, sre runs it faster
_RX_KEYS = re.compile(
    # possessive (++, *+) where backtracking could not find another match anyway: same matches, less work;
    # an INFO/DEBUG record takes the first branch and the key; any other falls back to the lookahead branch
    rb"\n(?:" + _TS_U + rb" |(?=" + _TS_U + rb" ))(\d++ (?:INFO|DEBUG) \S++ [^\s:]++(?=:)|"
    + _TS_U + rb" \d++ [A-Z][A-Z_]*+ \S++ [^\s:]++:[^\n]*+(?:\n(?!" + _HDR_NC + rb")[^\n]*+)*+)")
_WZ = b" werkzeug:"
_RX_WZ_REQ = re.compile(rb' werkzeug: ?\S+ - - \[[^\]\n]*\] "([^\n]*+)')
# ... and the rest of the line (from the request's opening quote) is checked once per distinct value: the part
# above cannot match in another way, so this is exactly _REQ (a rest that fails is not a request, as there)
_RX_REQ_REST = re.compile(
    rb"[A-Z]+ " + _PATH + rb' HTTP/\d(?:\.\d|)" (\d{3}) \S+( \d+ \d+\.\d+ \d+\.\d+| - - -|)(?: [\w-]+|)[ \t\r]*$')
_RX_REQ_ROW = re.compile(rb"\n" + _TS + rb" \d+ [A-Z][A-Z_]* (\S+) werkzeug: ?" + _REQ, re.M)
# INFO-level messages worth classifying; everything at WARNING or above is always classified.
# INFO/DEBUG messages worth classifying (failed logins, worker limits, lost database connections);
# records at WARNING and above are always classified, tracebacks included.
_KEYWORDS = (
    b"Login failed",
    b") reached",
    b"Connection to the database failed",
)
_QUIET = frozenset((b"INFO", b"DEBUG"))
_FIRST = itemgetter(0)
_FIRST_TWO = itemgetter(0, 1)

_RX_LOGIN_FAILED = re.compile(r"Login failed for db:(\S*) login:(.*?) from (\S+)")
_RX_FRAME = re.compile(r'^\s+File "([^"]*)", line \d+, in (\S+)')
_RX_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Denied|Failure|Warning|Interrupt|Fault)?\w*)(?::\s?(.*))?$")
_RX_HEXID = re.compile(r"0x[0-9a-fA-F]+|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{6,}\b")
_RX_NUM = re.compile(r"\d+(?:\.\d+)?")
_RX_SQL_LITERAL = re.compile(r"'(?:[^']|'')*'")
_WORKER_LIMITS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("memory", re.compile(r"Worker \(\d+\) virtual memory limit \(\d+\) reached")),
    ("memory", re.compile(r"Server memory limit \(\d+\) reached")),
    ("cpu_time", re.compile(r"Worker \(\d+\) CPU time limit \(\d+\) reached")),
    ("real_time", re.compile(r"\w+ \(\d+\) timeout after \d+s")),
    ("real_time", re.compile(r"virtual real time limit \(\d+/\d+s\) reached")),
    ("request_limit", re.compile(r"Worker \(\d+\) max request \(\d+\) reached")),
    ("crash", re.compile(r"Worker \(\d+\) Exception occurred, exiting")),
)
_CONTENTION: tuple[tuple[str, str], ...] = (
    ("serialization_failure", "could not serialize access"),
    ("deadlock", "deadlock detected"),
    ("pool_full", "Connection Pool Is Full"),  # odoo.sql_db PoolError
    ("pool_full", "connection pool is full"),
    ("lock_timeout", "could not obtain lock"),
    ("lock_timeout", "due to lock timeout"),
    ("statement_timeout", "due to statement timeout"),
    ("connection_failed", "Connection to the database failed"),
)
_MODULE_FAILURES = (
    "Some modules are not loaded",
    "Some modules have inconsistent states",
    "Failed to load registry",
    "Failed to initialize database",
    "Couldn't load module",
    "invalid manifest",
    "not initialized, you can force it",
)


class LogSourceError(OdoopsError):
    """A log source that cannot be read (missing file, not a file, unreadable, bad gzip)."""


class LogGateFailed(OdoopsError):
    """The ``--fail-on`` gate found records at or above its level that no ``--ignore`` pattern covers."""


@dataclass(slots=True)
class LogRecord:
    """One Odoo log record: its header fields, first-line message and continuation lines."""

    timestamp: str
    pid: int
    level: str
    db: str
    logger: str
    message: str
    continuation: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The whole record as it appeared in the log (without the final newline)."""
        head = f"{self.timestamp} {self.pid} {self.level} {self.db} {self.logger}: {self.message}"
        return "\n".join([head, *self.continuation])


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


# --------------------------------------------------------------------------------------------------
# Sources


def iter_chunks(stream: BinaryIO, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Big byte blocks from any binary file-like object (file, gzip, stdin, paramiko SFTP file)."""
    read = stream.read
    while True:
        block = read(size)
        if not block:
            return
        if isinstance(block, str):  # a text stream slipped in: keep going rather than crash
            block = block.encode("utf-8", "surrogateescape")
        yield block


def iter_lines_from_stream(binary_stream: BinaryIO, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Lines (bytes, newline stripped) from any binary file-like object, read in big blocks."""
    rest = b""
    for block in iter_chunks(binary_stream, chunk_size):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _is_gzip(stream: BinaryIO) -> bool:
    peek = getattr(stream, "peek", None)
    return peek is not None and peek(2)[:2] == b"\x1f\x8b"


@contextmanager
def open_source(source: str) -> Iterator[BinaryIO]:
    """Open a log source for binary reading: a path (plain or gzip-compressed) or ``-`` (stdin)."""
    if source == "-":
        stdin = sys.stdin.buffer
        yield gzip.GzipFile(fileobj=stdin) if _is_gzip(stdin) else stdin  # type: ignore[misc]
        return
    if source.startswith("env:"):
        raise ConfigError(f"{source}: environment sources are resolved by the CLI or flow, not by open_source")
    try:
        raw = open(source, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise LogSourceError(f"log file not found: {source}: check the path (use - for standard input)") from None
    except IsADirectoryError:
        raise LogSourceError(f"{source} is a directory: give the log file itself, e.g. {source}/odoo.log") from None
    except PermissionError:
        raise LogSourceError(f"cannot read {source}: permission denied; run as a user who can read it") from None
    try:
        yield gzip.GzipFile(fileobj=raw) if _is_gzip(raw) else raw  # type: ignore[misc]
    finally:
        raw.close()


# --------------------------------------------------------------------------------------------------
# Small helpers


def parse_level(name: str) -> int:
    """Numeric value of a level name (``error``, ``WARNING``...); raise ConfigError if unknown."""
    value = LEVELS.get(name.strip().upper())
    if value is None:
        raise ConfigError(f"unknown log level {name!r}: use one of {', '.join(STANDARD_LEVELS).lower()}")
    return value


def _level_value(level: bytes) -> int:
    return LEVELS.get(level.decode("ascii", "replace"), 20)


_RX_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A naive UTC datetime from ISO (``2024-05-01T10:00``, with or without zone) or relative (``2h``)."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    m = _RX_RELATIVE.match(text)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2).lower()]
        return now - timedelta(**{unit: float(m.group(1))})
    try:
        value = datetime.fromisoformat(text.strip().replace(",", "."))
    except ValueError:
        raise ConfigError(
            f"cannot read --since {text!r}: give an ISO date-time (2024-05-01T10:00) or a duration (30m, 2h, 1d)"
        ) from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _ts_bytes(value: datetime) -> bytes:
    return value.strftime("%Y-%m-%d %H:%M:%S,").encode() + f"{value.microsecond // 1000:03d}".encode()


def _dec(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _short(text: str, limit: int = 300) -> str:
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return redact_text(text)


def normalize_message(text: str) -> str:
    """A message with numbers, ids and hex values replaced, so that similar errors group together."""
    text = _RX_HEXID.sub("H", text.strip())
    text = _RX_NUM.sub("N", text)
    return text[:240]


def _origin(path: str, func: str) -> str:
    path = path.replace("\\", "/")
    for marker in ("/odoo/addons/", "/addons/", "/odoo/", "site-packages/", "dist-packages/"):
        idx = path.rfind(marker)
        if idx >= 0:
            path = path[idx + len(marker):]
            break
    else:
        path = path.rsplit("/", 1)[-1]
    return f"{path}:{func}"


def exception_of(text: str) -> tuple[str, str, str] | None:
    """``(type, message, origin)`` of the last traceback in a record's text, or None."""
    idx = text.rfind("Traceback (most recent call last):")
    if idx < 0:
        return None
    origin = ""
    for line in text[idx:].split("\n")[1:]:
        if not line.strip():
            continue
        if line[0] in " \t":
            fm = _RX_FRAME.match(line)
            if fm:
                origin = _origin(fm.group(1), fm.group(2))
            continue
        em = _RX_EXC.match(line.rstrip())
        if em:
            return em.group(1), (em.group(2) or "").strip(), origin
        return line.strip()[:80], "", origin
    return "Traceback", "", origin


def _last_header(buf: bytes, end: int) -> int:
    """Index of the newline that precedes the last record header starting before ``end`` (-1: none)."""
    p = end
    match = _RX_HDR_AT.match
    while True:
        p = buf.rfind(b"\n", 0, p)
        if p < 0 or match(buf, p + 1):
            return p


def _split_record(text: bytes) -> tuple[bytes, ...]:
    """``(ts, pid, level, db, logger, message, continuation)`` of a record's text (as _RX_RECORD splits it)."""
    pid, level, db, rest = text[24:].split(b" ", 3)
    colon = rest.index(b":")
    nl = rest.find(b"\n", colon)
    msg, cont = (rest[colon + 1:], b"") if nl < 0 else (rest[colon + 1:nl], rest[nl:])
    if msg[:1] == b" ":
        msg = msg[1:]
    return text[:23], pid, level, db, rest[:colon], msg, cont


def _keyword_hits(buf: bytes, end: int, start: int = 0) -> list[int]:
    """Sorted positions of the INFO-level keywords worth classifying."""
    hits: list[int] = []
    for kw in _KEYWORDS:
        i = buf.find(kw, start, end)
        while i >= 0:
            hits.append(i)
            i = buf.find(kw, i + 1, end)
    hits.sort()
    return hits


# --------------------------------------------------------------------------------------------------
# The analyzer


class _Category:
    """A counter with a few kept examples (bounded)."""

    __slots__ = ("count", "kinds", "examples")

    def __init__(self) -> None:
        self.count = 0
        self.kinds: dict[str, int] = {}
        self.examples: list[dict[str, Any]] = []

    def add(self, kind: str | Iterable[str] | None, example: Callable[[], dict[str, Any]]) -> None:
        self.count += 1
        for k in ((kind,) if isinstance(kind, str) else kind or ()):
            self.kinds[k] = self.kinds.get(k, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example())

    def as_dict(self, kinds: Sequence[str] = ()) -> dict[str, Any]:
        out_kinds = {k: 0 for k in kinds}
        out_kinds.update(self.kinds)
        result: dict[str, Any] = {"total": self.count}
        if out_kinds:
            result["kinds"] = out_kinds
        result["examples"] = self.examples
        return result


class LogAnalyzer:
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

    # -- the hot loop ------------------------------------------------------------------------------

    def _gap(self, text: bytes) -> None:
        """Lines before the first record of a block: a tail of an over-long record, or not Odoo lines."""
        if not text.strip(b"\n"):
            return
        if self._overflow:
            self.tracebacks += len(_RX_TB_LINE.findall(text))
        else:
            self.unparsed_lines += text.count(b"\n") or 1

    def _process(self, buf: bytes, end: int) -> None:
        """Analyse the complete records of ``buf[:end]`` (``buf`` starts with a newline)."""
        if self._since is not None:
            stamps = _RX_TS.findall(buf, 0, end)
            if stamps and max(stamps) < self._since:
                self._gap_only(buf, end)
                self.skipped_before_since += len(stamps)
                return
            if stamps and min(stamps) < self._since:
                self._scan_slow(buf, end)
                return
        if self._needs_slow:
            self._scan_slow(buf, end)
        else:
            self._scan_fast(buf, end)

    def _gap_only(self, buf: bytes, end: int) -> None:
        m = _RX_FIRST.search(buf, 0, end)
        self._gap(buf[: m.start() if m else end])
        if m:
            self._overflow = False

    def _scan_slow(self, buf: bytes, end: int) -> None:
        """Reference path: one Python step per record (used with --since, low-level gates, callbacks)."""
        hits = _keyword_hits(buf, end)
        nhits = len(hits)
        hi = 0
        since = self._since
        levels, dbs, loggers, pids = self.levels, self.dbs, self.loggers, self.pids
        quiet = _QUIET
        classify_all = self._classify_all
        tb = _TB
        count = 0
        skipped = 0
        last_ts = None
        first = True
        for m in _RX_RECORD.finditer(buf, 0, end):
            if first:
                first = False
                if m.start() > 0:
                    self._gap(buf[: m.start()])
                self._overflow = False
            e = m.end()
            ts, pid, level, db, logger, msg, cont = m.groups()
            flag = classify_all or level not in quiet
            if nhits and hi < nhits and hits[hi] < e:
                if hits[hi] >= m.start():
                    flag = True
                while hi < nhits and hits[hi] < e:
                    hi += 1
            if since is not None and ts < since:
                skipped += 1
                continue
            if not count and self.first_ts is None:
                self.first_ts = ts
            count += 1
            last_ts = ts
            levels[level] = levels.get(level, 0) + 1
            if pid in pids:
                pids[pid] += 1
            elif len(pids) < MAX_PIDS:
                pids[pid] = 1
            dbs[db] = dbs.get(db, 0) + 1
            if logger in loggers:
                loggers[logger] += 1
            elif len(loggers) < MAX_LOGGERS:
                loggers[logger] = 1
            if logger == b"werkzeug":
                self._request(ts, db, msg)
            if cont:
                if tb in cont:
                    ntb = len(_RX_TB_LINE.findall(cont))
                    if ntb:
                        self.tracebacks += ntb
                        self.records_with_traceback += 1
            if flag:
                self._classify(ts, pid, level, db, logger, msg, cont)
        if first:
            self._gap(buf[:end])
        self.records += count
        self._src_records += count
        self.skipped_before_since += skipped
        if last_ts is not None:
            self.last_ts = last_ts

    def _scan_fast(self, buf: bytes, end: int) -> None:
        """Vectorised path: a header pass and a request pass counted in C, Python only for rare records."""
        mfirst = _RX_FIRST.search(buf, 0, end)
        if mfirst is None:
            self._gap(buf[:end])
            return
        start = mfirst.start()
        # INFO/DEBUG records holding a keyword (rare) cut the header pass, so that every record comes in log order
        extra: list[tuple[bytes, ...]] = []
        cuts: list[int] = []
        seen = -1
        for hit in _keyword_hits(buf, end, start):
            rec = _last_header(buf, hit + 1)
            if rec != seen:
                seen = rec
                m = _RX_RECORD.match(buf, rec, end)
                if m is not None and m.group(3) in _QUIET:
                    extra.append(m.groups())
                    cuts.append(rec)
        found: list[bytes] = []
        marks: list[int] = []  # where each keyword record comes, as a number of header-pass results before it
        pos = start
        for rec in cuts:
            found += _RX_KEYS.findall(buf, pos, rec)
            marks.append(len(found))
            pos = rec
        found += _RX_KEYS.findall(buf, pos, end)
        keys: dict[bytes, int] = {}  # in order of first appearance, like the other paths
        parsed: dict[bytes, tuple[bytes, ...]] = {}  # records at levels other than INFO/DEBUG
        repeated = False
        tb_lines = tb_records = 0
        counts = Counter(found)
        for text, n in counts.items():
            if text[4:5] == b"-":
                repeated = repeated or n > 1
                row = parsed[text] = _split_record(text)
                key = b" ".join(row[1:5])
                if _TB in text:
                    k = len(_RX_TB_LINE.findall(text))
                    if k:
                        tb_lines += k * n
                        tb_records += n
            else:
                key = text
            keys[key] = keys.get(key, 0) + n
        if extra:
            get = parsed.get
            todo: list[tuple[bytes, ...]] = []
            pos = 0
            for mark, groups in zip(marks, extra, strict=True):
                todo.extend(filter(None, map(get, found[pos:mark])))
                todo.append(groups)
                pos = mark
            todo.extend(filter(None, map(get, found[pos:])))
        elif repeated:
            todo = list(filter(None, map(parsed.get, found)))
        else:
            todo = list(parsed.values())
        del found, counts, parsed
        wz = 0
        for key, n in keys.items():
            if key.endswith(b" werkzeug"):
                wz += n
        requests: dict[tuple[bytes, bytes], int] = {}
        if wz != buf.count(_WZ, start, end):
            # " werkzeug:" also outside werkzeug headers: the one-pass path reads requests in header context
            self._scan_combined(buf, end)
            return
        if wz:
            rest = _RX_REQ_REST.match
            for text, n in Counter(_RX_WZ_REQ.findall(buf, start, end)).items():
                m = rest(text)
                if m is not None:
                    req = m.groups()
                    requests[req] = requests.get(req, 0) + n
        if start > 0:
            self._gap(buf[:start])
        self._overflow = False
        if self.first_ts is None:
            self.first_ts = mfirst.group(1)
        last = _last_header(buf, end)
        self.last_ts = _RX_FIRST.match(buf, last).group(1)
        levels, dbs, loggers, pids = self.levels, self.dbs, self.loggers, self.pids
        count = 0
        for key, n in keys.items():
            pid, level, db, logger = key.split(b" ")
            count += n
            levels[level] = levels.get(level, 0) + n
            dbs[db] = dbs.get(db, 0) + n
            if pid in pids:
                pids[pid] += n
            elif len(pids) < MAX_PIDS:
                pids[pid] = n
            if logger in loggers:
                loggers[logger] += n
            elif len(loggers) < MAX_LOGGERS:
                loggers[logger] = n
        self.records += count
        self._src_records += count
        if requests:
            self._requests_fast(requests, buf, start, end)
        if buf.find(_TB, start, end) >= 0:
            total = len(_RX_TB_LINE.findall(buf, start, end))
            if total == tb_lines:  # all in the records above INFO/DEBUG, whose text is at hand
                self.tracebacks += total
                self.records_with_traceback += tb_records
            else:
                self._tracebacks_fast(buf, start, end)
        self._classify_rows(todo)

    def _tracebacks_fast(self, buf: bytes, start: int, end: int) -> None:
        """Traceback lines of a block and the records holding them (rare: one Python step per traceback)."""
        if buf.find(_TB, start, end) >= 0:
            owners = set()
            for m in _RX_TB_LINE.finditer(buf, start, end):
                self.tracebacks += 1
                owners.add(_last_header(buf, m.start() + 1))
            self.records_with_traceback += len(owners)

    def _classify_rows(self, todo: list[tuple[bytes, ...]]) -> None:
        """Classify records in log order: those above INFO/DEBUG, and INFO/DEBUG ones holding a keyword."""
        simple = self._simple
        quiet = _QUIET
        for row in todo:
            ts, pid, level, db, logger, msg, cont = row
            hit = None if cont or level in quiet else simple.get((level, logger, msg))
            if hit is None:
                self._classify(ts, pid, level, db, logger, msg, cont)
                continue
            # a repeated single-line record that only counts under its signature: no Python detour
            entry, is_error = hit
            entry["count"] += 1
            entry["last"] = ts
            edbs = entry["databases"]
            if db not in edbs and len(edbs) < 5:
                edbs.append(db)
            if is_error:
                self.errors_total += 1
            else:
                self.warnings_total += 1

    def _scan_combined(self, buf: bytes, end: int) -> None:
        """One-pass vectorised path (blocks where " werkzeug:" also appears outside werkzeug headers)."""
        mfirst = _RX_FIRST.search(buf, 0, end)
        if mfirst is None:
            self._gap(buf[:end])
            return
        start = mfirst.start()
        if start > 0:
            self._gap(buf[:start])
        self._overflow = False
        if self.first_ts is None:
            self.first_ts = mfirst.group(1)
        last = _last_header(buf, end)
        self.last_ts = _RX_FIRST.match(buf, last).group(1)
        # header fields and request figures, counted in C then folded per distinct combination
        levels, dbs, loggers, pids = self.levels, self.dbs, self.loggers, self.pids
        count = 0
        keys: dict[bytes, int] = {}
        requests: dict[tuple[bytes, bytes], int] = {}
        found = _RX_KEYS_REQ.findall(buf, start, end)
        rows = list(filter(_FIRST, found))  # records at levels other than INFO/DEBUG, one by one, in log order
        for row, n in Counter(found).items():
            key, status = row[1], row[2]
            keys[key] = keys.get(key, 0) + n
            if status:
                requests[(status, row[3])] = requests.get((status, row[3]), 0) + n
        del found
        for key, n in keys.items():
            pid, level, db, logger = key.split(b" ")
            count += n
            levels[level] = levels.get(level, 0) + n
            dbs[db] = dbs.get(db, 0) + n
            if pid in pids:
                pids[pid] += n
            elif len(pids) < MAX_PIDS:
                pids[pid] = n
            if logger in loggers:
                loggers[logger] += n
            elif len(loggers) < MAX_LOGGERS:
                loggers[logger] = n
        self.records += count
        self._src_records += count
        if requests:
            self._requests_fast(requests, buf, start, end)
        # tracebacks
        if buf.find(_TB, start, end) >= 0:
            owners = set()
            for m in _RX_TB_LINE.finditer(buf, start, end):
                self.tracebacks += 1
                owners.add(_last_header(buf, m.start() + 1))
            self.records_with_traceback += len(owners)
        # INFO/DEBUG records holding a keyword (rare): classified in log order among the records above
        extra: list[tuple[int, tuple[bytes, ...]]] = []
        seen = -1
        for pos in _keyword_hits(buf, end, start):
            rec = _last_header(buf, pos + 1)
            if rec != seen:
                seen = rec
                m = _RX_RECORD.match(buf, rec, end)
                if m is not None and m.group(3) in _QUIET:
                    extra.append((rec, m.groups()))
        if extra:
            # place the records above by their header (found one after the other) and merge
            placed: list[tuple[int, int, tuple[bytes, ...]]] = []
            pos = start - 1
            for row in rows:
                at = buf.find(b"\n" + row[0] + b" " + row[1] + b":", pos + 1, end)
                pos = at if at >= 0 else pos
                placed.append((pos, 1, row))
            placed.extend((rec, 0, groups) for rec, groups in extra)
            placed.sort(key=_FIRST_TWO)
            todo = [(kind, row) for _, kind, row in placed]
        else:
            todo = [(1, row) for row in rows]
        simple = self._simple
        for kind, row in todo:
            if not kind:  # a keyword record, as matched by _RX_RECORD
                self._classify(*row)
                continue
            ts, key, _, _, msg, cont = row
            pid, level, db, logger = key.split(b" ")
            hit = None if cont else simple.get((level, logger, msg))
            if hit is None:
                self._classify(ts, pid, level, db, logger, msg, cont)
                continue
            # a repeated single-line record that only counts under its signature: no Python detour
            entry, is_error = hit
            entry["count"] += 1
            entry["last"] = ts
            edbs = entry["databases"]
            if db not in edbs and len(edbs) < 5:
                edbs.append(db)
            if is_error:
                self.errors_total += 1
            else:
                self.warnings_total += 1

    def _requests_fast(self, rows: dict[tuple[bytes, bytes], int], buf: bytes, start: int, end: int) -> None:
        """Fold a block's request lines into the counters, one Python step per distinct (status, timing)."""
        base = self.req_total
        self.req_total += sum(rows.values())
        st = self.req_status
        slow = self.req_slow
        floor = self._floor
        wanted: dict[tuple[bytes, bytes], tuple[float, float, float]] = {}
        for (status, timing), n in rows.items():
            st[status] = st.get(status, 0) + n
            if not timing:
                self.req_no_timing += n
                continue
            if timing == b" - - -":
                self.req_dash += n
                continue
            qc, qt, rt = timing.split()
            nqc, fqt, frt = int(qc), float(qt), float(rt)
            total = fqt + frt
            self.req_timed += n
            self.req_qc += nqc * n
            self.req_qt += fqt * n
            self.req_rt += frt * n
            if nqc > self.req_max_qc:
                self.req_max_qc = nqc
            if total >= self._slow_total:
                slow["total"] += n
            if fqt >= self._slow_sql:
                slow["sql"] += n
            if frt >= self._slow_python:
                slow["python"] += n
            if total > floor[0] or fqt > floor[1] or frt > floor[2]:
                wanted[(status, timing)] = (total, fqt, frt)
        if not wanted or self.options.top <= 0:
            return
        # rare once the heaps are full: walk the block's request lines to offer the candidates in order
        for r, m in enumerate(_RX_REQ_ROW.finditer(buf, start, end)):
            ts, db, method, path, status, qc, qt, rt, dash = m.groups()
            if qc is None:
                continue
            values = wanted.get((status, b" " + b" ".join((qc, qt, rt))))
            if values is not None:
                self._keep_slow(values, base + r + 1, (ts, db, method, path, status, qc, qt, rt))

    def _request(self, ts: bytes, db: bytes, msg: bytes) -> None:
        m = _RX_REQUEST.match(msg)
        if m is None:
            return
        self.req_total += 1
        method, path, status, qc, qt, rt, dash = m.groups()
        st = self.req_status
        st[status] = st.get(status, 0) + 1
        if dash:
            self.req_dash += 1
            return
        if qc is None:
            self.req_no_timing += 1
            return
        nqc = int(qc)
        fqt = float(qt)
        frt = float(rt)
        self.req_timed += 1
        self.req_qc += nqc
        if nqc > self.req_max_qc:
            self.req_max_qc = nqc
        self.req_qt += fqt
        self.req_rt += frt
        total = fqt + frt
        if total >= self._slow_total:
            self.req_slow["total"] += 1
        if fqt >= self._slow_sql:
            self.req_slow["sql"] += 1
        if frt >= self._slow_python:
            self.req_slow["python"] += 1
        if total > self._floor[0] or fqt > self._floor[1] or frt > self._floor[2]:
            self._keep_slow((total, fqt, frt), self.req_total, (ts, db, method, path, status, qc, qt, rt))

    def _keep_slow(self, values: tuple[float, float, float], ordinal: int, row: tuple[bytes, ...]) -> None:
        """Offer a timed request to the three bounded top-N heaps (total, SQL, Python time)."""
        for i in range(3):
            if values[i] > self._floor[i]:
                self._keep_one(i, values[i], ordinal, row)

    def _keep_one(self, i: int, value: float, ordinal: int, row: tuple[bytes, ...]) -> None:
        """Heap entries are (value, -ordinal, row): on ties the earliest request is kept."""
        top = self.options.top
        heap = self._heaps[("total", "sql", "python")[i]]
        item = (value, -ordinal, row)
        if len(heap) < top:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
        if len(heap) >= top:
            self._floor[i] = heap[0][0]

    # -- classification (records at WARNING or above, or holding a keyword) -------------------------

    def _classify(self, ts: bytes, pid: bytes, level: bytes, db: bytes, logger: bytes,
                  msg: bytes, cont: bytes) -> None:
        """Classify one record; the plan of a single-line record is cached (logs repeat themselves)."""
        if len(cont) > PLAN_CACHE_MAX_TEXT:
            plan = self._plan(level, logger, msg, cont)
        else:
            ck = (level, logger, msg, cont)
            plan = self._plan_cache.get(ck)
            if plan is None:
                if len(self._plan_cache) >= PLAN_CACHE_SIZE:
                    self._plan_cache.clear()
                plan = self._plan_cache[ck] = self._plan(level, logger, msg, cont)
        lvl, s_logger, s_msg, s_cont, exc, adds, login, sig = plan
        ex: dict[str, Any] | None = None

        def example() -> dict[str, Any]:
            nonlocal ex
            if ex is None:
                ex = {"timestamp": _dec(ts), "level": _dec(level), "db": _dec(db), "logger": s_logger,
                      "message": _short(s_msg)}
                if exc:
                    ex["exception"] = _short(f"{exc[0]}: {exc[1]}" if exc[1] else exc[0])
            return ex

        for category, kind in adds:
            category.add(kind, example)
        if login is not None and (login in self._login_pairs or len(self._login_pairs) < 10000):
            self._login_pairs[login] = self._login_pairs.get(login, 0) + 1
        if sig is not None:
            entry = self._signature(lvl, ts, db, level, s_logger, exc, sig, example)
            if (entry is not None and not cont and not adds and login is None
                    and (self._gate_level is None or lvl < self._gate_level)
                    and (self._on_record is None or lvl < self._on_record_level)):
                if len(self._simple) >= 4096:
                    self._simple.clear()
                self._simple[(level, logger, msg)] = (entry, lvl >= 40)
        if self._gate_level is not None and lvl >= self._gate_level:
            whole = f"{_dec(ts)} {_dec(pid)} {_dec(level)} {_dec(db)} {s_logger}: {s_msg}{s_cont}"
            if any(rx.search(whole) for rx in self._ignore):
                self.gate_ignored += 1
            else:
                self.gate_matched += 1
                if len(self.gate_examples) < MAX_EXAMPLES:
                    self.gate_examples.append(example())
        if self._on_record is not None and lvl >= self._on_record_level:
            self._on_record(LogRecord(_dec(ts), int(pid), _dec(level), _dec(db), s_logger, s_msg,
                                      s_cont.split("\n")[1:] if s_cont else []))

    def _plan(self, level: bytes, logger: bytes, msg: bytes, cont: bytes) -> tuple[Any, ...]:
        """What a record counts as: categories, failed-login key, error/warning signature."""
        lvl = _level_value(level)
        s_msg = _dec(msg).rstrip()
        if len(cont) > MAX_CLASSIFY_TEXT:
            cont = cont[: MAX_CLASSIFY_TEXT // 2] + b"\n" + cont[-MAX_CLASSIFY_TEXT // 2:]
        s_cont = _dec(cont) if cont else ""
        s_logger = _dec(logger)
        exc = exception_of(s_cont) if "Traceback (most recent call last):" in s_cont else None
        exc_type = exc[0] if exc else ""
        adds: list[tuple[_Category, Any]] = []
        login = None
        # security
        if "Login failed for db:" in s_msg:
            lm = _RX_LOGIN_FAILED.search(s_msg)
            login = (lm.group(1), lm.group(2), lm.group(3)) if lm else ("?", "?", "?")
            adds.append((self.login_failed, None))
        if (exc_type.endswith(("AccessError", "AccessDenied")) or "Access Denied" in s_msg
                or "AccessError" in s_msg or "AccessDenied" in s_msg):
            adds.append((self.access_denied, exc_type.rsplit(".", 1)[-1] or "message"))
        if "CSRF" in s_msg or "CSRF" in s_cont:
            adds.append((self.csrf, None))
        # database contention
        kinds = {kind for kind, needle in _CONTENTION if needle in s_msg or needle in s_cont}
        if s_logger == "odoo.sql_db" and s_msg.startswith("bad query"):
            kinds.add("bad_query")
        if kinds:
            adds.append((self.contention, sorted(kinds)))
        # worker limits
        if exc_type == "MemoryError":
            adds.append((self.worker_limits, "memory_hard"))
        elif "limit (" in s_msg or "timeout after" in s_msg or "Worker (" in s_msg or "Thread " in s_msg:
            for kind, rx in _WORKER_LIMITS:
                if rx.search(s_msg):
                    adds.append((self.worker_limits, kind))
                    break
        sig = None
        if lvl >= 30:
            # cron and module failures
            if "ir_cron" in s_logger or s_logger.startswith("odoo.service.cron") or "cron" in s_msg[:60].lower():
                adds.append((self.cron_failures, None))
            if lvl >= 40 and (s_logger.startswith("odoo.modules")
                              or exc_type.endswith(("ImportError", "ModuleNotFoundError"))
                              or any(p in s_msg or p in s_cont for p in _MODULE_FAILURES)):
                adds.append((self.module_failures, None))
            if lvl >= 50:
                adds.append((self.critical, None))
            sig = self._signature_key(s_logger, s_msg, s_cont, exc)
        return lvl, s_logger, s_msg, s_cont, exc, adds, login, sig

    @staticmethod
    def _signature_key(s_logger: str, s_msg: str, s_cont: str,
                       exc: tuple[str, str, str] | None) -> tuple[tuple[str, ...], str]:
        """Exception type + normalised message + origin (or logger + normalised message) and its label."""
        if exc:
            key: tuple[str, ...] = (exc[0], normalize_message(exc[1]), exc[2])
            return key, f"{exc[0]}: {key[1]}" + (f" [{exc[2]}]" if exc[2] else "")
        norm = s_msg
        if s_logger == "odoo.sql_db" and s_msg.startswith("bad query"):
            norm = _RX_SQL_LITERAL.sub("?", s_msg)
            pg = next((ln for ln in s_cont.split("\n") if ln.startswith("ERROR:")), "")
            if pg:
                norm = f"{norm} -> {pg}"
        key = (s_logger, normalize_message(norm))
        return key, f"{s_logger}: {key[1]}"

    def _signature(self, lvl: int, ts: bytes, db: bytes, level: bytes, s_logger: str,
                   exc: tuple[str, str, str] | None, sig: tuple[tuple[str, ...], str],
                   example: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Count the record under its signature (bounded table; overflow counted apart)."""
        key, label = sig
        table = self.errors if lvl >= 40 else self.warnings
        if lvl >= 40:
            self.errors_total += 1
        else:
            self.warnings_total += 1
        entry = table.get(key)
        if entry is None:
            s_ts = _dec(ts)
            if len(table) >= self.options.max_signatures:
                self.signature_overflow += 1
                return None
            entry = table[key] = {"signature": _short(label, 240), "count": 0, "level": "", "logger": s_logger,
                                  "exception": exc[0] if exc else None, "origin": exc[2] if exc else None,
                                  "first": s_ts, "last": ts, "databases": [], "example": example()}
        entry["count"] += 1
        entry["last"] = ts  # bytes while counting (the fast path stores them as they come)
        if lvl > LEVELS.get(entry["level"], 0):
            entry["level"] = _dec(level)
        dbs = entry["databases"]
        if db not in dbs and len(dbs) < 5:
            dbs.append(db)
        return entry

    # -- results -----------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# Entry points


def _feed_stream(analyzer: LogAnalyzer, stream: BinaryIO, name: str) -> None:
    """Feed a stream in big blocks; a truncated or corrupt compressed stream keeps what was readable."""
    read = getattr(stream, "read1", None) or stream.read  # read1: a gzip cut short still returns its data
    parts: list[bytes] = []
    size = 0
    try:
        while True:
            block = read(CHUNK_SIZE)
            if not block:
                break
            if isinstance(block, str):
                block = block.encode("utf-8", "surrogateescape")
            parts.append(block)
            size += len(block)
            if size >= CHUNK_SIZE:
                analyzer.feed(b"".join(parts))
                parts, size = [], 0
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        analyzer.warnings_io.append(f"{name}: compressed data is truncated or corrupt ({exc}); "
                                    "analysed the readable part")
    except OSError as exc:
        raise LogSourceError(f"cannot read {name}: {exc.strerror or exc}; check the file and the disk") from None
    finally:
        if parts:
            analyzer.feed(b"".join(parts))


def analyze_stream(stream: BinaryIO, options: AnalysisOptions | None = None, name: str = "-") -> dict[str, Any]:
    """Analyse one binary file-like object (file, gzip, stdin, SFTP file, container log stream)."""
    analyzer = LogAnalyzer(options)
    _feed_stream(analyzer, stream, name)
    analyzer.end_source(name)
    return analyzer.summary()


def analyze_lines(lines: Iterable[bytes | str], options: AnalysisOptions | None = None,
                  name: str = "-") -> dict[str, Any]:
    """Analyse an iterator of lines (bytes or str), e.g. a docker logs stream or a generator."""
    return analyze_stream(_LinesReader(lines), options, name)


class _LinesReader(io.RawIOBase):
    """A read-only binary stream over an iterator of lines (keeps memory flat)."""

    def __init__(self, lines: Iterable[bytes | str]) -> None:
        self._it = iter(lines)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        parts: list[bytes] = []
        total = 0
        for line in self._it:
            if isinstance(line, str):
                line = line.encode("utf-8", "surrogateescape")
            if not line.endswith(b"\n"):
                line += b"\n"
            parts.append(line)
            total += len(line)
            if 0 < size <= total:
                break
        return b"".join(parts)


@contextmanager
def _open_env_log(env: Any, path: str) -> Iterator[BinaryIO]:
    """One log file of an inventory environment: local, or over SSH when the environment has ``ssh``."""
    if env.ssh is None:
        with open_source(path) as stream:
            yield stream
        return
    from tasks.ssh import SSHSession

    with SSHSession(env.ssh.host, port=env.ssh.port, user=env.ssh.user, key_file=env.ssh.key_file,
                    known_hosts=env.ssh.known_hosts) as session:
        handle = session.open(path)
        try:
            yield gzip.GzipFile(fileobj=handle) if path.endswith(".gz") else handle  # type: ignore[misc]
        finally:
            handle.close()


def expand_sources(sources: Sequence[str], inventory: str | None = None) -> list[tuple[str, Callable[[], Any]]]:
    """``(name, opener)`` per log: paths, ``-``, and ``env:NAME`` (the environment's ``logs`` paths)."""
    out: list[tuple[str, Callable[[], Any]]] = []
    for source in sources:
        if not source.startswith("env:"):
            out.append((source, lambda s=source: open_source(s)))
            continue
        from odoops.inventory import load_inventory

        env = load_inventory(inventory).environment(source[4:])
        if not env.logs:
            raise ConfigError(
                f"environment {env.name!r} has no 'logs' paths in the inventory: add e.g. logs: [/var/log/odoo/odoo.log] "
                "(container log streams come with the platform layer)"
            )
        for path in env.logs:
            where = f"{env.name}:{path}" if env.ssh is None else f"{env.name}:{env.ssh.host}:{path}"
            out.append((where, lambda e=env, p=path: _open_env_log(e, p)))
    return out


def _split_points(path: str, parts: int) -> list[int]:
    """Offsets that cut a plain log file into ``parts`` ranges, each starting on a record header."""
    size = os.path.getsize(path)
    points = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            f.seek(max(points[-1] + 1, size * k // parts))
            window = f.read(1 << 20)
            m = _RX_FIRST.search(window)
            if m is not None:
                points.append(f.tell() - len(window) + m.start() + 1)
    points.append(size)
    return points


def _analyze_range(path: str, start: int, end: int, options: AnalysisOptions | None) -> LogAnalyzer:
    """Worker: analyse ``path[start:end]`` (a range of whole records) and return the analyzer."""
    analyzer = LogAnalyzer(options)
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(CHUNK_SIZE, left))
            if not block:
                break
            left -= len(block)
            analyzer.feed(block)
    analyzer._flush()
    return analyzer


def _parallel_ok(name: str, jobs: int, min_bytes: int) -> bool:
    """Worker processes are forked, so only from a single-threaded process (the CLI, not a flow run)."""
    if jobs < 2 or name == "-" or not os.path.isfile(name) or threading.active_count() > 1 or os.name != "posix":
        return False
    with open(name, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            return False
    return os.path.getsize(name) >= min_bytes


def analyze_sources(sources: Sequence[str], options: AnalysisOptions | None = None,
                    inventory: str | None = None, jobs: int | None = None,
                    parallel_min_bytes: int = PARALLEL_MIN_BYTES) -> dict[str, Any]:
    """Analyse sources (paths, ``.gz``, ``-``, ``env:NAME``) into one summary, one after the other.

    A big plain local file is cut at record boundaries into ``jobs`` ranges analysed by worker
    processes (default: one per CPU, at most 4) and the results merged in order: same figures, faster.
    """
    jobs = min(os.cpu_count() or 1, 4) if jobs is None else jobs
    analyzer = LogAnalyzer(options)
    for name, opener in expand_sources(sources, inventory):
        if _parallel_ok(name, jobs, parallel_min_bytes):
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            points = _split_points(name, jobs)
            with ProcessPoolExecutor(len(points) - 1, mp_context=get_context("fork")) as pool:
                parts = [pool.submit(_analyze_range, name, a, b, options) for a, b in zip(points[:-1], points[1:], strict=True)]
                for part in parts:
                    analyzer.merge(part.result())
        else:
            with opener() as stream:
                _feed_stream(analyzer, stream, name)
        analyzer.end_source(name)
    return analyzer.summary()


def gate_failed(summary: dict[str, Any]) -> bool:
    """True when the summary's ``--fail-on`` gate found records that no ignore pattern covers."""
    return bool(summary.get("gate", {}).get("failed"))


def parse_records(lines: Iterable[bytes | str]) -> Iterator[LogRecord]:
    """Records one by one from lines (for small inputs and tools; the analyzer has its own fast path)."""
    current: LogRecord | None = None
    for raw in lines:
        line = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
        line = line.rstrip(b"\r\n")
        m = _RX_HEADER.match(line)
        if m:
            if current is not None:
                yield current
            ts, pid, level, db, logger, msg = m.groups()
            current = LogRecord(_dec(ts), int(pid), _dec(level), _dec(db), _dec(logger), _dec(msg).rstrip())
        elif current is not None:
            current.continuation.append(_dec(line))
    if current is not None:
        yield current


# --------------------------------------------------------------------------------------------------
# Follow mode


def _emit_prefect_event(alert: dict[str, Any]) -> bool:
    """Emit a Prefect event for an alert when running inside a flow or task run; never raise."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return False
        from prefect.events import emit_event

        emit_event(event="odoops.logs.threshold-crossed",
                   resource={"prefect.resource.id": f"odoops.logs.{alert['source']}"},
                   payload=alert)
        return True
    except Exception as exc:  # noqa: BLE001 - an alert must never break the watcher
        _log.debug("could not emit Prefect event: %s", exc)
        return False


_RX_HEADER_LEVEL = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ ([A-Z][A-Z_]*) \S+ [^\s:]+:", re.M)


def follow(path: str, options: AnalysisOptions | None = None, *, threshold_errors: int | None = None,
           window_minutes: float = 5.0, alert_level: str = "ERROR", from_start: bool = False,
           stop_event: threading.Event | None = None, max_seconds: float | None = None,
           poll_interval: float = 0.25, on_alert: Callable[[dict[str, Any]], None] | None = None,
           clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Tail ``path`` like ``tail -F`` (rotation and truncation), analysing and alerting as lines arrive.

    An alert fires when more than ``threshold_errors`` records at ``alert_level`` or above arrived within
    the last ``window_minutes``; it is logged on ``odoops.alerts``, emitted as a Prefect event when
    inside a run, passed to ``on_alert``, and re-armed once the window drops back under the threshold.
    Stops when ``stop_event`` is set or after ``max_seconds``; returns the summary with ``alerts``.
    """
    if path == "-" or path.startswith("env:"):
        raise ConfigError("--follow needs a local log file path; for other sources run without --follow")
    min_level = parse_level(alert_level)
    analyzer = LogAnalyzer(options)
    window = window_minutes * 60.0
    seen: deque[float] = deque()
    alerts: list[dict[str, Any]] = []
    armed = True
    started = clock()
    stop = stop_event or threading.Event()

    def check_alert(now: float, new: int) -> None:
        nonlocal armed
        for _ in range(new):
            seen.append(now)
        while seen and now - seen[0] > window:
            seen.popleft()
        if threshold_errors is None:
            return
        if len(seen) > threshold_errors and armed:
            armed = False
            alert = {"source": path, "level": alert_level.upper(), "count": len(seen),
                     "threshold": threshold_errors, "window_minutes": window_minutes,
                     "at": datetime.now(UTC).isoformat(timespec="seconds")}
            alert_logger.warning("%s: %d %s-or-worse records in the last %g min (threshold %d)",
                                 path, len(seen), alert_level.upper(), window_minutes, threshold_errors)
            alert["prefect_event"] = _emit_prefect_event(alert)
            alerts.append(alert)
            if on_alert is not None:
                on_alert(alert)
        elif len(seen) <= threshold_errors:
            armed = True

    def open_file() -> tuple[BinaryIO | None, int | None]:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the loop
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise LogSourceError(f"cannot read {path}: {exc.strerror}; check the path and permissions") from None
        return f, os.fstat(f.fileno()).st_ino

    f, inode = open_file()
    if f is None:
        raise LogSourceError(f"log file not found: {path}: check the path")
    if not from_start:
        f.seek(0, os.SEEK_END)
    partial = b""

    def consume(data: bytes) -> None:
        nonlocal partial
        analyzer.feed(data)
        text = partial + data
        cut = text.rfind(b"\n") + 1
        partial = text[cut:]
        new = sum(1 for m in _RX_HEADER_LEVEL.finditer(text, 0, cut) if _level_value(m.group(1)) >= min_level)
        check_alert(clock(), new)

    try:
        while True:
            data = f.read(CHUNK_SIZE) if f is not None else b""
            if data:
                consume(data)
                continue
            check_alert(clock(), 0)
            # Rotation and truncation are handled before stopping, so what was written before the stop is read.
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if f is None:
                if st is not None:
                    f, inode = open_file()
                    if f is not None:
                        continue
            elif st is not None and st.st_ino != inode:
                rest = f.read()  # drain the rotated file, then switch to the new one
                if rest:
                    consume(rest)
                f.close()
                analyzer.end_source(path)
                partial = b""
                f, inode = open_file()
                continue
            elif st is not None and st.st_size < f.tell():
                f.seek(0)  # truncated in place (copytruncate)
                analyzer.end_source(path)
                partial = b""
                continue
            if stop.is_set() or (max_seconds is not None and clock() - started >= max_seconds):
                break
            stop.wait(poll_interval)
    finally:
        if f is not None:
            f.close()
    analyzer.end_source(path)
    summary = analyzer.summary()
    summary["alerts"] = alerts
    return summary


# --------------------------------------------------------------------------------------------------
# Prefect wrapper (thin; Prefect imported lazily so the CLI and tests of the parser stay light)


def analyze_logs_task(sources: Sequence[str], options: AnalysisOptions | None = None,
                      inventory: str | None = None) -> dict[str, Any]:
    """Prefect task (retried when a source is unreachable): analyse log sources (see ``analyze_sources``)."""
    from prefect import task

    def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except OdoopsError as exc:
            return not exc.permanent
        except Exception:  # noqa: BLE001
            return False
        return False

    wrapped = task(name="analyze-logs", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
    return wrapped(analyze_sources)(sources, options, inventory)
