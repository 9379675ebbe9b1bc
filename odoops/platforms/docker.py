"""The ``docker`` platform: Odoo in a container on a Docker engine (local socket, ``tcp://`` or ``ssh://``).

The database is reached by the inventory's DSN as seen from where odoops runs (as for ``host``). The
filestore and the Odoo configuration are read out of the container through the engine's archive API
(``get_archive``: works on a remote engine and on a stopped container), commands run in a one-off
container beside Odoo's (same image, volumes, network and environment), stop/start act on the container
itself, and its log stream and resource figures come from the engine (see tasks.containers). One engine
connection serves the whole platform object, opened on first use.
"""

from __future__ import annotations

import posixpath
import subprocess
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, BinaryIO

from odoops.errors import ConfigError, RefusedError
from odoops.inventory import DockerTarget, Environment
from odoops.platforms.base import FilestoreEntry, Platform
from tasks import containers


class DockerPlatform(Platform):
    """Odoo in one container: files through the archive API, commands in one-off containers beside it."""

    def __init__(self, env: Environment) -> None:
        if env.docker is None:
            raise ConfigError(f"environment {env.name}: no docker block: add docker: {{container: NAME}}")
        super().__init__(env)
        self._client: Any = None
        self._container: Any = None

    @property
    def target(self) -> DockerTarget:
        return self.env.docker  # type: ignore[return-value]

    @property
    def engine(self) -> str:
        return self.target.engine_url

    @property
    def client(self) -> Any:
        """The engine's docker-py client, connected (and pinged) on first use."""
        if self._client is None:
            self._client = containers.connect(self.engine)
        return self._client

    @property
    def container(self) -> Any:
        """The Odoo container, looked up on first use (by name or compose labels), then refreshed."""
        if self._container is None:
            self._container = containers.find_container(self.client, self.engine, name=self.target.container,
                                                        project=self.target.compose_project,
                                                        service=self.target.compose_service)
        return self._container

    @property
    def filestore_path(self) -> str:
        return self.env.filestore.rstrip("/") or "/"

    # -- filestore

    def filestore_exists(self) -> bool:
        return containers.is_dir(containers.path_stat(self.container, self.filestore_path, self.engine))

    def _missing_filestore(self) -> ConfigError:
        return ConfigError(f"environment {self.env.name}: filestore folder {self.filestore_path} does not exist in "
                           f"{self.target.describe()}: check docker.data_dir and the dsn's database name "
                           "(<data_dir>/filestore/<dbname>)")

    def list_filestore(self) -> Iterator[FilestoreEntry]:
        """Paths, sizes and mtimes: a ``find`` exec'd in the running container (names only), else one archive
        of the folder whose headers are read as it streams by (a stopped container, no GNU find in the
        image). Not a helper container: starting one costs more (0.7 s measured) than the exec (0.16 s for
        2,000 files) and it sees volumes only. See tasks.containers.list_tree."""
        if not self.filestore_exists():
            raise self._missing_filestore()
        for item in containers.list_tree(self.container, self.filestore_path, self.engine):
            yield FilestoreEntry(item.relpath, item.size, item.mtime_ns)

    def open_filestore_file(self, relpath: str) -> BinaryIO:
        return containers.open_file(self.container, self._filestore_file(relpath), self.engine)

    # Each get_archive call costs a round trip and an engine-side mount (about 0.2 s per call measured on Podman,
    # whatever the file's size): a backup reads its files in one archive of the folder instead.
    bulk_filestore_reads = True

    def read_filestore_files(self, relpaths: Iterable[str]) -> Iterator[tuple[str, BinaryIO]]:
        """The wanted files in one archive of the whole folder, instead of one HTTP call per file."""
        wanted = set(relpaths)
        for relpath in wanted:
            self._filestore_file(relpath)  # refuse a path that leaves the folder before any read
        if not wanted:
            return
        for item, reader in containers.iter_tree(self.container, self.filestore_path, self.engine,
                                                 wanted=wanted.__contains__):
            if reader is not None:
                yield item.relpath, reader

    def _filestore_file(self, relpath: str) -> str:
        parts = relpath.split("/")
        if relpath.startswith("/") or ".." in parts or not relpath:
            raise RefusedError(f"filestore path {relpath!r} leaves the filestore folder: refused")
        return posixpath.join(self.filestore_path, relpath)

    # -- Odoo

    def read_odoo_config(self) -> str | None:
        data = containers.read_file(self.container, self.target.config, self.engine)
        if data is None:
            raise ConfigError(f"environment {self.env.name}: Odoo config {self.target.config} not found in "
                              f"{self.target.describe()}: fix docker.config")
        return data.decode("utf-8", "replace")

    def run(self, argv: list[str], check: bool = True, timeout: float | None = None,
            on_start: Callable[[int], None] | None = None) -> subprocess.CompletedProcess:
        """``argv`` in a one-off container from the Odoo container's image, with its volumes and network.

        ``on_start`` gets the one-off's host pid only on a local engine (a ``unix://`` socket): a journal
        that records it may later kill that pid here, which on a remote engine's machine would name
        another process.
        """
        if not argv:
            raise ConfigError(f"environment {self.env.name}: empty command")
        local = self.engine.startswith("unix://")
        return containers.run_one_off(self.client, self.container, list(argv), self.engine, check=check,
                                      timeout=timeout, on_start=on_start if local else None)

    def stop(self) -> bool:
        containers.stop(self.container, self.engine)
        return True

    def start(self) -> bool:
        containers.start(self.container, self.engine)
        return True

    def restart(self) -> bool:
        containers.restart(self.container, self.engine)
        return True

    def container_stats(self) -> dict[str, Any]:
        """``{"cpu": ratio of its CPU limit, "memory": ratio of its memory limit, ...}`` (tasks.health)."""
        return containers.resource_use(self.container, self.engine)

    def log_stream(self, since: datetime | float | None = None, follow: bool = False,
                   tail: int | None = None) -> BinaryIO:
        """The Odoo container's log stream (what ``odoops logs env:NAME`` reads)."""
        return containers.log_stream(self.container, self.engine, since=since, follow=follow, tail=tail)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None
                self._container = None
