"""Health checks and incident remediations of one Odoo environment, as plain typed functions.

Why plain functions: the ``health`` and ``incident`` flows, the ``odoops health``/``odoops incident``
commands and the tests all call the same code; Prefect only wraps it. A check never raises for the
thing it checks: an unreachable database or URL is a ``critical`` :class:`CheckResult`, so a monitoring
run always reports every other check too. Remediations are explicit and dry-run by default: each returns
an :class:`IncidentResult` listing what it did (``applied=True``) or would do (``applied=False``).

Thresholds come from the inventory's ``health:`` mapping of the environment (see :class:`Thresholds`
and docs/health.md). Exit codes of ``odoops health``: 0 ok, 1 warn, 2 critical, 4 error.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from odoops.errors import ConfigError, OdoopsError, ToolFailed
from odoops.inventory import Environment
from odoops.platforms.base import Platform
from odoops.redact import redact_text
from tasks.postgres import ConnInfo, connect

Status = Literal["ok", "warn", "critical", "skipped"]
STATUS_RANK: dict[str, int] = {"skipped": 0, "ok": 0, "warn": 1, "critical": 2}
EXIT_CODES: dict[str, int] = {"ok": 0, "skipped": 0, "warn": 1, "critical": 2}
EXIT_ERROR = 4  # bad inventory, unknown environment, usage error: not a health verdict
QUERY_CHARS = 160  # how much of a session's query text reports show (redacted)
IDLE_IN_TRANSACTION_STATES = ("idle in transaction", "idle in transaction (aborted)")


# ---------------------------------------------------------------- results and thresholds


@dataclass
class CheckResult:
    """One check's verdict. ``value`` is a JSON scalar (ratio, seconds, bytes, count or text);
    ``items`` lists what the check saw (sessions, tables) for reports and remediations."""

    name: str
    status: Status
    value: Any = None
    detail: str = ""
    items: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst_status(results: list[CheckResult]) -> Status:
    if not results:
        return "ok"
    worst = max(results, key=lambda r: STATUS_RANK[r.status]).status
    return "ok" if worst == "skipped" else worst


@dataclass(frozen=True)
class Thresholds:
    """The inventory's ``health:`` keys, with their defaults.

    Ratios are of ``max_connections`` (connections) or of live+dead tuples (dead tuples); times are
    seconds; sizes are GB (1e9 bytes); ``None`` disables that limit.
    """

    connections_warn: float = 0.7
    connections_critical: float = 0.9
    idle_in_transaction_seconds: float = 300
    long_query_seconds: float = 60
    lock_wait_seconds: float = 30
    dead_tuple_ratio: float = 0.2
    dead_tuple_min: int = 1000
    response_time_warn: float = 2.0
    response_time_critical: float = 10.0
    http_timeout: float = 10.0
    database_size_warn_gb: float | None = None
    filestore_size_warn_gb: float | None = None
    within_seconds: float = 120  # after a change (deploy, upgrade, rollback) Odoo must answer /web/health within this
    rows_shrink_tolerance: float = 0.0  # after an update the main tables may lose at most this ratio of rows
    rows_tables_over_mb: float = 100  # besides partners, users and attachments: every table over this
    container_cpu_warn: float = 0.9
    container_memory_warn: float = 0.9
    expected_version: str | None = None
    login: str | None = None
    login_password_env: str | None = None
    login_password_block: str | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None, where: str = "health") -> Thresholds:
        """Validate an inventory ``health:`` mapping; a bad key or value is a one-line ConfigError."""
        data = dict(data or {})
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"inventory: {where}.{key}: unknown health threshold; use one of "
                                  f"{', '.join(sorted(known))}")
            default = known[key].default
            if key in ("expected_version", "login", "login_password_env", "login_password_block"):
                if value is not None and not isinstance(value, str | int | float):
                    raise ConfigError(f"inventory: {where}.{key}: expected a string; quote the value")
                values[key] = None if value is None else str(value)
                continue
            if value is None and default is None:
                values[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"inventory: {where}.{key}: expected a number >= 0, got {value!r}; "
                                  f"write e.g. {key}: {default if default is not None else 10}")
            if key in ("connections_warn", "connections_critical", "dead_tuple_ratio", "container_cpu_warn",
                       "container_memory_warn", "rows_shrink_tolerance") and value > 1:
                raise ConfigError(f"inventory: {where}.{key}: {value} is a ratio and must be <= 1; "
                                  f"write e.g. {key}: {default}")
            values[key] = int(value) if key == "dead_tuple_min" else float(value)
        t = cls(**values)
        if t.connections_warn > t.connections_critical:
            raise ConfigError(f"inventory: {where}: connections_warn ({t.connections_warn}) is above "
                              f"connections_critical ({t.connections_critical}); swap them")
        if t.response_time_warn > t.response_time_critical:
            raise ConfigError(f"inventory: {where}: response_time_warn ({t.response_time_warn}) is above "
                              f"response_time_critical ({t.response_time_critical}); swap them")
        if t.login and not (t.login_password_env or t.login_password_block):
            raise ConfigError(f"inventory: {where}.login: no login_password_env or login_password_block names its "
                              "password (or API key); add one")
        return t


def thresholds_for(env: Environment) -> Thresholds:
    return Thresholds.from_mapping(env.health, where=f"environments.{env.name}.health")


@dataclass
class HealthReport:
    environment: str
    checks: list[CheckResult]
    checked_at: str = field(default_factory=lambda: datetime.now().astimezone().isoformat(timespec="seconds"))

    @property
    def status(self) -> Status:
        return worst_status(self.checks)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def problems(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status in ("warn", "critical")]

    def to_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "status": self.status, "exit_code": self.exit_code,
                "checked_at": self.checked_at, "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HealthReport:
        return cls(environment=data["environment"], checked_at=data["checked_at"],
                   checks=[CheckResult(**c) for c in data["checks"]])


def format_value(value: Any, name: str = "") -> str:
    """Human form of a check value for tables and Markdown."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and name.endswith("size"):
        return human_bytes(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


_SQL_PASSWORD = re.compile(r"(password\s+)('[^']*'|\S+)", re.IGNORECASE)


def safe_query(text: str | None) -> str:
    """A session's query text, shortened and with literal passwords masked."""
    text = " ".join((text or "").split())
    text = _SQL_PASSWORD.sub(r"\1***", redact_text(text))
    return text if len(text) <= QUERY_CHARS else text[: QUERY_CHARS - 1] + "…"


def safe_url(url: str) -> str:
    """``url`` without user:password@."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# ---------------------------------------------------------------- HTTP probes (Odoo's own endpoints)


def _http(url: str, timeout: float, data: bytes | None = None,
          content_type: str = "application/json") -> tuple[int, bytes, float]:
    """(status, body, seconds); raises urllib/socket errors for unreachable hosts."""
    headers = {"User-Agent": "odoops-health"}
    if data is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - http(s) from the inventory
            body = resp.read(1_000_000)
            return resp.status, body, time.perf_counter() - start
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(1_000_000) if exc.fp else b"", time.perf_counter() - start


def _unreachable_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, socket.timeout | TimeoutError):
        return "timed out"
    return " ".join(str(reason).split()) or type(exc).__name__


class _TimeoutTransport(xmlrpc.client.SafeTransport):
    """XML-RPC transport with a socket timeout, for http and https."""

    def __init__(self, timeout: float, https: bool) -> None:
        super().__init__()
        self._timeout, self._https = timeout, https

    def make_connection(self, host):  # type: ignore[override]
        conn = (xmlrpc.client.SafeTransport.make_connection(self, host) if self._https
                else xmlrpc.client.Transport.make_connection(self, host))
        conn.timeout = self._timeout
        return conn


def xmlrpc_common(base_url: str, timeout: float) -> xmlrpc.client.ServerProxy:
    """Odoo's ``/xmlrpc/2/common`` endpoint (version, authenticate)."""
    return xmlrpc.client.ServerProxy(f"{base_url.rstrip('/')}/xmlrpc/2/common", allow_none=True,
                                     transport=_TimeoutTransport(timeout, base_url.startswith("https")))


def odoo_version(base_url: str, timeout: float = 10.0) -> dict[str, Any]:
    """``server_version`` & co. via JSON-RPC ``/web/webclient/version_info``, else XML-RPC ``version()``."""
    payload = json.dumps({"jsonrpc": "2.0", "method": "call", "params": {}, "id": None}).encode()
    try:
        status, body, _ = _http(f"{base_url.rstrip('/')}/web/webclient/version_info", timeout, data=payload)
        if status == 200:
            answer = json.loads(body)
            if isinstance(answer, dict) and isinstance(answer.get("result"), dict):
                return answer["result"]
    except (OSError, ValueError):
        pass
    result = xmlrpc_common(base_url, timeout).version()
    if not isinstance(result, dict):
        raise ValueError("unexpected answer to version()")
    return result


def http_checks(env: Environment, t: Thresholds) -> list[CheckResult]:
    """``http.health`` (GET /web/health), ``http.response_time``, ``http.version``, ``http.login``."""
    if not env.url:
        return [CheckResult(name, "skipped", None, "no url in the inventory")
                for name in ("http.health", "http.response_time", "http.version", "http.login")]
    base = env.url.rstrip("/")
    shown = safe_url(base)
    try:
        status, body, seconds = _http(f"{base}/web/health", t.http_timeout)
    except (OSError, ValueError) as exc:
        reason = _unreachable_reason(exc)
        return [CheckResult("http.health", "critical", None, f"{shown}/web/health unreachable: {reason}"),
                CheckResult("http.response_time", "critical" if reason == "timed out" else "skipped", None,
                            f"no answer within {t.http_timeout:g} s" if reason == "timed out" else "no answer"),
                CheckResult("http.version", "skipped", None, "Odoo unreachable"),
                CheckResult("http.login", "skipped", None, "Odoo unreachable")]
    results = []
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if status == 200 and isinstance(answer, dict) and answer.get("status") == "pass":
        results.append(CheckResult("http.health", "ok", "pass", f"GET {shown}/web/health: 200 pass"))
    elif status == 404:
        results.append(CheckResult("http.health", "critical", status,
                                   f"GET {shown}/web/health: 404 (Odoo older than 15, or not Odoo at this url)"))
    else:
        snippet = " ".join(body[:80].decode("utf-8", "replace").split())
        results.append(CheckResult("http.health", "critical", status, f"GET {shown}/web/health: {status} {snippet}"))
    rt_status: Status = ("critical" if seconds >= t.response_time_critical else
                         "warn" if seconds >= t.response_time_warn else "ok")
    results.append(CheckResult("http.response_time", rt_status, round(seconds, 3),
                               f"{seconds:.3f} s (warn at {t.response_time_warn:g} s, critical at "
                               f"{t.response_time_critical:g} s)"))
    try:
        info = odoo_version(base, t.http_timeout)
        version = str(info.get("server_version", "?"))
        if t.expected_version and not version.startswith(t.expected_version):
            results.append(CheckResult("http.version", "warn", version,
                                       f"Odoo {version} but expected_version is {t.expected_version}"))
        else:
            results.append(CheckResult("http.version", "ok", version, f"Odoo {version} (serie "
                                       f"{info.get('server_serie', '?')}, protocol {info.get('protocol_version', '?')})"))
    except (OSError, ValueError, xmlrpc.client.Error) as exc:
        results.append(CheckResult("http.version", "warn", None,
                                   f"version_info and XML-RPC version() failed: {_unreachable_reason(exc)}"))
    results.append(login_check(env, t, base))
    return results


def login_check(env: Environment, t: Thresholds, base: str) -> CheckResult:
    """A real login over XML-RPC ``authenticate`` when ``health.login`` (+ password source) is set."""
    if not t.login:
        return CheckResult("http.login", "skipped", None, "no health.login in the inventory")
    from odoops.secrets import read_secret

    password = read_secret(t.login_password_env, t.login_password_block, what=f"environment {env.name} health login")
    if password is None:
        raise ConfigError(f"environment {env.name}: health.login is set but no login_password_env or "
                          "login_password_block names its password (or API key): add one")
    dbname = ConnInfo.from_dsn(env.database.dsn).dbname
    try:
        uid = xmlrpc_common(base, t.http_timeout).authenticate(dbname, t.login, password, {})
    except xmlrpc.client.Fault as exc:
        first = (exc.faultString or "").strip().splitlines()
        return CheckResult("http.login", "critical", None, f"authenticate on {dbname} failed: "
                           f"{redact_text(first[-1] if first else 'fault')}")
    except (OSError, xmlrpc.client.Error) as exc:
        return CheckResult("http.login", "critical", None, f"authenticate unreachable: {_unreachable_reason(exc)}")
    if uid:
        return CheckResult("http.login", "ok", uid, f"{t.login} logged in to {dbname} (uid {uid})")
    return CheckResult("http.login", "warn", False, f"{t.login} rejected by {dbname}: check health.login and its "
                       "password or API key")


# ---------------------------------------------------------------- PostgreSQL


def _rows(conn: psycopg.Connection, query: str | sql.Composable, params: tuple = ()) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        rows = cur.fetchall()
    for row in rows:
        for key, value in row.items():
            if isinstance(value, datetime):
                row[key] = value.isoformat(timespec="seconds")
    return rows


def _session_items(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        row["query"] = safe_query(row.get("query"))
        if row.get("seconds") is not None:
            row["seconds"] = round(float(row["seconds"]), 1)
    return rows


_SESSION_COLUMNS = sql.SQL("""pid, usename AS "user", application_name AS application,
    coalesce(host(client_addr), 'local') AS client, state, query""")


def _sessions_sql(template: str) -> sql.Composed:
    """A pg_stat_activity query with the common session columns in place of ``{cols}``."""
    return sql.SQL(template).format(cols=_SESSION_COLUMNS)


def check_connections(conn: psycopg.Connection, t: Thresholds) -> CheckResult:
    """Client connections by state, cluster-wide, against ``max_connections``."""
    max_conn = int(conn.execute("SELECT current_setting('max_connections')").fetchone()[0])
    reserved = int(conn.execute("SELECT current_setting('superuser_reserved_connections')").fetchone()[0])
    items = _rows(conn, """
        SELECT coalesce(state, 'unknown') AS state, count(*) AS count,
               count(*) FILTER (WHERE datname = current_database()) AS this_database
        FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1 ORDER BY 1""")
    total = sum(r["count"] for r in items)
    ratio = total / max_conn if max_conn else 1.0
    status: Status = ("critical" if ratio >= t.connections_critical else
                      "warn" if ratio >= t.connections_warn else "ok")
    by_state = ", ".join(f"{r['state']} {r['count']}" for r in items) or "none"
    return CheckResult("pg.connections", status, round(ratio, 3),
                       f"{total}/{max_conn} connections ({ratio:.0%}; {reserved} reserved for superusers): {by_state}",
                       items)


def idle_in_transaction_sessions(conn: psycopg.Connection, older_than: float) -> list[dict[str, Any]]:
    """Sessions of this database idle in a transaction for longer than ``older_than`` s (own one excluded)."""
    return _session_items(_rows(conn, _sessions_sql("""
        SELECT {cols}, extract(epoch FROM now() - state_change)::float AS seconds
        FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = ANY(%s)
          AND now() - state_change > make_interval(secs => %s)
        ORDER BY seconds DESC, pid"""), (list(IDLE_IN_TRANSACTION_STATES), older_than)))


def check_idle_in_transaction(conn: psycopg.Connection, t: Thresholds) -> CheckResult:
    items = idle_in_transaction_sessions(conn, t.idle_in_transaction_seconds)
    detail = (f"{len(items)} session(s) idle in transaction > {t.idle_in_transaction_seconds:g} s: pid "
              + ", ".join(str(r["pid"]) for r in items)) if items else \
        f"none idle in transaction > {t.idle_in_transaction_seconds:g} s"
    return CheckResult("pg.idle_in_transaction", "warn" if items else "ok", len(items), detail, items)


def check_long_queries(conn: psycopg.Connection, t: Thresholds) -> CheckResult:
    items = _session_items(_rows(conn, _sessions_sql("""
        SELECT {cols}, extract(epoch FROM now() - query_start)::float AS seconds,
               wait_event_type
        FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
          AND backend_type = 'client backend' AND now() - query_start > make_interval(secs => %s)
        ORDER BY seconds DESC, pid"""), (t.long_query_seconds,)))
    detail = (f"{len(items)} quer(ies) running > {t.long_query_seconds:g} s: pid "
              + ", ".join(str(r["pid"]) for r in items)) if items else \
        f"no query running > {t.long_query_seconds:g} s"
    return CheckResult("pg.long_queries", "warn" if items else "ok", len(items), detail, items)


def check_locks(conn: psycopg.Connection, t: Thresholds) -> CheckResult:
    """Blocked sessions of this database (``pg_blocking_pids``) and the sessions blocking them."""
    blocked = _session_items(_rows(conn, _sessions_sql("""
        SELECT {cols}, pg_blocking_pids(pid) AS blocked_by,
               extract(epoch FROM now() - query_start)::float AS seconds
        FROM pg_stat_activity
        WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0
        ORDER BY seconds DESC, pid""")))
    blocker_pids = sorted({p for r in blocked for p in r["blocked_by"]})
    blocking = _session_items(_rows(conn, _sessions_sql("""
        SELECT {cols}, extract(epoch FROM now() - xact_start)::float AS seconds
        FROM pg_stat_activity WHERE pid = ANY(%s) ORDER BY pid"""), (blocker_pids,))) if blocker_pids else []
    items = [{"role": "blocked", **r} for r in blocked] + [{"role": "blocking", **r} for r in blocking]
    long_waits = [r for r in blocked if (r["seconds"] or 0) > t.lock_wait_seconds]
    if not blocked:
        return CheckResult("pg.locks", "ok", 0, "no blocked session")
    detail = (f"{len(blocked)} blocked session(s) (pid {', '.join(str(r['pid']) for r in blocked)}) by pid "
              f"{', '.join(map(str, blocker_pids))}; {len(long_waits)} waiting > {t.lock_wait_seconds:g} s")
    return CheckResult("pg.locks", "warn" if long_waits else "ok", len(blocked), detail, items)


def dead_tuple_tables(conn: psycopg.Connection, min_ratio: float = 0.0, min_dead: int = 0,
                      limit: int | None = None) -> list[dict[str, Any]]:
    """Tables by dead tuples (most first): schema, table, live, dead, ratio, last (auto)vacuum/analyze."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    query = """
        SELECT schemaname AS schema, relname AS "table", n_live_tup AS live, n_dead_tup AS dead,
               round((n_dead_tup::numeric / greatest(n_live_tup + n_dead_tup, 1)), 3)::float AS ratio,
               last_autovacuum, last_vacuum, last_autoanalyze
        FROM pg_stat_user_tables
        WHERE n_dead_tup >= %s AND n_dead_tup::float / greatest(n_live_tup + n_dead_tup, 1) >= %s
        ORDER BY n_dead_tup DESC, schemaname, relname"""
    params: tuple = (min_dead, min_ratio)
    if limit:
        query += " LIMIT %s"
        params += (limit,)
    return _rows(conn, query, params)


def check_dead_tuples(conn: psycopg.Connection, t: Thresholds) -> CheckResult:
    """The ten tables with most dead tuples; warn when one is above ``dead_tuple_ratio`` and ``dead_tuple_min``."""
    items = dead_tuple_tables(conn, min_dead=1, limit=10)
    bloated = [r for r in items if r["dead"] >= t.dead_tuple_min and r["ratio"] >= t.dead_tuple_ratio]
    top = ", ".join(f"{r['table']} {r['dead']} ({r['ratio']:.0%})" for r in items[:3] if r["dead"]) or "none"
    detail = (f"{len(bloated)} table(s) with >= {t.dead_tuple_min} dead tuples and ratio >= "
              f"{t.dead_tuple_ratio:g}; most dead: {top}")
    return CheckResult("pg.dead_tuples", "warn" if bloated else "ok", len(bloated), detail, items)


def check_database_size(conn: psycopg.Connection, t: Thresholds) -> CheckResult:
    size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
    limit = t.database_size_warn_gb
    status: Status = "warn" if limit is not None and size > limit * 1e9 else "ok"
    return CheckResult("pg.database_size", status, size,
                       human_bytes(size) + (f" (warn above {limit:g} GB)" if limit is not None else ""))


PG_CHECKS = (check_connections, check_idle_in_transaction, check_long_queries, check_locks, check_dead_tuples,
             check_database_size)
PG_CHECK_NAMES = ("pg.connections", "pg.idle_in_transaction", "pg.long_queries", "pg.locks", "pg.dead_tuples",
                  "pg.database_size")


def postgres_checks(conninfo: ConnInfo, t: Thresholds) -> list[CheckResult]:
    """``pg.connection`` plus every PG_CHECKS; an unreachable database is one critical result."""
    try:
        with connect(conninfo) as conn:
            conn.execute("SET application_name = 'odoops-health'")
            conn.execute("SET statement_timeout = '30s'")
            version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
            results = [CheckResult("pg.connection", "ok", version, f"PostgreSQL {version} at {conninfo.describe()}")]
            for check, name in zip(PG_CHECKS, PG_CHECK_NAMES, strict=True):
                try:
                    results.append(check(conn, t))
                except psycopg.Error as exc:
                    if conn.closed:
                        raise
                    text = " ".join(str(exc).split()) or type(exc).__name__
                    results.append(CheckResult(name, "warn", None, f"could not run: {text} (grant pg_monitor to "
                                                                   "the role odoops uses)"))
            return results
    except OdoopsError as exc:
        return [CheckResult("pg.connection", "critical", None, str(exc)),
                *[CheckResult(name, "skipped", None, "database unreachable") for name in PG_CHECK_NAMES]]


# ---------------------------------------------------------------- filestore and containers


def filestore_check(platform: Platform, t: Thresholds) -> CheckResult:
    """Total size and file count of the filestore (through the platform, local or remote)."""
    try:
        count = size = 0
        for entry in platform.list_filestore():
            count += 1
            size += entry.size
    except (OdoopsError, OSError) as exc:
        return CheckResult("filestore.size", "critical", None, f"filestore not readable: {exc}")
    limit = t.filestore_size_warn_gb
    status: Status = "warn" if limit is not None and size > limit * 1e9 else "ok"
    return CheckResult("filestore.size", status, size, f"{human_bytes(size)} in {count} files"
                       + (f" (warn above {limit:g} GB)" if limit is not None else ""))


def container_check(platform: Platform, t: Thresholds) -> CheckResult:
    """CPU and memory of the Odoo container(s), for platforms that run containers.

    A platform provides it with a ``container_stats()`` method returning ``{"cpu": ratio of the
    allowed CPUs, "memory_used": bytes, "memory_limit": bytes}``; the host and odoosh platforms have
    none, so the check is ``skipped`` (n/a) for them.
    """
    stats_fn = getattr(platform, "container_stats", None)
    if stats_fn is None:
        return CheckResult("container.resources", "skipped", None,
                           f"n/a for platform {platform.env.platform} (containers only)")
    try:
        stats = stats_fn()
    except OdoopsError as exc:
        return CheckResult("container.resources", "critical", None, f"container stats unavailable: {exc}")
    cpu = float(stats.get("cpu") or 0.0)
    limit = stats.get("memory_limit") or 0
    mem = float(stats.get("memory_used") or 0) / limit if limit else 0.0
    status: Status = "warn" if cpu >= t.container_cpu_warn or mem >= t.container_memory_warn else "ok"
    return CheckResult("container.resources", status, round(max(cpu, mem), 3),
                       f"cpu {cpu:.0%}, memory {mem:.0%} of limit", [dict(stats)])


def run_health_checks(env: Environment, platform: Platform) -> HealthReport:
    """Every check of one environment, without Prefect (what the flow's tasks do one by one)."""
    t = thresholds_for(env)
    checks = http_checks(env, t)
    try:
        with platform.database() as conninfo:
            checks += postgres_checks(conninfo, t)
    except OdoopsError as exc:  # a tunnel that cannot open is an unreachable database too
        checks += [CheckResult("pg.connection", "critical", None, str(exc)),
                   *[CheckResult(name, "skipped", None, "database unreachable") for name in PG_CHECK_NAMES]]
    checks.append(filestore_check(platform, t))
    checks.append(container_check(platform, t))
    return HealthReport(environment=env.name, checks=checks)


# ---------------------------------------------------------------- incident remediations


@dataclass
class IncidentResult:
    """What a remediation did (``applied``) or would do (dry run): one line per action, plus targets."""

    action: str
    environment: str
    applied: bool
    actions: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pg_error(exc: psycopg.Error) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def terminate_idle_in_transaction(env: Environment, conninfo: ConnInfo, older_than: float,
                                  apply: bool = False) -> IncidentResult:
    """``pg_terminate_backend`` every session of this database idle in transaction > ``older_than`` s.

    Only sessions of the environment's own database are touched, never this session; at apply time
    the condition is re-checked per pid, so a session that woke up in between is left alone.
    """
    result = IncidentResult("terminate-idle", env.name, apply)
    with connect(conninfo) as conn:
        conn.execute("SET application_name = 'odoops-incident'")
        sessions = idle_in_transaction_sessions(conn, older_than)
        result.targets = sessions
        for s in sessions:
            what = (f"pg_terminate_backend({s['pid']}): {s['user']}@{s['client']} {s['application'] or '-'}, "
                    f"{s['state']} for {s['seconds']:g} s")
            if not apply:
                result.actions.append(f"would run {what}")
                continue
            try:
                row = conn.execute("""
                    SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                    WHERE pid = %s AND pid <> pg_backend_pid() AND datname = current_database()
                      AND state = ANY(%s) AND now() - state_change > make_interval(secs => %s)""",
                                   (s["pid"], list(IDLE_IN_TRANSACTION_STATES), older_than)).fetchone()
            except psycopg.Error as exc:
                s["outcome"] = f"failed: {_pg_error(exc)}"
            else:
                s["outcome"] = ("terminated" if row and row[0] else
                                "skipped: no longer idle in transaction" if row is None else "failed: not signalled")
            result.actions.append(f"ran {what}: {s['outcome']}")
        if apply:
            _wait_gone(conn, [s["pid"] for s in sessions if s.get("outcome") == "terminated"])
    done = sum(1 for s in sessions if s.get("outcome") == "terminated")
    result.detail = (f"{len(sessions)} session(s) idle in transaction > {older_than:g} s on {conninfo.dbname}"
                     + (f"; {done} terminated" if apply else "; dry run: nothing terminated"))
    return result


def _wait_gone(conn: psycopg.Connection, pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        if not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone():
            return
        time.sleep(0.05)


def vacuum_analyze(env: Environment, conninfo: ConnInfo, min_dead_ratio: float = 0.2, min_dead_tuples: int = 1000,
                   apply: bool = False, lock_timeout_seconds: float = 30) -> IncidentResult:
    """``VACUUM (ANALYZE)`` every table of this database at or above both dead-tuple limits."""
    result = IncidentResult("vacuum", env.name, apply)
    with connect(conninfo) as conn:
        conn.execute("SET application_name = 'odoops-incident'")
        tables = dead_tuple_tables(conn, min_ratio=min_dead_ratio, min_dead=max(1, min_dead_tuples))
        result.targets = tables
        if apply:
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_seconds * 1000)}ms")))
        for tbl in tables:
            stmt = sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(tbl["schema"], tbl["table"]))
            shown = stmt.as_string(conn)
            if not apply:
                result.actions.append(f"would run {shown} ({tbl['dead']} dead tuples, ratio {tbl['ratio']:g})")
                continue
            started = time.monotonic()
            try:
                conn.execute(stmt)
            except psycopg.Error as exc:
                tbl["outcome"] = f"failed: {_pg_error(exc)}"
            else:
                conn.execute("SELECT pg_stat_clear_snapshot()")
                after = conn.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = %s AND relname = %s",
                                     (tbl["schema"], tbl["table"])).fetchone()
                tbl["dead_after"] = after[0] if after else None
                tbl["outcome"] = f"done in {time.monotonic() - started:.1f} s"
            result.actions.append(f"ran {shown}: {tbl['outcome']}"
                                  + (f", dead tuples {tbl['dead']} -> {tbl['dead_after']}" if "dead_after" in tbl else ""))
    result.detail = (f"{len(tables)} table(s) with >= {min_dead_tuples} dead tuples and ratio >= {min_dead_ratio:g}"
                     + ("" if apply else "; dry run: nothing vacuumed"))
    return result


def db_setting(conn: psycopg.Connection, name: str) -> str | None:
    """The database-level value of a setting (``ALTER DATABASE ... SET``), from ``pg_db_role_setting``."""
    rows = conn.execute("""
        SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
        WHERE d.datname = current_database() AND s.setrole = 0""").fetchall()
    for (entry,) in rows:
        key, _, value = entry.partition("=")
        if key == name:
            return value
    return None


def set_slow_query_log(env: Environment, conninfo: ConnInfo, on: bool, ms: int = 500,
                       apply: bool = False) -> IncidentResult:
    """``ALTER DATABASE <db> SET log_min_duration_statement = ms`` (on) or ``RESET`` (off).

    Database level rather than ``ALTER SYSTEM``: it touches only this environment's database on a
    possibly shared cluster, needs no ``pg_reload_conf()`` nor file write on the server, and is
    visible in ``pg_db_role_setting``. New sessions pick it up; Odoo's pooled connections keep the old
    value until they reconnect (restart Odoo to apply it at once). The parameter is superuser-settable:
    the role needs superuser or, on PostgreSQL 15+, ``GRANT SET ON PARAMETER log_min_duration_statement``.
    """
    if on and (isinstance(ms, bool) or not isinstance(ms, int) or ms < 0):
        raise ConfigError(f"slow-query logging: --ms must be a whole number of milliseconds >= 0, got {ms!r}")
    result = IncidentResult("slow-log", env.name, apply)
    name = "log_min_duration_statement"
    with connect(conninfo) as conn:
        db = sql.Identifier(conninfo.dbname)
        stmt = (sql.SQL("ALTER DATABASE {} SET log_min_duration_statement = {}").format(db, sql.Literal(ms)) if on
                else sql.SQL("ALTER DATABASE {} RESET log_min_duration_statement").format(db))
        shown = stmt.as_string(conn)
        before = db_setting(conn, name)
        result.targets = [{"database": conninfo.dbname, "setting": name, "before": before,
                           "wanted": str(ms) if on else None}]
        if not apply:
            result.actions.append(f"would run {shown} (database-level value now: {before or 'not set'})")
            result.detail = "dry run: nothing changed"
            return result
        try:
            conn.execute(stmt)
        except psycopg.errors.InsufficientPrivilege:
            raise ToolFailed(f"database {conninfo.describe()}: not allowed to set {name}: it needs a superuser role "
                             f"or, on PostgreSQL 15+, GRANT SET ON PARAMETER {name} TO <role>") from None
        after = db_setting(conn, name)
        result.targets[0]["after"] = after
        result.actions.append(f"ran {shown}: database-level value {before or 'not set'} -> {after or 'not set'}")
        result.detail = "applies to new sessions; Odoo's pooled connections pick it up when they reconnect"
    return result


def _uses_commands(platform: Platform) -> bool:
    return type(platform).stop is Platform.stop or type(platform).start is Platform.start


def restart_odoo(env: Environment, platform: Platform, apply: bool = False, wait_seconds: float = 60) -> IncidentResult:
    """Stop then start Odoo through the platform; then wait for ``/web/health`` when the env has a url."""
    if _uses_commands(platform) and (not env.stop_command or not env.start_command):
        missing = " and ".join(k for k, v in (("stop_command", env.stop_command), ("start_command", env.start_command))
                               if not v)
        raise ConfigError(f"environment {env.name} has no {missing}: add e.g. stop_command: "
                          '["systemctl", "stop", "odoo"] and start_command: ["systemctl", "start", "odoo"] '
                          "to the inventory to restart Odoo")
    result = IncidentResult("restart", env.name, apply)
    steps = ([("stop", " ".join(env.stop_command)), ("start", " ".join(env.start_command))]
             if _uses_commands(platform) else [("stop", f"{env.platform} stop"), ("start", f"{env.platform} start")])
    result.targets = [{"step": step, "command": cmd} for step, cmd in steps]
    if not apply:
        result.actions = [f"would {step} Odoo: {cmd}" for step, cmd in steps]
        if env.url:
            result.actions.append(f"would wait up to {wait_seconds:g} s for {safe_url(env.url)}/web/health")
        result.detail = "dry run: Odoo not restarted"
        return result
    if not platform.stop():
        raise ConfigError(f"environment {env.name}: the {env.platform} platform cannot stop Odoo")
    result.actions.append(f"stopped Odoo: {steps[0][1]}")
    if not platform.start():
        raise ConfigError(f"environment {env.name}: the {env.platform} platform cannot start Odoo")
    result.actions.append(f"started Odoo: {steps[1][1]}")
    if env.url:
        healthy = wait_healthy(env.url, wait_seconds)
        result.actions.append(f"{safe_url(env.url)}/web/health " + ("passes" if healthy else
                                                                     f"not passing after {wait_seconds:g} s"))
        result.detail = "restarted and healthy" if healthy else "restarted but /web/health does not pass yet"
        if not healthy:
            raise ToolFailed(f"environment {env.name}: Odoo restarted but {safe_url(env.url)}/web/health does not "
                             f"pass after {wait_seconds:g} s: check the Odoo logs (odoops logs {env.name})")
    else:
        result.detail = "restarted (no url in the inventory to check /web/health)"
    return result


def wait_healthy(url: str, timeout: float, interval: float = 0.5) -> bool:
    """Poll ``/web/health`` until it passes or ``timeout`` seconds have gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body, _ = _http(f"{url.rstrip('/')}/web/health", min(5.0, max(timeout, 0.5)))
            if status == 200 and json.loads(body).get("status") == "pass":
                return True
        except (OSError, ValueError, AttributeError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def iter_table_rows(report: HealthReport) -> Iterator[dict[str, str]]:
    """Rows of the summary table (CLI and Prefect table artifact)."""
    for c in report.checks:
        yield {"check": c.name, "status": c.status, "value": format_value(c.value, c.name), "detail": c.detail}
