"""Small helpers shared by the tests (inventories written the way an operator writes them)."""

from __future__ import annotations

import shutil
import uuid
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


def copy_sample(cluster, sample_template: tuple[str, Path], folder: Path) -> tuple[str, Path]:
    """A fresh copy of the sample database and its filestore under ``folder``: (dbname, filestore folder)."""
    import psycopg
    from psycopg import sql

    template, template_fs = sample_template
    dbname = f"acme_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(dbname), sql.Identifier(template)))
    filestore = folder / "data" / "filestore" / dbname
    shutil.copytree(template_fs, filestore)
    return dbname, filestore


def drop_database(cluster, dbname: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def reload_pg_conf(cluster, timeout: float = 30) -> None:
    """pg_reload_conf() only signals the postmaster: wait until new sessions run with the new files."""
    import time

    import psycopg

    def loaded_at():
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            return conn.execute("SELECT pg_conf_load_time()").fetchone()[0]

    before = loaded_at()
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_reload_conf()").fetchone()[0]
    deadline = time.monotonic() + timeout
    while loaded_at() <= before:
        assert time.monotonic() < deadline, "PostgreSQL did not reload its configuration"
        time.sleep(0.05)


def free_environment_slot(environment: str) -> None:
    """What an operator does after killing a run (or waits 60 s for its lease to lapse): free its slot."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(f"odoops-env-{environment}")
