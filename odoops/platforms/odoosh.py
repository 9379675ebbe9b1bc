"""The ``odoosh`` platform: an Odoo.sh branch, driven the only ways Odoo.sh allows — SSH into its current
build, git, and the public URL (Odoo.sh has no API and no CLI).

It is the ``host`` platform over SSH (odoops/platforms/ssh_host.py: one strictly checked session, SFTP for
files, a tunnel for PostgreSQL), pointed at the build's own layout and told nothing it can read there:

- the database's name and connection come from the build's shell (``PGDATABASE``, ``PGHOST``, ``PGPORT``,
  ``PGUSER``… as a login shell in the build sees them; ``db_*`` of its Odoo configuration as a fallback),
  never from the inventory; psycopg reaches it through the SSH tunnel, while ``pg_dump`` runs in the build
  (``ConnInfo.tools``) with its output streamed over SSH into the backup repository: a build's disk is too
  small for a dump file, and the build's pg_dump matches its server. It dumps the snapshot the backup
  exported through the tunnel, so the manifest's facts and the dump agree as on any platform;
- the filestore is ``~/data/filestore/<database>``, the logs ``~/logs/*.log``, read over SFTP;
- what a build cannot do itself (replace, create or drop its database, switch its code, stop Odoo) is
  refused with where it is done in the Odoo.sh dashboard;
- the build's SSH address changes at every rebuild: a refused login names ``odoops envs set-ssh``, which
  stores the new address in a small file beside the inventory (:func:`set_build_address`).
"""

from __future__ import annotations

import configparser
import json
import os
import posixpath
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from odoops.errors import ConfigError, RefusedError, ToolFailed
from odoops.inventory import Environment, Inventory, odoosh_builds_file, parse_build_address
from odoops.platforms.base import ConnInfo, FilestoreFolders, RemoteTools
from odoops.platforms.ssh_host import SSHHostPlatform

# Commands run as in an operator's shell in the build: a login shell, so variables its profile sets count too.
# The script is a constant; the command's words follow it as arguments ("$0" "$@"), never as shell text.
_LOGIN_SHELL = ["bash", "-lc", 'exec "$0" "$@"']
_FROM_ENV = {"PGHOST": "host", "PGPORT": "port", "PGUSER": "user", "PGDATABASE": "dbname", "PGSSLMODE": "sslmode"}
_FROM_CONFIG = {"db_host": "host", "db_port": "port", "db_user": "user", "db_name": "dbname"}
CONFIG_CANDIDATES = (".config/odoo/odoo.conf", ".odoorc")


def in_build(argv: list[str]) -> list[str]:
    """``argv`` run through the build's login shell (its profile's variables set), as an argument list."""
    return [*_LOGIN_SHELL, *argv]


class _BuildTools(RemoteTools):
    """PostgreSQL client tools run in the build, with the build's own connection settings."""

    def __init__(self, platform: OdooShPlatform) -> None:
        self.platform = platform

    @contextmanager
    def stream(self, argv: list[str]) -> Iterator[BinaryIO]:
        with self.platform.session.stream(in_build(argv), label=f"{posixpath.basename(argv[0])} in the build") as out:
            yield out


class OdooShPlatform(SSHHostPlatform):
    """An Odoo.sh branch through SSH into its current build."""

    def __init__(self, env: Environment) -> None:
        if env.odoosh is None or env.ssh is None:
            raise ConfigError(f"environment {env.name}: platform odoosh needs an odoosh block with ssh: "
                              "<build_id>@<host>")
        super().__init__(env)
        self._shell_env: dict[str, str] | None = None

    @property
    def dashboard(self) -> str:
        """Where this branch is in the Odoo.sh dashboard, for instructions."""
        return f"Odoo.sh → {self.env.odoosh.project} → {self.env.odoosh.branch}"

    # -- what the build's shell says

    def shell_environment(self) -> dict[str, str]:
        """The variables of a login shell in the build (read once per session; values stay in memory only)."""
        if self._shell_env is None:
            out = self.session.run(in_build(["env", "-0"]), label="env in the build").stdout
            pairs = (item.split("=", 1) for item in out.decode("utf-8", "replace").split("\0") if "=" in item)
            self._shell_env = {key: value for key, value in pairs}
        return self._shell_env

    @property
    def home(self) -> str:
        return self.shell_environment().get("HOME") or "/home/odoo"

    def _in_home(self, path: str) -> str:
        return path if path.startswith("/") else posixpath.join(self.home, path.removeprefix("~/"))

    def _config_text(self) -> str | None:
        """The Odoo configuration of the build: the inventory's odoo_config, else the first usual place found."""
        if self.env.odoo_config:
            path = self._in_home(self.env.odoo_config)
            if self.session.stat(path) is None:
                raise ConfigError(f"environment {self.env.name}: odoo_config {path} not found in the build: fix or "
                                  "remove 'odoo_config:'")
            return self.session.read_bytes(path).decode("utf-8", "replace")
        for candidate in CONFIG_CANDIDATES:
            path = self._in_home(candidate)
            if self.session.stat(path) is not None:
                return self.session.read_bytes(path).decode("utf-8", "replace")
        return None

    def conninfo(self) -> ConnInfo:
        """The build's database as its shell reaches it (PG* variables, else db_* of its Odoo configuration)."""
        shell = self.shell_environment()
        params = {key: shell[var] for var, key in _FROM_ENV.items() if shell.get(var)}
        password = shell.get("PGPASSWORD") or None
        if "dbname" not in params:
            text = self._config_text()
            if text:
                parser = configparser.ConfigParser(interpolation=None)
                try:
                    parser.read_string(text)
                except configparser.Error:
                    parser.clear()
                options = parser["options"] if parser.has_section("options") else {}
                for option, key in _FROM_CONFIG.items():
                    value = options.get(option)
                    if value and value != "False" and key not in params:
                        params[key] = value
                if password is None and options.get("db_password") not in (None, "", "False"):
                    password = options["db_password"]
        if "dbname" not in params:
            raise ConfigError(f"environment {self.env.name}: the build {self.session.where} names no database "
                              "(PGDATABASE unset and no db_name in its Odoo configuration): is it an Odoo.sh build? "
                              "Check the address with odoops envs set-ssh")
        host = params.get("host", "")
        if not host or host.startswith("/"):
            raise ConfigError(f"environment {self.env.name}: the build reaches PostgreSQL through a local socket "
                              f"({host or 'the default one'}), which odoops cannot tunnel yet: it needs PGHOST to "
                              "name a TCP host in the build")
        return ConnInfo(params=params, password=password)

    def remote_tools(self) -> RemoteTools:
        return _BuildTools(self)

    # -- files

    @property
    def filestore_path(self) -> str:
        return posixpath.join(self.home, "data", "filestore", self.conninfo().dbname)

    def filestore_location(self) -> str | None:
        return self.filestore_path

    def filestore_folders(self) -> FilestoreFolders:
        raise RefusedError(f"environment {self.env.name}: odoops cannot replace or snapshot the filestore of an "
                           f"Odoo.sh build: import a backup in {self.dashboard} → Backups → Import Database")

    def read_odoo_config(self) -> str | None:
        return self._config_text()

    # -- commands

    def run(self, argv: list[str], check: bool = True, timeout: float | None = None,
            on_start: Callable[[int], None] | None = None) -> subprocess.CompletedProcess:
        return super().run(in_build(list(argv)), check=check, timeout=timeout, on_start=on_start)

    # -- what only the dashboard (or git) does

    def ensure_can(self, operation: str) -> None:
        where = {
            "restore": f"export it as Odoo's zip (odoops backups export ID -o FILE.zip), then import it in "
                       f"{self.dashboard} → Backups → Import Database",
            "create_database": f"a build has one database, which Odoo.sh creates: rebuild the branch in "
                               f"{self.dashboard}, or drill backups into a self-hosted environment "
                               "(odoops restore ID --to ENV)",
            "drop_database": f"a build's database is dropped by Odoo.sh with its build: {self.dashboard} → "
                             "Settings (delete or rebuild the branch)",
            "switch_release": f"push the release to the branch {self.env.odoosh.branch} of "
                              f"{self.env.odoosh.remote}: Odoo.sh builds and updates it",
            "upgrade": f"start the upgrade in {self.dashboard} → Upgrade",
        }.get(operation)
        if where is not None:
            raise RefusedError(f"environment {self.env.name} is an Odoo.sh build, which cannot {operation.replace('_', ' ')} "
                               f"through odoops: {where}")

    def change_needs(self) -> list[str]:
        self.ensure_can("switch_release")
        return []

    def running_release(self) -> dict[str, str]:
        self.ensure_can("switch_release")
        return {}

    def switch_release(self, release: dict[str, str]) -> dict[str, str]:
        self.ensure_can("switch_release")
        return {}

    def prepare_release(self, commit: str, tree: Path, addons: Path) -> dict[str, str]:
        self.ensure_can("switch_release")
        return {}

    def close(self) -> None:
        self._shell_env = None
        super().close()


# ---------------------------------------------------------------- the build address (envs set-ssh)


def set_build_address(inventory: Inventory, environment: str, address: str,
                      check: bool = True) -> dict[str, str | None]:
    """Store ``address`` as ``environment``'s current build in the builds file beside the inventory; with
    ``check``, only once a login there works and its shell names its database (a typo is never stored).

    Why beside, not in the inventory: the inventory is the operator's (comments, order, often in git or
    written by configuration management) and stays as written; the build address is state that Odoo.sh
    changes at every rebuild and that odoops writes, atomically, one small JSON object per environment,
    which the inventory loader overlays on the odoosh block. Returns ``{"previous", "address", "file",
    "database"}``.
    """
    env = inventory.environment(environment)
    if env.platform != "odoosh" or env.odoosh is None:
        raise ConfigError(f"environment {environment} is on platform {env.platform}, not odoosh: set-ssh changes "
                          "the build address of Odoo.sh environments only (edit ssh: in the inventory for a host)")
    user, host, port = parse_build_address(address, "set-ssh")
    database = None
    if check:
        probe = replace(env, ssh=replace(env.ssh, user=user, host=host, port=port, refused_fix=None),
                        odoosh=replace(env.odoosh, address=address.strip()))
        with OdooShPlatform(probe) as platform:
            database = platform.conninfo().dbname
    path = odoosh_builds_file(inventory.path.resolve())
    try:
        builds = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        raise ConfigError(f"builds file {path} is not valid JSON: delete it and run set-ssh again") from None
    builds[environment] = {"ssh": address.strip(), "set_at": datetime.now(UTC).isoformat(timespec="seconds"),
                           "previous": env.odoosh.address}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(builds, out, indent=1, sort_keys=True)
            out.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ToolFailed(f"cannot write {path}: {exc.strerror}: check the folder's permissions") from None
    return {"previous": env.odoosh.address, "address": address.strip(), "file": str(path), "database": database}
