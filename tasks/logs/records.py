"""The Odoo log format: record headers, multi-line records, werkzeug request lines, levels, times.

Why apart: every other part of the analyzer (the block scanner, the request counters, classification,
follow mode) reads the same format; its regular expressions (tuned for ``sre``: the notes below say
why some are spelled oddly) and small decoders live here once.

Odoo's log format (12 to 18): ``YYYY-MM-DD HH:MM:SS,mmm PID LEVEL DB LOGGER: message``, followed by
any number of lines that do not start with such a header (tracebacks, SQL, empty lines). ``?`` and
``None`` in the DB column are placeholders. Odoo sets ``TZ=UTC``, so timestamps are UTC.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from odoops.errors import ConfigError

LEVELS: dict[str, int] = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
STANDARD_LEVELS = tuple(LEVELS)


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
# INFO/DEBUG messages worth classifying (failed logins, worker limits, lost database connections);
# records at WARNING and above are always classified, tracebacks included.
_KEYWORDS = (
    b"Login failed",
    b") reached",
    b"Connection to the database failed",
)
# a header's level at the start of a line (follow mode counts the records worth an alert)
_RX_HEADER_LEVEL = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ ([A-Z][A-Z_]*) \S+ [^\s:]+:", re.M)


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
