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

    @property
    def is_production(self) -> bool:
        return self.stage == "production"


@dataclass(frozen=True)
class Inventory:
    path: Path
    storages: dict[str, Storage]
    environments: dict[str, Environment]

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


def _environment(name: str, data: Any, base: Path, storages: dict[str, Storage]) -> Environment:
    where = f"environments.{name}"
    data = _mapping(data, where)
    _unknown(data, {"stage", "platform", "database", "filestore", "url", "backup", "odoo_config", "ssh", "logs",
                    "odoo_bin", "stop_command", "start_command", "health", "extra", "addons_link"}, where)
    stage = _choice(data, "stage", where, STAGES)
    platform = _choice(data, "platform", where, PLATFORMS)
    if platform != "host":
        raise _fail(f"{where}.platform", f"platform {platform!r} is not implemented yet",
                    "use platform: host (docker and odoosh arrive in later releases)")
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
    schedule = _str(b, "schedule", f"{where}.backup", required=False)
    if schedule is not None and len(schedule.split()) != 5:
        raise _fail(f"{where}.backup.schedule", f"{schedule!r} is not a 5-field cron expression",
                    'write e.g. "0 2 * * *" for 02:00 every day')
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
    return Environment(
        name=name, stage=stage, platform=platform, database=database, filestore=filestore,
        backup=BackupPolicy(storage=storage_name, schedule=schedule, timezone=timezone,
                            keep=_keep(b.get("keep"), f"{where}.backup.keep"), tables_apart_mb=float(apart)),
        url=_str(data, "url", where, required=False), odoo_config=_str(data, "odoo_config", where, required=False),
        ssh=ssh, logs=tuple(logs), odoo_bin=_argv(data.get("odoo_bin"), f"{where}.odoo_bin"),
        stop_command=_argv(data.get("stop_command"), f"{where}.stop_command"),
        start_command=_argv(data.get("start_command"), f"{where}.start_command"),
        health=health, extra=_mapping(data.get("extra", {}), f"{where}.extra"),
        addons_link=str(_resolve(base, _str(data, "addons_link", where, required=False)) or "") or None
        if ssh is None else _str(data, "addons_link", where, required=False),
    )


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
    _unknown(data, {"storage", "environments"}, "top level")
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
        environments[name] = _environment(name, value, base, storages)
    return Inventory(path=path, storages=storages, environments=environments)
