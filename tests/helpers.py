"""Small helpers shared by the tests (inventories written the way an operator writes them)."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_inventory(path: Path, environments: dict, storage: dict | None = None) -> Path:
    data = {"storage": storage or {"local": {"type": "local", "path": str(path.parent / "backups")}},
            "environments": environments}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def host_env(cluster, dbname: str, filestore: Path, stage: str = "production", **extra) -> dict:
    env = {"stage": stage, "platform": "host", "database": {"dsn": cluster.dsn(dbname)}, "filestore": str(filestore),
           "backup": {"storage": "local"}}
    env.update(extra)
    return env
