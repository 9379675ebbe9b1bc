"""Small helpers shared by the tests (inventories written the way an operator writes them)."""

from __future__ import annotations

import os
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


def drop_database_and_copies(cluster, dbname: str) -> None:
    """``dbname`` and every database odoops made beside it (snapshots, kept states, scratch copies)."""
    import psycopg

    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{dbname}%",))]
    for name in names:
        drop_database(cluster, name)


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


def grow(pg_cluster, dbname: str, filestore: Path) -> None:
    """Make the dump and the filestore copy last long enough to be killed in the middle."""
    import psycopg

    with psycopg.connect(pg_cluster.dsn(dbname), autocommit=True) as conn:
        conn.execute("CREATE TABLE x_bulk AS SELECT g AS id, md5(g::text) || repeat(md5(random()::text), 8) AS t "
                     "FROM generate_series(1, 400000) g")
    for i in range(150):
        (filestore / "yy").mkdir(exist_ok=True)
        (filestore / "yy" / f"{i:040d}").write_bytes(os.urandom(256 * 1024))


def parts_in_tmp(root: Path, suffix: str):
    """A half-written file is in the repository's tmp/ (it may be renamed away while we look)."""

    def _written(path: Path) -> bool:
        try:
            return path.suffix == suffix and path.stat().st_size > 0
        except FileNotFoundError:  # published (renamed) between listing and stat
            return False

    return lambda: (root / "tmp").exists() and any(_written(p) for p in (root / "tmp").glob("*"))


def kill_group(proc) -> None:
    """SIGKILL a process and everything it started (an OOM kill, a reboot, a kill -9 of a stuck job)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def table_checksums(cluster, dbname: str) -> dict[str, str]:
    """md5 of every table's rows, in a stable order."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(cluster.dsn(dbname)) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(relname) FROM pg_stat_user_tables ORDER BY 1")]
        out = {}
        for table in tables:
            query = sql.SQL("SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {} t").format(
                sql.SQL(table))
            out[table] = conn.execute(query).fetchone()[0]
        return out


def file_sha1s(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def kill_when(proc, condition, output, timeout: float = 120) -> None:
    """SIGKILL the run's whole process group once ``condition()`` holds (and in any case, so no test leaves
    it running); nobody frees its environment afterwards: the next run must find the dead holder itself.
    ``output()`` is what the run printed, for the failure message when it ends before the fault point."""
    import time

    deadline = time.monotonic() + timeout
    try:
        while not condition():
            assert proc.poll() is None, f"the run ended before the fault point: {output()[-2000:]}"
            assert time.monotonic() < deadline, f"fault point never reached: {output()[-2000:]}"
            time.sleep(0.002)
    finally:
        kill_group(proc)


def paused_run(name_prefix: str, timeout: float = 120):
    """The flow run waiting for an approval (Prefect's API, as the UI sees it)."""
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=["PAUSED"]))))
            runs = [r for r in runs if r.name.startswith(name_prefix)]
            if runs:
                return runs[0]
            time.sleep(0.3)
    raise AssertionError(f"no run {name_prefix}… paused for an approval within {timeout} s")
