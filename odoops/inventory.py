"""The environment inventory: which Odoo environments exist and how to reach them.

Loaded from YAML (default ``deployments/environments.yaml``; ``--inventory`` or ``ODOOPS_INVENTORY``
override it) and validated on load, so a typo fails at once with the key path and the fix instead of
half-way through a backup. Secrets never live here: passwords come from libpq's own sources
(PGPASSWORD, PGPASSFILE, service files) or from an environment variable / Prefect Secret block that
the inventory names. Relative paths are relative to the inventory file's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from odoops.errors import ConfigError, UnknownEnvironmentError

DEFAULT_INVENTORY = Path("deployments/environments.yaml")
STAGES = ("development", "staging", "production")
PLATFORMS = ("host", "docker", "odoosh")
STORAGE_TYPES = ("local", "s3")
BACKUP_KINDS = ("scheduled", "manual", "pre-deploy", "pre-upgrade", "pre-restore")
DEFAULT_KEEP = {"daily": 7, "weekly": 4, "monthly": 3}  # what Odoo.sh keeps for production
NAME_RE = r"[a-z0-9][a-z0-9_-]{0,62}"  # a site or a label: it becomes part of a work pool or limit name


@dataclass(frozen=True)
class Storage:
    name: str
    type: str
    path: Path | None = None
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_env: str | None = None
    secret_key_env: str | None = None
    multipart_mb: int = 64


@dataclass(frozen=True)
class Database:
    dsn: str
    password_env: str | None = None
    password_block: str | None = None


@dataclass(frozen=True)
class SSH:
    host: str
    user: str | None = None
    port: int = 22
    known_hosts: Path | None = None
    key_file: Path | None = None
    # What to tell the operator when the login is refused or the host is gone (an Odoo.sh build is replaced
    # at every rebuild); None: the plain SSH error.
    refused_fix: str | None = None


DOCKER_ENGINE_SCHEMES = ("unix://", "tcp://", "ssh://", "http://", "https://", "npipe://")
DOCKER_LOCAL_SOCKET = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class DockerTarget:
    """Where a ``platform: docker`` environment's Odoo runs: an engine and one container on it.

    The container is named (``container``) or found by its compose labels (``compose_project`` and
    ``compose_service``); ``data_dir`` and ``config`` are paths inside the container.
    """

    engine: str | None = None  # None: $DOCKER_HOST when odoops runs, else the local socket
    container: str | None = None
    compose_project: str | None = None
    compose_service: str | None = None
    data_dir: str = "/var/lib/odoo"
    config: str = "/etc/odoo/odoo.conf"
    # deploy: how a release's image is built from the repository at a commit (no registry push: the image is
    # built on the engine that runs the container)
    dockerfile: str = "Dockerfile"  # relative to the repository's root
    build_args: dict[str, str] = field(default_factory=dict)
    image_repository: str | None = None  # default odoops-release/<container name>; the tag is the commit[:12]
    # The database dsn names the host as the Odoo container sees it (a compose service "db", a private
    # network): odoops reaches it through the engine, by a relay container on the Odoo container's network.
    database_through_engine: bool = False

    @property
    def engine_url(self) -> str:
        return self.engine or os.environ.get("DOCKER_HOST") or DOCKER_LOCAL_SOCKET

    def describe(self) -> str:
        """The container as the inventory names it, for messages."""
        if self.container:
            return f"container {self.container}"
        return f"compose service {self.compose_project}/{self.compose_service}"


@dataclass(frozen=True)
class OdooSh:
    """Where a ``platform: odoosh`` environment lives on Odoo.sh: the project, the branch Odoo.sh builds
    from the git remote, and the SSH address of the branch's current build (``<build_id>@<host>``, also the
    environment's ``ssh``), which changes at every rebuild: ``address_source`` is the inventory, or the builds
    file beside it that ``odoops envs set-ssh`` writes (odoops/platforms/odoosh.py)."""

    project: str
    branch: str
    remote: str
    address: str
    url: str | None = None
    address_source: str = "inventory"


ODOOSH_BUILDS_SUFFIX = ".odoosh-builds.json"


def odoosh_builds_file(inventory: Path) -> Path:
    """The file beside the inventory holding the current build address of Odoo.sh environments."""
    return inventory.with_name(inventory.stem + ODOOSH_BUILDS_SUFFIX)


def parse_build_address(address: Any, where: str = "address") -> tuple[str, str, int]:
    """``<build_id>@<host>[:port]`` as (build id, host, port)."""
    import re

    match = re.fullmatch(r"([A-Za-z0-9_][A-Za-z0-9_.-]*)@(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?",
                         address.strip()) if isinstance(address, str) else None
    port = int(match.group(3)) if match and match.group(3) else 22
    if not match or not 0 < port < 65536:
        raise ConfigError(f"{where}: {address!r} is not an Odoo.sh SSH address: write <build_id>@<host>[:port] as the "
                          "branch's SSH command in the Odoo.sh dashboard shows it, e.g. 1234567@acme-main-1234567.dev.odoo.com")
    return match.group(1), match.group(2).strip("[]"), port


@dataclass(frozen=True)
class BackupPolicy:
    storage: str
    schedule: str | None = None
    timezone: str = "UTC"
    keep: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_KEEP))
    # Tables of at least this many MB get a dump part of their own, reused by the next backup while the
    # table is unchanged (docs/repository-format.md); 0 keeps the whole database in one dump.
    tables_apart_mb: float = 64


@dataclass(frozen=True)
class UpgradeCommand:
    """A way to upgrade a database (``odoops upgrade --command NAME``), each with its own time limit.

    ``update``: odoo-bin -u (the default); ``openupgrade``: OpenUpgrade's scripts (``upgrade_path``) with its
    framework loaded and ``-u all``; ``script``: any argv (Odoo's upgrade script, a company's own), with
    ``{database}``, ``{modules}`` and ``{logfile}`` filled in.
    """

    name: str
    kind: str
    argv: tuple[str, ...] = ()
    upgrade_path: str | None = None
    timeout: float | None = None


UPGRADE_KINDS = ("update", "openupgrade", "script")


@dataclass(frozen=True)
class GitSource:
    """The addons repository of an environment: any URL git reads (a path, file://, ssh://, https://)."""

    repository: str
    subdir: str = ""  # the addons' folder inside the repository, when they are not at its root


@dataclass(frozen=True)
class Environment:
    name: str
    stage: str
    platform: str
    database: Database
    filestore: str
    backup: BackupPolicy
    url: str | None = None
    odoo_config: str | None = None
    ssh: SSH | None = None
    logs: tuple[str, ...] = ()
    odoo_bin: tuple[str, ...] = ()
    stop_command: tuple[str, ...] = ()
    start_command: tuple[str, ...] = ()
    health: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # A symbolic link on the Odoo host that the addons_path names: an upgrade with new code points it at
    # the new release folder, and a rollback points it back (the previous code serves the previous data).
    addons_link: str | None = None
    # Host: a symbolic link to the Odoo source tree that odoo_bin and the service run (/opt/odoo/current): a
    # major upgrade (--to SERIES --odoo TREE) points it at the new tree, a rollback points it back.
    odoo_link: str | None = None
    # The user's addons repository, where deploy takes releases from (a commit, a branch, a tag).
    git: GitSource | None = None
    # Host: the folder of release folders (<releases_dir>/<commit>); default: ``releases`` beside addons_link.
    releases_dir: str | None = None
    upgrade_commands: dict[str, UpgradeCommand] = field(default_factory=dict)
    # platform: docker only: the engine and container (filestore is then the path inside the container)
    docker: DockerTarget | None = None
    # platform: odoosh only (database and filestore are then read from the build: odoops/platforms/odoosh.py)
    odoosh: OdooSh | None = None
    # The fleet: where its runs go (work pool odoops-<site>, the worker next to its database) and free labels
    # that --select picks environments by (docs/fleet.md).
    site: str | None = None
    labels: tuple[str, ...] = ()

    @property
    def is_production(self) -> bool:
        return self.stage == "production"


@dataclass(frozen=True)
class FleetLimits:
    """How many backups run at once against one storage and one database server (Prefect global
    concurrency limits ``odoops-storage-<name>`` and ``odoops-dbserver-<host:port>``)."""

    max_backups_per_storage: int = 4
    max_backups_per_db_server: int = 2


@dataclass(frozen=True)
class Inventory:
    path: Path
    storages: dict[str, Storage]
    environments: dict[str, Environment]
    fleet: FleetLimits = field(default_factory=FleetLimits)

    def environment(self, name: str) -> Environment:
        try:
            return self.environments[name]
        except KeyError:
            known = ", ".join(sorted(self.environments)) or "none"
            raise UnknownEnvironmentError(
                f"unknown environment {name!r} in {self.path}: known environments are {known}"
            ) from None

    def storage(self, name: str) -> Storage:
        try:
            return self.storages[name]
        except KeyError:
            known = ", ".join(sorted(self.storages)) or "none"
            raise ConfigError(f"unknown storage {name!r}: define it under 'storage:' in {self.path} (known: {known})") from None


# ---------------------------------------------------------------- validation helpers


def _fail(where: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"inventory: {where}: {problem}; {fix}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a mapping, got {type(value).__name__}", "write it as 'key: value' lines")
    return value


def _str(data: dict, key: str, where: str, required: bool = True, default: str | None = None) -> str | None:
    value = data.get(key, default)
    if value is None:
        if required:
            raise _fail(f"{where}.{key}", "missing", f"add '{key}:' to {where}")
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(f"{where}.{key}", f"expected a non-empty string, got {value!r}", "quote the value")
    return value


def _choice(data: dict, key: str, where: str, choices: tuple[str, ...], default: str | None = None) -> str:
    value = _str(data, key, where, required=default is None, default=default)
    if value not in choices:
        raise _fail(f"{where}.{key}", f"{value!r} is not one of {', '.join(choices)}", f"use one of {', '.join(choices)}")
    return value


def _unknown(data: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise _fail(f"{where}.{extra[0]}", "unknown key", f"remove it or use one of {', '.join(sorted(allowed))}")


def _argv(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        raise _fail(where, "a command must be a list of arguments, not a shell string",
                    'write it as a list, e.g. ["odoo-bin", "-c", "/etc/odoo/odoo.conf"]')
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, "expected a list of strings", 'write it as ["program", "arg", ...]')
    return tuple(value)


def _resolve(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p)


def _storage(name: str, data: Any, base: Path) -> Storage:
    where = f"storage.{name}"
    data = _mapping(data, where)
    kind = _choice(data, "type", where, STORAGE_TYPES)
    if kind == "local":
        _unknown(data, {"type", "path"}, where)
        return Storage(name=name, type=kind, path=_resolve(base, _str(data, "path", where)))
    _unknown(data, {"type", "bucket", "prefix", "endpoint_url", "region", "access_key_env", "secret_key_env",
                    "multipart_mb"}, where)
    multipart_mb = data.get("multipart_mb", 64)
    if not isinstance(multipart_mb, int) or isinstance(multipart_mb, bool) or multipart_mb < 5:
        raise _fail(f"{where}.multipart_mb", f"expected a whole number >= 5, got {multipart_mb!r}",
                    "S3 parts are at least 5 MB; write e.g. multipart_mb: 64")
    prefix = data.get("prefix") or ""
    if not isinstance(prefix, str):
        raise _fail(f"{where}.prefix", "expected a string", "quote it, e.g. prefix: acme/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return Storage(
        name=name, type=kind, bucket=_str(data, "bucket", where), prefix=prefix,
        endpoint_url=_str(data, "endpoint_url", where, required=False),
        region=_str(data, "region", where, required=False),
        access_key_env=_str(data, "access_key_env", where, required=False),
        secret_key_env=_str(data, "secret_key_env", where, required=False), multipart_mb=multipart_mb,
    )


def _keep(data: Any, where: str) -> dict[str, int]:
    if data is None:
        return dict(DEFAULT_KEEP)
    data = _mapping(data, where)
    _unknown(data, {"daily", "weekly", "monthly", "yearly", "last"}, where)
    keep = {}
    for key, value in data.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _fail(f"{where}.{key}", f"expected a whole number >= 0, got {value!r}", "write e.g. daily: 7")
        keep[key] = value
    return keep


def _container_path(data: dict, key: str, where: str, default: str) -> str:
    value = _str(data, key, where, required=False, default=default)
    if not value.startswith("/"):
        raise _fail(f"{where}.{key}", f"{value!r} is not an absolute path inside the container",
                    f"write e.g. {key}: {default}")
    return value.rstrip("/") or "/"


def _docker(value: Any, where: str) -> DockerTarget:
    """The ``docker:`` block: engine URL, the container by name or by compose labels, paths inside it."""
    import re

    data = _mapping(value, where)
    _unknown(data, {"engine", "container", "compose", "data_dir", "config", "dockerfile", "build_args",
                    "image_repository", "database_through_engine"}, where)
    through = data.get("database_through_engine", False)
    if not isinstance(through, bool):
        raise _fail(f"{where}.database_through_engine", f"expected true or false, got {through!r}",
                    "write database_through_engine: true when the dsn's host is only reachable from the container")
    engine = _str(data, "engine", where, required=False)
    if engine is not None and not engine.startswith(DOCKER_ENGINE_SCHEMES):
        raise _fail(f"{where}.engine", f"{engine!r} is not a Docker engine URL",
                    "write e.g. unix:///var/run/docker.sock, tcp://host:2376 or ssh://user@host (or leave it out "
                    "for $DOCKER_HOST)")
    container = _str(data, "container", where, required=False)
    project = service = None
    if data.get("compose") is not None:
        compose = _mapping(data["compose"], f"{where}.compose")
        _unknown(compose, {"project", "service"}, f"{where}.compose")
        project = _str(compose, "project", f"{where}.compose")
        service = _str(compose, "service", f"{where}.compose")
    if container and project:
        raise _fail(where, "names both a container and a compose service",
                    "keep one: container: NAME, or compose: {project: P, service: S}")
    if not container and not project:
        raise _fail(where, "names no container", "add container: NAME or compose: {project: P, service: S}")
    if container and not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", container):
        raise _fail(f"{where}.container", f"{container!r} is not a container name",
                    "use the name docker ps shows (letters, digits, '_', '.', '-')")
    dockerfile = _str(data, "dockerfile", where, default="Dockerfile")
    if dockerfile.startswith("/") or ".." in dockerfile.split("/"):
        raise _fail(f"{where}.dockerfile", f"{dockerfile!r} is not a path inside the repository",
                    "write it relative to the repository's root, e.g. dockerfile: docker/Dockerfile")
    build_args = _mapping(data.get("build_args") or {}, f"{where}.build_args")
    for key, value in build_args.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise _fail(f"{where}.build_args.{key}", f"expected a string, got {type(value).__name__}",
                        "quote the value (build arguments are strings)")
    repository = _str(data, "image_repository", where, required=False)
    if repository is not None and not re.fullmatch(r"[a-z0-9]+([._/-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*",
                                                   repository):
        raise _fail(f"{where}.image_repository", f"{repository!r} is not an image repository name",
                    "use lower-case letters, digits, '.', '_', '-' and '/', without a tag (e.g. acme/odoo)")
    return DockerTarget(engine=engine, container=container, compose_project=project, compose_service=service,
                        data_dir=_container_path(data, "data_dir", where, "/var/lib/odoo"),
                        config=_container_path(data, "config", where, "/etc/odoo/odoo.conf"),
                        dockerfile=dockerfile, build_args=dict(build_args), image_repository=repository,
                        database_through_engine=through)


def _dsn_dbname(dsn: str) -> str | None:
    """The database name of a DSN (URL or key=value), or None when it names none."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(dsn).get("dbname") or None
    except ProgrammingError:
        return None


def _environment(name: str, data: Any, base: Path, storages: dict[str, Storage],
                 inventory: Path | None = None) -> Environment:
    where = f"environments.{name}"
    data = _mapping(data, where)
    _unknown(data, {"stage", "platform", "database", "filestore", "url", "backup", "odoo_config", "ssh", "logs",
                    "odoo_bin", "stop_command", "start_command", "health", "extra", "addons_link", "odoo_link", "docker", "git",
                    "releases_dir", "upgrade_commands", "site", "labels", "odoosh"}, where)
    stage = _choice(data, "stage", where, STAGES)
    platform = _choice(data, "platform", where, PLATFORMS)
    odoosh = None
    if platform == "odoosh":
        odoosh, data = _odoosh(name, data, where, inventory)
    elif data.get("odoosh") is not None:
        raise _fail(f"{where}.odoosh", f"an odoosh block on platform {platform}", "remove it or use platform: odoosh")
    if platform != "docker" and data.get("docker") is not None:
        raise _fail(f"{where}.docker", f"a docker block on platform {platform}", "remove it or use platform: docker")
    if platform == "docker":
        for key, fix in (("ssh", "name a remote engine in docker.engine (ssh://user@host)"),
                         ("odoo_config", "write docker.config (the path inside the container)"),
                         ("logs", "a docker environment's logs are its container's log stream"),
                         ("stop_command", "odoops stops and starts the container itself"),
                         ("start_command", "odoops stops and starts the container itself")):
            if data.get(key) is not None:
                raise _fail(f"{where}.{key}", "does not apply to platform docker", f"remove it: {fix}")
        if data.get("docker") is None:
            raise _fail(f"{where}.docker", "missing", "add docker: {container: NAME} (or compose: {project: P, "
                        "service: S}) for platform docker")
    db = _mapping(data.get("database"), f"{where}.database") if "database" in data else None
    if db is None:
        raise _fail(f"{where}.database", "missing", "add database: {dsn: postgresql://user@host:5432/dbname}")
    _unknown(db, {"dsn", "password_env", "password_block"}, f"{where}.database")
    dsn = _str(db, "dsn", f"{where}.database")
    if not dsn.startswith(("postgresql://", "postgres://")) and "dbname=" not in dsn:
        raise _fail(f"{where}.database.dsn", "not a PostgreSQL connection string",
                    "write postgresql://user@host:port/dbname")
    if ":" in dsn.split("//", 1)[-1].split("@", 1)[0] and "@" in dsn:
        raise _fail(f"{where}.database.dsn", "contains a password", "remove it and use PGPASSWORD, a .pgpass file, "
                    "password_env or password_block instead")
    database = Database(dsn=dsn, password_env=_str(db, "password_env", f"{where}.database", required=False),
                        password_block=_str(db, "password_block", f"{where}.database", required=False))
    ssh = None
    if data.get("ssh") is not None:
        s = _mapping(data["ssh"], f"{where}.ssh")
        _unknown(s, {"host", "user", "port", "known_hosts", "key_file"}, f"{where}.ssh")
        port = s.get("port", 22)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise _fail(f"{where}.ssh.port", f"expected a port number, got {port!r}", "write e.g. port: 22")
        ssh = SSH(host=_str(s, "host", f"{where}.ssh"), user=_str(s, "user", f"{where}.ssh", required=False), port=port,
                  known_hosts=_resolve(base, _str(s, "known_hosts", f"{where}.ssh", required=False)),
                  key_file=_resolve(base, _str(s, "key_file", f"{where}.ssh", required=False)))
    docker = _docker(data["docker"], f"{where}.docker") if platform == "docker" else None
    if docker is not None:  # the filestore and the config are paths inside the container
        if data.get("filestore") is None and _dsn_dbname(dsn) is None:
            raise _fail(f"{where}.database.dsn", "names no database, so the filestore folder is unknown",
                        "end the dsn with /dbname or write filestore: <data_dir>/filestore/<dbname>")
        filestore = _container_path(data, "filestore", where, f"{docker.data_dir}/filestore/{_dsn_dbname(dsn)}")
    else:
        filestore = _str(data, "filestore", where)
        if ssh is None:
            filestore = str(_resolve(base, filestore))
    b = _mapping(data.get("backup", {}), f"{where}.backup")
    _unknown(b, {"storage", "schedule", "timezone", "keep", "tables_apart_mb"}, f"{where}.backup")
    default_storage = "local" if "local" in storages else (next(iter(storages)) if storages else None)
    storage_name = _str(b, "storage", f"{where}.backup", required=default_storage is None, default=default_storage)
    if storage_name not in storages:
        raise _fail(f"{where}.backup.storage", f"no storage named {storage_name!r}",
                    f"define it under 'storage:' or use one of {', '.join(storages) or '(none defined)'}")
    schedule = _cron(_str(b, "schedule", f"{where}.backup", required=False), f"{where}.backup.schedule")
    timezone = _str(b, "timezone", f"{where}.backup", required=False, default="UTC")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(timezone)
    except Exception:
        raise _fail(f"{where}.backup.timezone", f"unknown time zone {timezone!r}", "use an IANA name like Europe/Brussels") from None
    apart = b.get("tables_apart_mb", 64)
    if not isinstance(apart, int | float) or isinstance(apart, bool) or apart < 0:
        raise _fail(f"{where}.backup.tables_apart_mb", f"expected a number of MB >= 0, got {apart!r}",
                    "write e.g. tables_apart_mb: 64, or 0 to keep the database in one dump")
    logs = data.get("logs") or ()
    if isinstance(logs, str):
        logs = [logs]
    health = _mapping(data.get("health", {}), f"{where}.health")
    if odoosh is not None:  # read from the build, never written down (odoops/platforms/odoosh.py)
        database, filestore = Database(dsn=""), ""
        ssh = _odoosh_ssh(name, odoosh, data["odoosh"], where, base)
    return Environment(
        name=name, stage=stage, platform=platform, database=database, filestore=filestore,
        backup=BackupPolicy(storage=storage_name, schedule=schedule, timezone=timezone,
                            keep=_keep(b.get("keep"), f"{where}.backup.keep"), tables_apart_mb=float(apart)),
        url=_str(data, "url", where, required=False), odoo_config=docker.config if docker else _str(data, "odoo_config", where, required=False),
        ssh=ssh, logs=tuple(logs), odoo_bin=_argv(data.get("odoo_bin"), f"{where}.odoo_bin"),
        stop_command=_argv(data.get("stop_command"), f"{where}.stop_command"),
        start_command=_argv(data.get("start_command"), f"{where}.start_command"),
        health=health, extra=_mapping(data.get("extra", {}), f"{where}.extra"),
        addons_link=str(_resolve(base, _str(data, "addons_link", where, required=False)) or "") or None
        if ssh is None else _str(data, "addons_link", where, required=False),
        odoo_link=str(_resolve(base, _str(data, "odoo_link", where, required=False)) or "") or None,
        docker=docker, git=_git_source(data.get("git"), f"{where}.git", base),
        releases_dir=str(_resolve(base, _str(data, "releases_dir", where, required=False)) or "") or None,
        upgrade_commands=_upgrade_commands(data.get("upgrade_commands"), f"{where}.upgrade_commands"),
        site=_name(data.get("site"), f"{where}.site", "site: eu"),
        labels=_labels(data.get("labels"), f"{where}.labels"),
        odoosh=odoosh,
    )


_ODOOSH_NOT_HERE = {
    "database": "the database and its connection are read from the build's shell (PGDATABASE, PGHOST...)",
    "filestore": "the filestore is ~/data/filestore/<database> in the build",
    "ssh": "write the build's address as odoosh.ssh: <build_id>@<host>",
    "docker": "Odoo.sh runs Odoo itself",
    "stop_command": "Odoo.sh runs Odoo itself",
    "start_command": "Odoo.sh runs Odoo itself",
    "addons_link": "Odoo.sh deploys the branch's code itself (git push)",
    "releases_dir": "Odoo.sh deploys the branch's code itself (git push)",
}


def _odoosh(name: str, data: dict, where: str, inventory: Path | None) -> tuple[OdooSh, dict]:
    """The ``odoosh:`` block, and the environment's data with what the rest of the loader needs of it."""
    for key, fix in _ODOOSH_NOT_HERE.items():
        if data.get(key) is not None:
            raise _fail(f"{where}.{key}", "does not apply to platform odoosh", f"remove it: {fix}")
    block = _mapping(data.get("odoosh"), f"{where}.odoosh") if data.get("odoosh") is not None else None
    if block is None:
        raise _fail(f"{where}.odoosh", "missing", "add odoosh: {project: P, branch: B, remote: GIT_URL, "
                    "ssh: <build_id>@<host>, known_hosts: FILE} for platform odoosh")
    here = f"{where}.odoosh"
    _unknown(block, {"project", "branch", "remote", "ssh", "known_hosts", "key_file", "url"}, here)
    if data.get("url") is not None and block.get("url") is not None:
        raise _fail(f"{where}.url", "given twice (also odoosh.url)", "keep odoosh.url only")
    address = _str(block, "ssh", here)
    parse_build_address(address, f"inventory: {here}.ssh")
    source = "inventory"
    builds = _read_builds(inventory, name)
    if builds is not None:
        address, source = builds
    url = _str(block, "url", here, required=False) or _str(data, "url", where, required=False)
    if url is not None and not url.startswith(("http://", "https://")):
        raise _fail(f"{here}.url", f"{url!r} is not a URL", "write e.g. url: https://acme.odoo.com")
    odoosh = OdooSh(project=_str(block, "project", here), branch=_str(block, "branch", here),
                    remote=_str(block, "remote", here), address=address, url=url, address_source=source)
    # the loader's shared checks need a dsn: a placeholder, replaced by Database(dsn="") in the Environment
    return odoosh, {**data, "url": url, "database": {"dsn": "postgresql:///odoosh"}, "filestore": "data/filestore",
                    "logs": data.get("logs") or ["logs/odoo.log"]}


def _read_builds(inventory: Path | None, name: str) -> tuple[str, str] | None:
    """This environment's address in the builds file beside the inventory, if ``envs set-ssh`` wrote one."""
    import json

    if inventory is None:
        return None
    path = odoosh_builds_file(inventory)
    if not path.exists():
        return None
    try:
        entry = (json.loads(path.read_text()) or {}).get(name)
    except (ValueError, AttributeError, OSError):
        raise ConfigError(f"builds file {path} is not valid JSON: fix it, or delete it and run "
                          "odoops envs set-ssh ENV ADDRESS again") from None
    if entry is None:
        return None
    address = entry.get("ssh") if isinstance(entry, dict) else None
    parse_build_address(address, f"builds file {path}: {name}")
    return address, str(path)


def _odoosh_ssh(name: str, odoosh: OdooSh, block: dict, where: str, base: Path) -> SSH:
    user, host, port = parse_build_address(odoosh.address, f"{where}.odoosh.ssh")
    return SSH(host=host, user=user, port=port,
               known_hosts=_resolve(base, _str(block, "known_hosts", f"{where}.odoosh", required=False)),
               key_file=_resolve(base, _str(block, "key_file", f"{where}.odoosh", required=False)),
               refused_fix=f"the branch may have been rebuilt (Odoo.sh gives each build a new address): copy the "
                           f"current one from Odoo.sh → {odoosh.project} → {odoosh.branch} → the build's Connect menu "
                           f"→ SSH, then run odoops envs set-ssh {name} <build_id>@<host>")


def _cron(schedule: str | None, where: str) -> str | None:
    """A 5-field cron expression that the nightly flow can evaluate (cronsim, the same rules as cron)."""
    if schedule is None:
        return None
    from datetime import datetime

    from cronsim import CronSim, CronSimError

    if len(schedule.split()) != 5:
        raise _fail(where, f"{schedule!r} is not a 5-field cron expression", 'write e.g. "0 2 * * *" for 02:00 every day')
    try:
        CronSim(schedule, datetime(2026, 1, 1))
    except CronSimError as exc:
        raise _fail(where, f"{schedule!r} is not a valid cron expression ({str(exc).lower()})",
                    'write minute hour day-of-month month day-of-week, e.g. "30 1 * * 1-5"') from None
    return schedule


def _name(value: Any, where: str, example: str) -> str | None:
    import re

    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(NAME_RE, value):
        raise _fail(where, f"{value!r} is not a name", f"use lower-case letters, digits, '-' and '_', e.g. {example}")
    return value


def _labels(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list):
        raise _fail(where, "expected a list of labels", "write e.g. labels: [eu, retail]")
    return tuple(dict.fromkeys(_name(v, where, "labels: [eu, retail]") for v in value))


def _fleet(value: Any) -> FleetLimits:
    data = _mapping(value or {}, "fleet")
    _unknown(data, {"max_backups_per_storage", "max_backups_per_db_server"}, "fleet")
    limits = {}
    for key, number in data.items():
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise _fail(f"fleet.{key}", f"expected a whole number >= 1, got {number!r}", f"write e.g. {key}: 2")
        limits[key] = number
    return FleetLimits(**limits)


def _upgrade_commands(value: Any, where: str) -> dict[str, UpgradeCommand]:
    commands = {}
    for name, spec in _mapping(value or {}, where).items():
        here = f"{where}.{name}"
        spec = _mapping(spec, here)
        _unknown(spec, {"kind", "argv", "upgrade_path", "timeout"}, here)
        kind = _choice(spec, "kind", here, UPGRADE_KINDS)
        timeout = spec.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
            raise _fail(f"{here}.timeout", f"expected seconds > 0, got {timeout!r}", "write e.g. timeout: 7200")
        argv = _argv(spec.get("argv"), f"{here}.argv")
        if kind == "script" and not argv:
            raise _fail(f"{here}.argv", "missing", 'write the command as a list, e.g. argv: [/srv/bin/upgrade, "{database}"]')
        upgrade_path = _str(spec, "upgrade_path", here, required=kind == "openupgrade")
        commands[str(name)] = UpgradeCommand(str(name), kind, argv, upgrade_path, float(timeout) if timeout else None)
    return commands


def _git_source(value: Any, where: str, base: Path) -> GitSource | None:
    if value is None:
        return None
    g = _mapping(value, where)
    _unknown(g, {"repository", "subdir"}, where)
    repository = _str(g, "repository", where)
    if "://" not in repository and not repository.startswith(("git@", "/")) and ":" not in repository.split("/")[0]:
        repository = str(_resolve(base, repository))  # a local path, relative to the inventory file
    subdir = (_str(g, "subdir", where, required=False) or "").strip("/")
    if ".." in subdir.split("/"):
        raise _fail(f"{where}.subdir", "leaves the repository", "name a folder inside it, e.g. subdir: addons")
    return GitSource(repository=repository, subdir=subdir)


def inventory_path(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("ODOOPS_INVENTORY") or DEFAULT_INVENTORY)


def load_inventory(path: str | Path | None = None) -> Inventory:
    """Read and validate the inventory; every problem is a ConfigError naming the key and the fix."""
    path = inventory_path(path)
    if not path.exists():
        raise ConfigError(f"inventory {path} not found: create it (see deployments/environments.example.yaml) "
                          "or pass --inventory / set ODOOPS_INVENTORY")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"inventory {path} is not valid YAML{at}: fix the syntax") from None
    data = _mapping(data, "top level")
    _unknown(data, {"storage", "environments", "fleet"}, "top level")
    base = path.resolve().parent
    storages = {name: _storage(name, value, base) for name, value in _mapping(data.get("storage", {}), "storage").items()}
    if not storages:
        storages = {"local": Storage(name="local", type="local", path=base / "backups")}
    envs_data = _mapping(data.get("environments", {}), "environments")
    if not envs_data:
        raise _fail("environments", "no environment defined", "add at least one under 'environments:'")
    environments = {}
    for name, value in envs_data.items():
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise _fail(f"environments.{name}", "invalid name", "use letters, digits, '-' and '_' only")
        environments[name] = _environment(name, value, base, storages, inventory=path)
    return Inventory(path=path, storages=storages, environments=environments, fleet=_fleet(data.get("fleet")))
