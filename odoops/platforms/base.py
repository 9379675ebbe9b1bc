"""The platform interface (see odoops.platforms) and its value types: what flows and tasks exchange
with a platform, whichever implementation drives the environment."""

from __future__ import annotations

import os
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from odoops.errors import ConfigError
from odoops.inventory import Environment
from odoops.secrets import read_secret

_LIBPQ_ENV = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE",
              "sslmode": "PGSSLMODE", "service": "PGSERVICE", "passfile": "PGPASSFILE",
              "sslrootcert": "PGSSLROOTCERT", "connect_timeout": "PGCONNECT_TIMEOUT"}


@dataclass(frozen=True)
class ConnInfo:
    """libpq parameters of one database; ``password`` is kept out of ``repr``."""

    params: dict[str, str]
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_dsn(cls, dsn: str, password: str | None = None) -> ConnInfo:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
        except ProgrammingError:
            raise ConfigError("database dsn is not a valid PostgreSQL connection string: "
                              "write postgresql://user@host:port/dbname") from None
        if "dbname" not in params:
            raise ConfigError("database dsn names no database: end it with /dbname")
        params.pop("password", None)
        return cls(params=params, password=password)

    @property
    def dbname(self) -> str:
        return self.params["dbname"]

    def with_dbname(self, dbname: str) -> ConnInfo:
        return replace(self, params={**self.params, "dbname": dbname})

    def env(self) -> dict[str, str]:
        """Environment for libpq client tools (inherits PGPASSWORD/PGPASSFILE when no password is set)."""
        env = dict(os.environ)
        for key, value in self.params.items():
            if key in _LIBPQ_ENV:
                env[_LIBPQ_ENV[key]] = value
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        env.setdefault("PGCONNECT_TIMEOUT", "10")
        return env

    def describe(self) -> str:
        """host:port/dbname, safe for messages."""
        return f"{self.params.get('host', 'localhost')}:{self.params.get('port', '5432')}/{self.dbname}"


@dataclass(frozen=True, slots=True)
class FilestoreEntry:
    """One file of an Odoo filestore, path relative to ``<data_dir>/filestore/<db>/``."""

    relpath: str
    size: int
    mtime_ns: int


class Platform(ABC):
    """What a flow may ask of the machine(s) running one Odoo environment."""

    def __init__(self, env: Environment) -> None:
        self.env = env

    # -- database
    def conninfo(self) -> ConnInfo:
        """Connection parameters as seen from where odoops runs (a tunnel may be opened by ``database()``)."""
        password = read_secret(self.env.database.password_env, self.env.database.password_block,
                               what=f"environment {self.env.name} database password")
        return ConnInfo.from_dsn(self.env.database.dsn, password=password)

    def database(self) -> AbstractContextManager[ConnInfo]:
        """Context in which the database is reachable with the yielded parameters."""
        from contextlib import nullcontext

        return nullcontext(self.conninfo())

    # -- filestore
    @abstractmethod
    def filestore_exists(self) -> bool: ...

    @abstractmethod
    def list_filestore(self) -> Iterator[FilestoreEntry]:
        """Every regular file under the filestore folder (checklist markers included)."""

    @abstractmethod
    def open_filestore_file(self, relpath: str) -> BinaryIO: ...

    # -- Odoo
    @abstractmethod
    def read_odoo_config(self) -> str | None:
        """The Odoo configuration file's text, or None when the environment names none."""

    @abstractmethod
    def run(self, argv: list[str], check: bool = True, timeout: float | None = None,
            on_start: Callable[[int], None] | None = None) -> subprocess.CompletedProcess:
        """Run a command where Odoo runs (argv list, never a shell string).

        ``timeout``: the command and everything it started are killed at the limit (TimedOut);
        ``on_start`` receives its pid, for a journal that outlives this process.
        """

    def run_odoo(self, args: list[str], check: bool = True, timeout: float | None = None,
                 on_start: Callable[[int], None] | None = None) -> subprocess.CompletedProcess:
        if not self.env.odoo_bin:
            raise ConfigError(f"environment {self.env.name} names no odoo_bin: add e.g. "
                              'odoo_bin: ["odoo-bin", "-c", "/etc/odoo/odoo.conf"] to run Odoo commands')
        return self.run(odoo_command(list(self.env.odoo_bin), args), check=check, timeout=timeout,
                        on_start=on_start)

    def stop(self) -> bool:
        """Stop Odoo; False when the platform has no way to (no stop_command)."""
        if not self.env.stop_command:
            return False
        self.run(list(self.env.stop_command))
        return True

    def start(self) -> bool:
        if not self.env.start_command:
            return False
        self.run(list(self.env.start_command))
        return True

    def close(self) -> None:  # noqa: B027
        """Release connections (SSH sessions, tunnels)."""

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def odoo_command(odoo_bin: list[str], args: list[str]) -> list[str]:
    """odoo-bin's sub-command (``neutralize``, ``db``, ``shell``) must come before its options.

    ``odoo_bin`` is the inventory's ``[odoo-bin, -c, /etc/odoo/odoo.conf]``: the sub-command goes right
    after the executable (after any leading words that are not options, such as ``env X=Y odoo-bin`` or
    ``python3 odoo-bin``), the options of ``odoo_bin`` after it.
    """
    if not args or args[0].startswith("-"):
        return [*odoo_bin, *args]
    first_option = next((i for i, word in enumerate(odoo_bin) if word.startswith("-")), len(odoo_bin))
    return [*odoo_bin[:first_option], args[0], *odoo_bin[first_option:], *args[1:]]
