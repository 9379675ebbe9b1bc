"""The platform interface (see odoops.platforms) and its value types: what flows and tasks exchange
with a platform, whichever implementation drives the environment."""

from __future__ import annotations

import os
import signal
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from odoops.errors import ConfigError
from odoops.inventory import Environment
from odoops.secrets import read_secret

_LIBPQ_ENV = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE",
              "sslmode": "PGSSLMODE", "service": "PGSERVICE", "passfile": "PGPASSFILE",
              "sslrootcert": "PGSSLROOTCERT", "connect_timeout": "PGCONNECT_TIMEOUT"}


class RemoteTools(Protocol):
    """Where PostgreSQL's client tools run when not on this machine (an Odoo.sh build): ``stream(argv)``
    runs one there, with that machine's own connection settings, and yields its stdout; leaving the context
    checks its exit status."""

    def stream(self, argv: list[str]) -> AbstractContextManager[BinaryIO]: ...


@dataclass(frozen=True)
class ConnInfo:
    """libpq parameters of one database; ``password`` is kept out of ``repr``.

    ``tools``: None runs pg_dump here against these parameters; an Odoo.sh build runs it in the build (its
    disk is too small for a dump file, and its pg_dump matches its server) and streams the output."""

    params: dict[str, str]
    password: str | None = field(default=None, repr=False)
    tools: RemoteTools | None = field(default=None, repr=False, compare=False)

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


class FilestoreFolders:
    """The folder around an environment's filestore, where snapshots live beside it as hidden siblings, and
    the few operations they need. This default works on this machine's file system; a platform whose
    filestore lives elsewhere (a container volume) does the same through its own means."""

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def link_copy(self, source: str, target: str) -> int:
        """Hard-link every file of ``source`` into the new folder ``target`` (same tree); returns the count.
        Raises OSError (ENOSPC, EXDEV, …) or an OdoopsError."""
        count = 0
        os.mkdir(target)
        for folder, dirs, files in os.walk(source):
            rel = os.path.relpath(folder, source)
            for name in dirs:
                os.mkdir(os.path.join(target, rel, name))
            for name in files:
                os.link(os.path.join(folder, name), os.path.join(target, rel, name))
                count += 1
        return count

    # True: this machine sees the folders, and a restore loads files straight into them; False: a restore
    # loads into a local folder first and import_tree() places it.
    is_local: bool = True

    def rename(self, source: str, target: str) -> None:
        os.rename(source, target)

    def remove(self, path: str) -> None:
        import shutil

        shutil.rmtree(path, ignore_errors=True)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def write_text(self, path: str, text: str) -> None:
        with open(path, "w") as out:
            out.write(text)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def import_tree(self, local: Path, target: str) -> None:
        """Place the local folder ``local`` (a restored filestore) at ``target``, which must not exist."""
        import shutil

        shutil.move(str(local), target)


LOCAL_FOLDERS = FilestoreFolders()


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

    def ensure_can(self, operation: str) -> None:  # noqa: B027
        """Refuse (RefusedError) an operation this platform leaves to a person elsewhere, saying where: an
        Odoo.sh build cannot ``restore`` over itself, ``create_database`` or ``drop_database``. The default allows
        every operation."""

    # -- filestore
    @abstractmethod
    def filestore_exists(self) -> bool: ...

    @abstractmethod
    def list_filestore(self) -> Iterator[FilestoreEntry]:
        """Every regular file under the filestore folder (checklist markers included)."""

    @abstractmethod
    def open_filestore_file(self, relpath: str) -> BinaryIO: ...

    # True where one read per file is a round trip that costs more than the file (an engine's archive API):
    # a backup then reads the files it needs with one read_filestore_files call instead.
    bulk_filestore_reads: bool = False

    def read_filestore_files(self, relpaths: Iterable[str]) -> Iterator[tuple[str, BinaryIO]]:
        """``(relpath, stream)`` for each wanted file, in the platform's order; a stream is valid until the
        next pair. This default opens them one by one; a platform with ``bulk_filestore_reads`` streams them
        all in one go."""
        for relpath in relpaths:
            with self.open_filestore_file(relpath) as stream:
                yield relpath, stream

    def filestore_location(self) -> str | None:
        """The filestore folder as :meth:`filestore_folders` addresses it (None: the environment has none)."""
        return self.env.filestore or None

    def filestore_folders(self) -> FilestoreFolders:
        """Where snapshots of the filestore are made and put back (this machine's file system by default)."""
        return LOCAL_FOLDERS

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

    def change_needs(self) -> list[str]:
        """Inventory keys missing for a change (deploy, upgrade, rollback), for which odoops stops Odoo, runs
        a one-off Odoo command and starts it again."""
        return [key for key in ("odoo_bin", "stop_command", "start_command") if not getattr(self.env, key)]

    def run_odoo_logged(self, args: list[str], logfile: Path, timeout: float | None = None,
                        on_start: Callable[[int], None] | None = None) -> subprocess.CompletedProcess:
        """Run an Odoo command whose own log must end up in ``logfile`` on this machine (an update run's log,
        analysed afterwards), even when the command fails or is stopped at its time limit."""
        return self.run_odoo([*args, "--logfile", str(logfile)], check=False, timeout=timeout, on_start=on_start)

    def stop_leftovers(self, process: dict[str, Any] | None) -> None:
        """Stop what a killed run left running (the one-off update its journal names), before putting back."""
        from odoops import holders

        if process and process.get("pid") and not holders.liveness(process, 0).dead:
            kill_process_group(int(process["pid"]))

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

    # -- code: which release Odoo runs (deploy, upgrade with new code, rollback)
    def running_release(self) -> dict[str, str]:
        """The code Odoo runs now, as a JSON-able record that :meth:`switch_release` accepts back:
        ``{"path": release folder}`` where an addons link selects the code, ``{"image": …}`` for containers."""
        raise ConfigError(f"environment {self.env.name}: platform {self.env.platform} cannot switch code: "
                          "deploy it by hand")

    def switch_release(self, release: dict[str, str]) -> dict[str, str]:
        """Make ``release`` the code of the next Odoo start and of one-off commands; returns the previous one."""
        raise ConfigError(f"environment {self.env.name}: platform {self.env.platform} cannot switch code: "
                          "deploy it by hand")

    def prepare_release(self, commit: str, tree: Path, addons: Path) -> dict[str, str]:
        """Make a release of ``commit`` ready to switch to, touching nothing the environment runs:
        ``tree`` is the whole repository at that commit, ``addons`` the folder of its modules within it.
        Host: a release folder; containers: an image built from ``tree`` with its Dockerfile."""
        raise ConfigError(f"environment {self.env.name}: platform {self.env.platform} cannot deploy releases")

    def inspect_release(self, release: dict[str, str]) -> dict[str, Any]:
        """What the code of ``release`` holds, touching nothing the environment runs: ``{"series": "18.0",
        "modules": {name: manifest version}}`` for every module in its addons path (a major upgrade's preflight)."""
        raise ConfigError(f"environment {self.env.name}: platform {self.env.platform} cannot inspect a target release")

    def release_from_image(self, image: str) -> dict[str, str]:
        """A release given as an existing image (tag or digest); container platforms only."""
        raise ConfigError(f"environment {self.env.name}: --image deploys to container platforms only: "
                          "use --ref for a host")

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


def kill_process_group(pid: int) -> None:
    """SIGKILL a process group (a command run on a host leads its own, so its children go with it)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
