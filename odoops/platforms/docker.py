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
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from odoops.errors import ConfigError, DiskFull, RefusedError, ToolFailed, tool_error_line
from odoops.inventory import DockerTarget, Environment
from odoops.platforms.base import ConnInfo, FilestoreEntry, FilestoreFolders, Platform, odoo_command
from tasks import containers, odoo

RELEASE_REPOSITORY = "odoops-release"


class DockerPlatform(Platform):
    """Odoo in one container: files through the archive API, commands in one-off containers beside it."""

    def __init__(self, env: Environment) -> None:
        if env.docker is None:
            raise ConfigError(f"environment {env.name}: no docker block: add docker: {{container: NAME}}")
        super().__init__(env)
        self._client: Any = None
        self._container: Any = None
        self._image: str | None = None  # the image switched to (switch_release): one-offs and the next start()

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

    @contextmanager
    def database(self) -> Iterator[ConnInfo]:
        """The dsn as odoops sees it, or — ``database_through_engine`` — its host and port as the container sees
        them, reached by a relay through the engine on a local port for the duration of the context."""
        info = self.conninfo()
        if not self.target.database_through_engine:
            yield info
            return
        host = info.params.get("host") or "localhost"
        if host.startswith("/") or "," in host:
            raise ConfigError(f"environment {self.env.name}: with database_through_engine the dsn must name one "
                              "TCP host as the container sees it, e.g. postgresql://odoo@db:5432/acme")
        try:
            port = int(info.params.get("port") or 5432)
        except ValueError:
            raise ConfigError(f"environment {self.env.name}: database dsn port is not a number") from None
        params = {k: v for k, v in info.params.items() if k not in ("host", "hostaddr", "port")}
        with containers.tcp_relay(self.client, self.container, host, port, self.engine) as local_port:
            yield ConnInfo(params={**params, "host": "127.0.0.1", "port": str(local_port)}, password=info.password)

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
        """``argv`` in a one-off container from the Odoo container's image (or the release switched to), with its
        volumes and network.

        ``on_start`` gets the one-off's host pid only on a local engine (a ``unix://`` socket): a journal
        that records it may later kill that pid here, which on a remote engine's machine would name
        another process.
        """
        if not argv:
            raise ConfigError(f"environment {self.env.name}: empty command")
        return containers.run_one_off(self.client, self.container, list(argv), self.engine, check=check,
                                      timeout=timeout, on_start=self._local(on_start), image=self._image)

    def _local(self, on_start: Callable[[int], None] | None) -> Callable[[int], None] | None:
        return on_start if self.engine.startswith("unix://") else None

    def odoo_argv(self, args: list[str]) -> list[str]:
        """The Odoo command with ``args``: the inventory's odoo_bin when it names one, else the container's own
        entrypoint (``odoo-bin``, or an image's wrapper script that passes options on to Odoo) with
        ``-c docker.config``: a container environment needs no odoo_bin."""
        if self.env.odoo_bin:
            return odoo_command(list(self.env.odoo_bin), args)
        entrypoint = list((self.container.attrs.get("Config") or {}).get("Entrypoint") or [])
        if not entrypoint:
            raise ConfigError(f"environment {self.env.name}: the image of {self.target.describe()} has no entrypoint "
                              'to run Odoo with: add e.g. odoo_bin: ["odoo-bin", "-c", "/etc/odoo/odoo.conf"]')
        return odoo_command([*entrypoint, "-c", self.target.config], args)

    def run_odoo(self, args: list[str], check: bool = True, timeout: float | None = None,
                 on_start: Callable[[int], None] | None = None) -> subprocess.CompletedProcess:
        return self.run(self.odoo_argv(args), check=check, timeout=timeout, on_start=on_start)

    def run_odoo_logged(self, args: list[str], logfile: Path, timeout: float | None = None,
                        on_start: Callable[[int], None] | None = None) -> subprocess.CompletedProcess:
        """The one-off writes Odoo's log in its own file system (not the data volume: nothing is left there
        whatever happens) and the log is read out of it once it has ended — failed, or killed at its time
        limit — before it is removed. Without a log file (Odoo died before opening it) its output is the log."""
        inside = f"/tmp/odoops-{uuid.uuid4().hex}.log"  # noqa: S108 - the one-off's own /tmp, not this machine's
        result: dict[str, Any] = {}

        def collect(one_off: Any) -> None:
            try:
                result["copied"] = containers.copy_out(one_off, inside, logfile, self.engine)
            except Exception:  # noqa: BLE001 - the run's own outcome is reported; the log is best effort
                result["copied"] = False

        argv = self.odoo_argv([*args, "--logfile", inside])
        try:
            done = containers.run_one_off(self.client, self.container, argv, self.engine, check=False,
                                          timeout=timeout, on_start=self._local(on_start), image=self._image,
                                          collect=collect)
        finally:
            if not result.get("copied") and not logfile.exists():
                logfile.touch()
        if not result.get("copied"):
            logfile.write_bytes((done.stdout or b"") + (done.stderr or b""))
        return done

    def change_needs(self) -> list[str]:
        """Nothing: the platform stops and starts the container itself and runs Odoo with its entrypoint."""
        return []

    def stop_leftovers(self, process: dict[str, Any] | None) -> None:
        """Remove the one-off containers a killed run left (by their label: the journal's pid would name a
        process of another machine on a remote engine, and removing the container ends its processes)."""
        containers.remove_one_offs(self.client, self.container.name, self.engine)

    def stop(self) -> bool:
        containers.stop(self.container, self.engine)
        return True

    def start(self) -> bool:
        """Start Odoo: in a new container from the release switched to, when that is not the container's image
        (same name and configuration, volumes and network; tasks.containers.replace_container)."""
        if self._image is not None and self._image != containers.container_image(self.container):
            self._container = containers.replace_container(self.client, self.container, self._image, self.engine)
        containers.start(self.container, self.engine)
        return True

    def restart(self) -> bool:
        if self._image is not None and self._image != containers.container_image(self.container):
            self.stop()
            return self.start()
        containers.restart(self.container, self.engine)
        return True

    # -- releases: an image per release

    def _image_release(self, image: Any, tag: str | None = None) -> dict[str, str]:
        return {"image": image.id, "tag": containers.image_tag(image) if tag is None else tag}

    def running_release(self) -> dict[str, str]:
        """The image the Odoo container runs: ``{"image": sha256 id, "tag": its first tag or ""}``."""
        image = containers.find_image(self.client, containers.container_image(self.container), self.engine)
        if image is None:
            return {"image": containers.container_image(self.container), "tag": ""}
        return self._image_release(image)

    def _existing_image(self, ref: str) -> Any:
        image = containers.find_image(self.client, ref, self.engine)
        if image is None:
            raise RefusedError(f"image {ref} not found on {self.engine}: build or load it first")
        return image

    def switch_release(self, release: dict[str, str]) -> dict[str, str]:
        """Make the release's image the one of one-off commands and of the next start(); the running container is
        not touched (the flows switch with Odoo stopped). Returns the release that was current."""
        ref = release.get("image") or release.get("tag")
        if not ref:
            raise ConfigError(f"environment {self.env.name}: a docker release is an image, not {sorted(release)}")
        image = self._existing_image(ref)
        previous = self.running_release() if self._image is None else \
            self._image_release(self._existing_image(self._image))
        self._image = image.id
        return previous

    def inspect_release(self, release: dict[str, str]) -> dict[str, Any]:
        """Asked of the image itself, in a one-off from it with the container's mounts: its Odoo's series and the
        manifests of its addons path (tasks.odoo.INSPECT_ODOO; the running container is not touched)."""
        image = self._existing_image(release.get("image") or release.get("tag") or "")
        odoo_bin = self.odoo_argv([])
        entry = next((w for w in odoo_bin if posixpath.basename(w).startswith("odoo")), odoo_bin[0])
        done = containers.run_one_off(self.client, self.container, ["python3", "-c", odoo.INSPECT_ODOO, entry,
                                                                    self.target.config],
                                      self.engine, check=False, timeout=300, image=image.id)
        try:
            return odoo.parse_inspection((done.stdout or b"").decode("utf-8", "replace"))
        except ValueError:
            raise RefusedError(f"image {release.get('tag') or image.id[:19]} does not say what Odoo it holds "
                               f"(python3 {entry}): {tool_error_line(done.stderr or done.stdout or b'')}") from None

    def release_from_image(self, image: str) -> dict[str, str]:
        """An existing image by tag or id: ``{"image": id, "tag": the ref given}``."""
        return self._image_release(self._existing_image(image), tag=image)

    def release_tag(self, commit: str) -> str:
        repository = self.target.image_repository or f"{RELEASE_REPOSITORY}/{self.container.name.lower()}"
        return f"{repository}:{commit[:12]}"

    def prepare_release(self, commit: str, tree: Path, addons: Path) -> dict[str, str]:
        """The image of ``commit``, built on the environment's engine from ``tree`` (the whole repository) with its
        Dockerfile (docker.dockerfile, docker.build_args), tagged ``<docker.image_repository or
        odoops-release/<container>>:<commit[:12]>``. It is not pushed anywhere: the engine that runs the
        container is the one that builds it (a registry is not needed, nor reachable here)."""
        dockerfile = self.target.dockerfile
        if not (tree / dockerfile).is_file():
            raise RefusedError(f"commit {commit[:12]} has no {dockerfile} at the repository's root: add one (FROM your "
                               "Odoo image, COPY the addons) or set docker.dockerfile")
        tag = self.release_tag(commit)
        image = containers.build_image(self.client, str(tree), tag, self.engine, dockerfile=dockerfile,
                                       build_args=self.target.build_args,
                                       labels={"odoops.release.commit": commit,
                                               "odoops.release.container": self.container.name})
        return {"image": image.id, "tag": tag}

    # -- snapshots of the filestore, in the data volume

    def filestore_location(self) -> str | None:
        return self.filestore_path

    def filestore_folders(self) -> FilestoreFolders:
        return ContainerFolders(self)

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


class ContainerFolders(FilestoreFolders):
    """The filestore's folder in the container's data volume: snapshots are made and put back by ``cp -al``,
    ``mv`` and ``rm`` run there — with ``exec`` in the Odoo container while it runs, else in a one-off helper
    container from its image with its volumes (snapshots are taken with Odoo stopped). They run as the
    container's user (Odoo's), so the folders they create belong to it; hard links keep the files' owners."""

    def __init__(self, platform: DockerPlatform) -> None:
        self.platform = platform

    def _run(self, argv: list[str], what: str) -> subprocess.CompletedProcess:
        p = self.platform
        container = p.container
        container.reload()
        user = (container.attrs.get("Config") or {}).get("User") or None
        if container.status == "running":
            done = containers.exec_in(container, argv, p.engine, user=user)
        else:
            done = containers.run_one_off(p.client, container, argv, p.engine, check=False)
        if done.returncode != 0:
            output = (done.stderr or b"") + (done.stdout or b"")
            if b"No space left" in output:
                raise DiskFull(f"no space left in the data volume of {p.target.describe()} to {what}: free some "
                               "space; nothing was changed")
            raise ToolFailed(f"cannot {what} in {p.target.describe()}: {tool_error_line(output)}")
        return done

    def exists(self, path: str) -> bool:
        return containers.path_stat(self.platform.container, path, self.platform.engine) is not None

    def link_copy(self, source: str, target: str) -> int:
        done = self._run(["sh", "-c", 'cp -al -- "$1" "$2" && find "$2" -type f | wc -l', "sh", source, target],
                         f"hard-link {source} into {target}")
        return int((done.stdout or b"0").split()[-1])

    def rename(self, source: str, target: str) -> None:
        self._run(["mv", "-T", "--", source, target], f"rename {source} to {target}")

    def remove(self, path: str) -> None:
        self._run(["rm", "-rf", "--", path], f"remove {path}")

    # A restore loads the files on this machine, then puts them in the volume in one archive (import_tree).
    is_local = False

    def makedirs(self, path: str) -> None:
        self._run(["mkdir", "-p", "--", path], f"create {path}")

    def write_text(self, path: str, text: str) -> None:
        self._run(["sh", "-c", 'printf %s "$1" > "$2"', "sh", text, path], f"write {path}")

    def unlink(self, path: str) -> None:
        self._run(["rm", "-f", "--", path], f"remove {path}")

    def import_tree(self, local: Path, target: str) -> None:
        """The restored filestore into the volume, owned by the container's user (Odoo's)."""
        if self.exists(target):
            raise RefusedError(f"{target} already exists in {self.platform.target.describe()}: not overwriting it")
        done = self._run(["sh", "-c", "id -u; id -g"], "read the container user's ids")
        uid, gid = (int(word) for word in (done.stdout or b"").split()[:2])
        self.makedirs(posixpath.dirname(target.rstrip("/")))
        containers.copy_in(self.platform.container, local, target, uid, gid, self.platform.engine)
