"""Classification of the rare records: error/warning signatures, security, contention, worker kills.

Why apart: this is the part that knows what Odoo's messages mean (failed logins, AccessError, CSRF,
serialization failures and a full connection pool, worker memory/CPU/real-time limits, cron and module
failures) and how errors group (exception type + normalised message + origin). It runs only on
records at WARNING or above and INFO lines holding a keyword; a record's plan is cached because logs
repeat themselves. ``_Classifier`` is a part of ``LogAnalyzer``, whose ``__init__`` holds its state.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from odoops.redact import redact_text
from tasks.logs.records import LEVELS, LogRecord, _dec, _level_value

MAX_CLASSIFY_TEXT = 256 << 10  # bytes of one record's text examined for classification
MAX_EXAMPLES = 20  # examples kept per category
PLAN_CACHE_SIZE = 2048  # classified records remembered (logs repeat the same records again and again)
PLAN_CACHE_MAX_TEXT = 4096  # ... when their continuation text is at most this long (bounds the cache)


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


class _Classifier:
    """Part of ``LogAnalyzer``: classify records at WARNING or above, or holding a keyword."""

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
