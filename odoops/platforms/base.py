"""The platform interface (see odoops.platforms)."""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO

from odoops.inventory import Environment
from odoops.secrets import read_secret
from tasks.postgres import ConnInfo


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
    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run a command where Odoo runs (argv list, never a shell string)."""

    def run_odoo(self, args: list[str]) -> subprocess.CompletedProcess:
        from odoops.errors import ConfigError

        if not self.env.odoo_bin:
            raise ConfigError(f"environment {self.env.name} names no odoo_bin: add e.g. "
                              'odoo_bin: ["odoo-bin", "-c", "/etc/odoo/odoo.conf"] to run Odoo commands')
        return self.run([*self.env.odoo_bin, *args])

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
