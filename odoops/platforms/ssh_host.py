"""The ``host`` platform over SSH: Odoo on a remote machine that odoops reaches only by SSH.

The filestore and the Odoo configuration are read over SFTP, commands run through SSH, and the
database — which on such hosts usually listens on the remote loopback only — is reached through an SSH
port forward that ``database()`` opens for the duration of its context. One SSH session serves the
whole platform object, opened on first use, strict host key checking always (see tasks.ssh).
"""

from __future__ import annotations

import posixpath
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from odoops.errors import ConfigError, RefusedError
from odoops.inventory import Environment
from odoops.platforms.base import ConnInfo, FilestoreEntry, Platform, RemoteTools
from tasks.ssh import SSHSession, session_for

DEFAULT_DB_HOST = "127.0.0.1"
DEFAULT_DB_PORT = 5432


class SSHHostPlatform(Platform):
    """Odoo on a remote machine: SFTP for files, SSH for commands, a tunnel for PostgreSQL."""

    def __init__(self, env: Environment) -> None:
        if env.ssh is None:
            raise ConfigError(f"environment {env.name}: no ssh block: add ssh: {{host: ...}} or use the local host platform")
        super().__init__(env)
        self._session: SSHSession | None = None

    @property
    def session(self) -> SSHSession:
        """The SSH session to the environment's host, connected on first use."""
        if self._session is None:
            self._session = session_for(self.env.ssh)
        return self._session

    @property
    def filestore_path(self) -> str:
        return self.env.filestore.rstrip("/") or "/"

    # -- database

    @contextmanager
    def database(self) -> Iterator[ConnInfo]:
        """The DSN's host/port as seen from the remote machine, tunnelled to a local 127.0.0.1 port."""
        remote = self.conninfo()
        host = remote.params.get("host") or DEFAULT_DB_HOST
        if host.startswith("/") or "," in host:
            raise ConfigError(f"environment {self.env.name}: over SSH the database dsn must name one TCP host as seen "
                              f"from {self.env.ssh.host}, e.g. postgresql://odoo@127.0.0.1:5432/dbname")
        try:
            port = int(remote.params.get("port") or DEFAULT_DB_PORT)
        except ValueError:
            raise ConfigError(f"environment {self.env.name}: database dsn port is not a number") from None
        params = {k: v for k, v in remote.params.items() if k not in ("host", "hostaddr", "port")}
        with self.session.forward(host, port) as local_port:
            yield ConnInfo(params={**params, "host": "127.0.0.1", "port": str(local_port)}, password=remote.password,
                           tools=self.remote_tools())

    def remote_tools(self) -> RemoteTools | None:
        """Where pg_dump runs: here, through the tunnel (a subclass may run it on the remote machine)."""
        return None

    # -- filestore

    def filestore_exists(self) -> bool:
        return self.session.is_dir(self.filestore_path)

    def list_filestore(self) -> Iterator[FilestoreEntry]:
        root = self.filestore_path
        if not self.filestore_exists():
            raise ConfigError(f"environment {self.env.name}: filestore folder {root} does not exist on "
                              f"{self.env.ssh.host}: check 'filestore:' in the inventory (<data_dir>/filestore/<dbname>)")
        for relpath, size, mtime_ns in self.session.walk(root):
            yield FilestoreEntry(relpath, size, mtime_ns)

    def open_filestore_file(self, relpath: str) -> BinaryIO:
        parts = relpath.split("/")
        if relpath.startswith("/") or ".." in parts or not relpath:
            raise RefusedError(f"filestore path {relpath!r} leaves the filestore folder: refused")
        return self.session.open(posixpath.join(self.filestore_path, relpath))

    # -- Odoo

    def read_odoo_config(self) -> str | None:
        if not self.env.odoo_config:
            return None
        path = self.env.odoo_config
        attrs = self.session.stat(path)
        if attrs is None:
            raise ConfigError(f"environment {self.env.name}: odoo_config {path} not found on {self.env.ssh.host}: "
                              "fix or remove 'odoo_config:'")
        return self.session.read_bytes(path).decode("utf-8", "replace")

    def run(self, argv: list[str], check: bool = True, timeout: float | None = None,
            on_start: Callable[[int], None] | None = None) -> subprocess.CompletedProcess:
        if timeout is not None or on_start is not None:
            raise ConfigError(f"environment {self.env.name}: time-limited commands over SSH are not supported "
                              "yet: run odoops on that host")
        result = self.session.run(list(argv), check=check)
        return subprocess.CompletedProcess(list(argv), result.exit_code, result.stdout, result.stderr)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
