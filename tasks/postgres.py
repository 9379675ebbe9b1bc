"""PostgreSQL: connections, dumps and restores with the real client tools.

Connection parameters travel to pg_dump/pg_restore/psql through libpq environment variables, never
on the command line, so passwords stay out of ``ps`` and of error messages. Every tool's exit status
is checked and its own error line surfaced (click-odoo-backupdb ignores pg_dump's status).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

from odoops.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    DiskFull,
    OdoopsError,
    RefusedError,
    ToolFailed,
    tool_error_line,
)
from odoops.platforms.base import ConnInfo


def _translate(exc: psycopg.Error, conninfo: ConnInfo) -> OdoopsError:
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    where = conninfo.describe()
    if "password authentication failed" in text or "no password supplied" in text:
        return AuthenticationFailed(f"database {where}: authentication failed: check PGPASSWORD, .pgpass or the "
                                    "password_env/password_block of the environment")
    if "does not exist" in text and "database" in text:
        return ConnectionFailed(f"database {where} does not exist: check the environment's database dsn")
    if isinstance(exc, psycopg.OperationalError):
        return ConnectionFailed(f"database {where} unreachable: {text}: check that PostgreSQL runs and the dsn is right")
    return ToolFailed(f"database {where}: {text}")


@contextmanager
def connect(conninfo: ConnInfo, autocommit: bool = True) -> Iterator[psycopg.Connection]:
    """A psycopg connection whose errors arrive as the project's own errors."""
    try:
        kwargs = dict(conninfo.params)
        if conninfo.password is not None:
            kwargs["password"] = conninfo.password
        kwargs.setdefault("connect_timeout", "10")
        conn = psycopg.connect(autocommit=autocommit, **kwargs)
    except psycopg.Error as exc:
        raise _translate(exc, conninfo) from None
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise _translate(exc, conninfo) from None


def tool_failure(tool: str, stderr: bytes | str) -> OdoopsError:
    line = tool_error_line(stderr)
    lower = line.lower()
    if "no space left" in lower:
        return DiskFull(f"{tool}: no space left on device: free space or point the backup at another storage")
    if "password authentication failed" in lower:
        return AuthenticationFailed(f"{tool}: authentication failed: check PGPASSWORD, .pgpass or the environment's "
                                    "password_env/password_block")
    if "could not connect" in lower or "connection refused" in lower or "could not translate host" in lower:
        return ConnectionFailed(f"{tool}: {line}")
    return ToolFailed(f"{tool} failed: {line}")


def run_tool(args: list[str], conninfo: ConnInfo, stdout: IO[bytes] | int | None = None,
             stdin: IO[bytes] | int | None = None) -> subprocess.CompletedProcess:
    """Run a libpq tool; raise with its own error line when it exits non-zero."""
    result = subprocess.run(args, env=conninfo.env(), stdout=stdout if stdout is not None else subprocess.PIPE,
                            stdin=stdin, stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise tool_failure(args[0], result.stderr)
    return result


# ---------------------------------------------------------------- database facts


def server_version(conninfo: ConnInfo) -> str:
    with connect(conninfo) as conn:
        num = int(conn.execute("SHOW server_version_num").fetchone()[0])
    return f"{num // 10000}.{num % 10000 // 100 if num < 100000 else 0}"


def database_exists(conninfo: ConnInfo, dbname: str) -> bool:
    with connect(conninfo.with_dbname("postgres")) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is not None


def installed_modules(conn: psycopg.Connection) -> dict[str, str]:
    rows = conn.execute(
        "SELECT name, coalesce(latest_version, '') FROM ir_module_module WHERE state = 'installed' ORDER BY name"
    ).fetchall()
    return dict(rows)


def table_row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row counts of every table in the public schema."""
    tables = [r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename").fetchall()]
    counts = {}
    for table in tables:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
        counts[table] = conn.execute(query).fetchone()[0]
    return counts


def attachment_files(conn: psycopg.Connection) -> list[tuple[str, str | None]]:
    """(store_fname, checksum) of every attachment stored in the filestore."""
    return conn.execute(
        "SELECT DISTINCT store_fname, checksum FROM ir_attachment WHERE store_fname IS NOT NULL AND store_fname <> ''"
    ).fetchall()


def database_size(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


# ---------------------------------------------------------------- create / drop / rename


def create_database(conninfo: ConnInfo, dbname: str) -> None:
    with connect(conninfo.with_dbname("postgres")) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(sql.Identifier(dbname)))


def drop_database(conninfo: ConnInfo, dbname: str, *, only_scratch_prefix: str) -> None:
    """Drop a database odoops created; refuses any name without the scratch prefix (a safety net)."""
    if not dbname.startswith(only_scratch_prefix):
        raise RefusedError(f"refusing to drop database {dbname!r}: odoops only drops its own scratch databases")
    with connect(conninfo.with_dbname("postgres")) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@dataclass(frozen=True)
class DumpSet:
    """A database as pg_dump archives: ``main``, plus some tables' data apart (docs/repository-format.md)."""

    main: Path
    tables: tuple[tuple[str, str, Path], ...] = ()  # (schema, table, data-only archive)

    def stages(self, jobs: int = 1) -> list[list[list[str]]]:
        """pg_restore argument tails, stage by stage; the commands of one stage may run side by side."""
        parallel = [f"--jobs={jobs}"] if jobs > 1 else []
        if not self.tables:
            return [[[*parallel, str(self.main)]]]
        return [[["--section=pre-data", str(self.main)]],
                [["--section=data", str(self.main)],
                 *[["--data-only", "--schema", schema, "--table", table, str(path)]
                   for schema, table, path in self.tables]],
                [["--section=post-data", *parallel, str(self.main)]]]


def restore_dump(conninfo: ConnInfo, dumps: DumpSet | str | Path, jobs: int = 2) -> None:
    """pg_restore a dump (or a backup's dump set) into an existing empty database."""
    dumps = dumps if isinstance(dumps, DumpSet) else DumpSet(Path(dumps))
    head = ["pg_restore", "--no-owner", "--exit-on-error", "--dbname", conninfo.dbname]
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="pg_restore") as pool:
        for stage in dumps.stages(jobs):  # one stage after the other; a stage's commands side by side
            for future in [pool.submit(run_tool, [*head, *tail], conninfo) for tail in stage]:
                future.result()
