"""A fleet of small Odoo-shaped databases on one PostgreSQL, for the fleet tests and bench/bench_fleet.py.

Each database has what a backup reads (``ir_module_module``, ``ir_attachment`` with one stored file, a
small partner table) and a tiny filestore folder: a copy of the Odoo sample would take seconds each,
and the fleet's behaviour (due, routing, caps, crashes) does not depend on the size.
"""

from __future__ import annotations

import hashlib
import os
import signal
import uuid
from pathlib import Path

TEMPLATE = "odoops_fleet_template"
CONTENT = b"a small attachment of a fleet environment\n"


def make_template(cluster) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE,)).fetchone():
            return
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    sha1 = hashlib.sha1(CONTENT).hexdigest()
    with psycopg.connect(cluster.dsn(TEMPLATE), autocommit=True) as conn:
        conn.execute("CREATE TABLE ir_module_module (id serial PRIMARY KEY, name varchar, latest_version varchar, "
                     "state varchar)")
        conn.execute("INSERT INTO ir_module_module (name, latest_version, state) VALUES "
                     "('base', '17.0.1.3', 'installed'), ('web', '17.0.1.0', 'installed')")
        conn.execute("CREATE TABLE ir_attachment (id serial PRIMARY KEY, name varchar, store_fname varchar, "
                     "checksum varchar, file_size int)")
        conn.execute("INSERT INTO ir_attachment (name, store_fname, checksum, file_size) VALUES (%s, %s, %s, %s)",
                     ("note.txt", f"{sha1[:2]}/{sha1}", sha1, len(CONTENT)))
        conn.execute("CREATE TABLE res_partner AS SELECT g AS id, 'partner ' || g AS name FROM generate_series(1, 200) g")


def make_databases(cluster, names: list[str], folder: Path) -> dict[str, tuple[str, Path]]:
    """One database (from the template) and filestore per name: name -> (dbname, filestore folder)."""
    import psycopg
    from psycopg import sql

    make_template(cluster)
    sha1 = hashlib.sha1(CONTENT).hexdigest()
    out = {}
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        for name in names:
            dbname = f"fleet_{name.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(dbname),
                                                                          sql.Identifier(TEMPLATE)))
            filestore = folder / "filestore" / dbname
            (filestore / sha1[:2]).mkdir(parents=True)
            (filestore / sha1[:2] / sha1).write_bytes(CONTENT)
            out[name] = (dbname, filestore)
    return out


def drop_databases(cluster, dbnames: list[str]) -> None:
    from tests.helpers import drop_database

    for dbname in dbnames:
        drop_database(cluster, dbname)


def descendants(pid: int) -> list[int]:
    """Every process started by ``pid``, however deep, also in other sessions (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_host(proc) -> None:
    """SIGKILL a worker and everything it started, as when its machine dies: its process group, and the
    flow-run processes Prefect starts in sessions of their own."""
    tree = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
