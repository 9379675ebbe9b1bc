"""Big tables dumped apart and reused while unchanged (docs/repository-format.md, "The database in parts").

Real pg_dump/pg_restore on the real Odoo 17 sample, with the threshold lowered so its biggest tables
go apart. What matters: a restore (drill, restore, exported zip) gives exactly the database of the
moment of the backup, whether a part was dumped or reused, and any change to a table is noticed.
"""

from __future__ import annotations

import subprocess
import zipfile

import boto3
import psycopg
import pytest
from psycopg import sql

from odoops.errors import ConfigError
from odoops.inventory import load_inventory
from odoops.runtime import repository_for
from tasks.postgres import ConnInfo, connect, restore_dump, table_row_counts
from tests.helpers import drop_database, host_env, write_inventory

pytestmark = pytest.mark.usefixtures("prefect_harness")

APART_MB = 0.1  # the sample's ir_model_data, ir_ui_view, ..., res_partner, mail_message go apart


def _inventory(tmp_path, pg_cluster, odoo_db, storage: str = "local", storages: dict | None = None):
    dbname, filestore = odoo_db
    env = host_env(pg_cluster, dbname, filestore, backup={"storage": storage, "tables_apart_mb": APART_MB})
    return write_inventory(tmp_path / "environments.yaml", {"production": env}, storage=storages)


def _apart(repo, backup_id: str) -> dict[str, dict]:
    return {t["table"]: t for t in repo.manifest(backup_id)["odoops"]["database"]["apart"]}


def _restored_copy(pg_cluster, repo, backup_id: str, name: str) -> ConnInfo:
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    target = ConnInfo.from_dsn(pg_cluster.dsn(name))
    with repo.database_dumps(backup_id) as dumps:
        restore_dump(target, dumps)
    return target


def test_tables_apart_restore_drill_and_export_like_one_dump(tmp_path, pg_cluster, odoo_db):
    from flows.backup import backup_flow
    from flows.verify import drill_flow, verify_flow

    dbname, _ = odoo_db
    inventory = _inventory(tmp_path, pg_cluster, odoo_db)
    backup_id = backup_flow("production", inventory=str(inventory))["backup_id"]
    repo = repository_for(load_inventory(inventory), "local")
    meta = repo.manifest(backup_id)["odoops"]
    apart = _apart(repo, backup_id)
    assert meta["database"]["layout"] == "parts" and {"res_partner", "mail_message", "ir_ui_view"} <= set(apart)
    assert all(t["fingerprint"] and t["reused_from"] is None and t["part"] in meta["parts"] for t in apart.values())
    main = subprocess.run(["pg_restore", "--list", str(repo.store.local_path(f"backups/{backup_id}/database.dump"))],
                          capture_output=True, text=True, check=True).stdout
    assert "TABLE DATA public res_partner " not in main and "TABLE public res_partner " in main
    assert "TABLE DATA public res_country " in main  # a small table stays in the main dump
    part = subprocess.run(["pg_restore", "--list", str(repo.store.local_path(
        f"backups/{backup_id}/{apart['res_partner']['part']}"))], capture_output=True, text=True, check=True).stdout
    assert "TABLE DATA public res_partner " in part

    assert verify_flow(backup_id, inventory=str(inventory))["ok"]
    assert drill_flow(backup_id, inventory=str(inventory))["ok"]  # row counts of every table, modules, files

    out = tmp_path / "export.zip"
    with open(out, "wb") as f:
        repo.export_odoo_zip(backup_id, f)
    zipfile.ZipFile(out).extract("dump.sql", tmp_path)
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"{dbname}_psql")))
    try:
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", f"{dbname}_psql", "-f", str(tmp_path / "dump.sql")],
                       check=True, capture_output=True)
        with connect(ConnInfo.from_dsn(pg_cluster.dsn(dbname))) as a, \
                connect(ConnInfo.from_dsn(pg_cluster.dsn(f"{dbname}_psql"))) as b:
            assert table_row_counts(a) == table_row_counts(b)
            query = "SELECT last_value FROM res_partner_id_seq"
            assert a.execute(query).fetchone() == b.execute(query).fetchone()
    finally:
        drop_database(pg_cluster, f"{dbname}_psql")


def test_unchanged_tables_are_linked_and_any_change_dumps_again(tmp_path, pg_cluster, odoo_db):
    from flows.backup import backup_flow
    from flows.verify import drill_flow, verify_flow

    dbname, _ = odoo_db
    inventory = _inventory(tmp_path, pg_cluster, odoo_db)
    repo = repository_for(load_inventory(inventory), "local")
    first = backup_flow("production", inventory=str(inventory))["backup_id"]
    source = ConnInfo.from_dsn(pg_cluster.dsn(dbname))
    with connect(source) as conn:
        conn.execute("UPDATE res_partner SET name = 'Renamed after the first backup' WHERE id = 1")
        # no row is rewritten: the old rows read 7 (a "missing value"), a row restored without the column 8
        conn.execute("ALTER TABLE ir_ui_view ADD COLUMN odoops_probe integer DEFAULT 7")
        conn.execute("ALTER TABLE ir_ui_view ALTER COLUMN odoops_probe SET DEFAULT 8")
        # as many rows as before, but not the same ones
        conn.execute("INSERT INTO res_country_state (country_id, name, code) "
                     "SELECT country_id, 'Odoops test state', 'OTS' FROM res_country_state LIMIT 1")
        conn.execute("DELETE FROM res_country_state WHERE id = (SELECT min(id) FROM res_country_state s "
                     "WHERE NOT EXISTS (SELECT 1 FROM res_partner p WHERE p.state_id = s.id))")
        for _ in range(3):  # a sequence moves while its table does not
            conn.execute("SELECT nextval('mail_message_id_seq')")
        sequence = conn.execute("SELECT last_value FROM mail_message_id_seq").fetchone()[0]
    second = backup_flow("production", inventory=str(inventory))
    assert set(second["tables_reused"]) == set(_apart(repo, first)) - {"res_partner", "ir_ui_view", "res_country_state"}
    apart = _apart(repo, second["backup_id"])
    assert apart["mail_message"]["reused_from"] == first and apart["res_partner"]["reused_from"] is None
    linked = repo.store.local_path(f"backups/{second['backup_id']}/{apart['mail_message']['part']}")
    assert linked.stat().st_ino == repo.store.local_path(f"backups/{first}/{apart['mail_message']['part']}").stat().st_ino

    repo.delete_backup(first)  # the second stands on its own
    assert verify_flow(second["backup_id"], inventory=str(inventory))["ok"]
    assert drill_flow(second["backup_id"], inventory=str(inventory))["ok"]
    copy = _restored_copy(pg_cluster, repo, second["backup_id"], f"{dbname}_copy")
    try:
        with connect(copy) as conn, connect(source) as original:
            assert conn.execute("SELECT name FROM res_partner WHERE id = 1").fetchone()[0] == \
                "Renamed after the first backup"
            assert conn.execute("SELECT DISTINCT odoops_probe FROM ir_ui_view").fetchall() == [(7,)]
            assert conn.execute("SELECT last_value FROM mail_message_id_seq").fetchone()[0] == sequence
            states = "SELECT id, name FROM res_country_state ORDER BY id"
            assert conn.execute(states).fetchall() == original.execute(states).fetchall()
            assert table_row_counts(conn) == table_row_counts(original)
    finally:
        drop_database(pg_cluster, f"{dbname}_copy")


def test_parts_on_s3_are_copied_server_side(tmp_path, pg_cluster, odoo_db, s3_bucket):
    from flows.backup import backup_flow
    from flows.verify import drill_flow

    endpoint, bucket = s3_bucket
    inventory = _inventory(tmp_path, pg_cluster, odoo_db, "offsite", {"offsite": {
        "type": "s3", "bucket": bucket, "prefix": "acme/", "endpoint_url": endpoint, "region": "us-east-1"}})
    repo = repository_for(load_inventory(inventory), "offsite")
    first = backup_flow("production", inventory=str(inventory))["backup_id"]
    second = backup_flow("production", inventory=str(inventory))
    part = _apart(repo, first)["res_partner"]["part"]
    assert "res_partner" in second["tables_reused"]
    s3 = boto3.client("s3", endpoint_url=endpoint)
    copied = s3.get_object(Bucket=bucket, Key=f"acme/backups/{second['backup_id']}/{part}")["Body"].read()
    assert copied == s3.get_object(Bucket=bucket, Key=f"acme/backups/{first}/{part}")["Body"].read()
    repo.delete_backup(first)
    assert drill_flow(second["backup_id"], inventory=str(inventory))["ok"]


@pytest.mark.parametrize("value", [-1, "big", True])
def test_tables_apart_mb_must_be_a_number(tmp_path, pg_cluster, odoo_db, value):
    dbname, filestore = odoo_db
    inventory = write_inventory(tmp_path / "environments.yaml", {"production": host_env(
        pg_cluster, dbname, filestore, backup={"storage": "local", "tables_apart_mb": value})})
    with pytest.raises(ConfigError, match=r"environments\.production\.backup\.tables_apart_mb: expected a number"):
        load_inventory(inventory)


def test_a_part_that_failed_verification_is_never_carried_forward(tmp_path, pg_cluster, odoo_db):
    from flows.backup import backup_flow
    from flows.verify import verify_flow
    from odoops.errors import IntegrityError

    inventory = _inventory(tmp_path, pg_cluster, odoo_db)
    repo = repository_for(load_inventory(inventory), "local")
    first = backup_flow("production", inventory=str(inventory))["backup_id"]
    damaged = repo.store.local_path(f"backups/{first}/{_apart(repo, first)['res_partner']['part']}")
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"bit rot!!!")
    with pytest.raises(IntegrityError, match="damaged"):
        verify_flow(first, inventory=str(inventory))
    second = backup_flow("production", inventory=str(inventory))
    assert second["tables_reused"] == []
    assert verify_flow(second["backup_id"], inventory=str(inventory))["ok"]

    # a part cut short (not yet noticed by any verify) is not carried forward either
    cut = repo.store.local_path(f"backups/{second['backup_id']}/{_apart(repo, first)['mail_message']['part']}")
    cut.write_bytes(cut.read_bytes()[:-100])
    third = backup_flow("production", inventory=str(inventory))
    assert "mail_message" not in third["tables_reused"] and "res_partner" in third["tables_reused"]
    assert verify_flow(third["backup_id"], inventory=str(inventory))["ok"]


def test_a_backup_of_a_newer_format_is_refused_not_half_restored(tmp_path, pg_cluster, odoo_db):
    import json

    from flows.backup import backup_flow
    from flows.verify import drill_flow

    inventory = _inventory(tmp_path, pg_cluster, odoo_db)
    repo = repository_for(load_inventory(inventory), "local")
    backup_id = backup_flow("production", inventory=str(inventory))["backup_id"]
    assert repo.manifest(backup_id)["odoops"]["format"] == 2
    path = repo.store.local_path(f"backups/{backup_id}/manifest.json")
    manifest = json.loads(path.read_text())
    manifest["odoops"]["format"] = 3
    path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"written by a newer odoops \(backup format 3, this version reads up to 2\)"):
        drill_flow(backup_id, inventory=str(inventory))
