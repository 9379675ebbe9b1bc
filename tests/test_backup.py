"""The backup runbook against a real PostgreSQL holding the real Odoo 17 sample, real pg_dump/pg_restore."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import zipfile
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from odoops.errors import BackupNotFound, ConfigError, ConnectionFailed, OdoopsError
from odoops.inventory import load_inventory
from odoops.runtime import repository_for
from tests.helpers import host_env, reload_pg_conf, write_inventory

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def inventory(tmp_path, pg_cluster, odoo_db) -> Path:
    dbname, filestore = odoo_db
    return write_inventory(tmp_path / "environments.yaml", {"production": host_env(pg_cluster, dbname, filestore)})


def repo_of(inventory_path: Path):
    inv = load_inventory(inventory_path)
    return repository_for(inv, "local")


def test_backup_is_odoo_faithful_and_listed(inventory, odoo_db):
    from flows.backup import backup_flow

    dbname, filestore = odoo_db
    result = backup_flow("production", inventory=str(inventory))
    repo = repo_of(inventory)
    [info] = repo.list_backups("production")
    assert info.id == result["backup_id"] and info.kind == "manual" and info.verification == "unverified"
    manifest = repo.manifest(info.id)
    sample = json.loads(zipfile.ZipFile("sample/odoo17/acme_demo_odoo17.zip").read("manifest.json"))
    for key in ("odoo_dump", "version", "version_info", "major_version", "pg_version", "modules"):
        assert manifest[key] == sample[key], key
    assert manifest["db_name"] == dbname
    meta = manifest["odoops"]
    assert meta["environment"] == "production" and meta["kind"] == "manual"
    files = sorted(p.relative_to(filestore).as_posix() for p in filestore.rglob("*") if p.is_file())
    index = repo.filestore_index(info.id)
    assert [e.relpath for e in index] == files and len(files) == 120  # 90 files + 30 checklist markers
    for entry in index:
        assert hashlib.sha256((filestore / entry.relpath).read_bytes()).hexdigest() == entry.sha256
    dump = repo.store.local_path(f"backups/{info.id}/database.dump")
    assert hashlib.sha256(dump.read_bytes()).hexdigest() == meta["parts"]["database.dump"]["sha256"]
    assert meta["database"]["row_counts"]["res_partner"] == 548
    assert meta["missing_files"] == []
    listing = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, check=True, text=True)
    assert "TABLE DATA public res_partner" in listing.stdout


def test_second_backup_stores_no_file_twice(inventory, odoo_db):
    from flows.backup import backup_flow

    _, filestore = odoo_db
    backup_flow("production", inventory=str(inventory))
    new = filestore / "ff" / ("ff" * 20)
    new.parent.mkdir(exist_ok=True)
    new.write_bytes(b"a new attachment")
    second = backup_flow("production", inventory=str(inventory), kind="pre-deploy")
    repo = repo_of(inventory)
    manifest = repo.manifest(second["backup_id"])
    assert manifest["odoops"]["filestore"]["new_objects"] == 1
    assert manifest["odoops"]["filestore"]["new_bytes"] == len(b"a new attachment")
    assert manifest["odoops"]["kind"] == "pre-deploy"
    # two backups made within one second still have an order: created_at carries microseconds
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", manifest["odoops"]["created_at"])
    assert [b.id for b in repo.list_backups("production")][-1] == second["backup_id"]
    assert len(repo.known_objects()) == 90 + 1 + 1  # distinct contents: 90 files, the empty marker, the new file


def test_missing_attachment_file_is_reported_not_skipped(inventory, odoo_db):
    from flows.backup import backup_flow

    _, filestore = odoo_db
    victim = next(p for p in sorted(filestore.rglob("*")) if p.is_file() and "checklist" not in p.parts)
    victim.unlink()
    result = backup_flow("production", inventory=str(inventory))
    assert result["missing_files"] == [victim.relative_to(filestore).as_posix()]
    assert repo_of(inventory).manifest(result["backup_id"])["odoops"]["missing_files"] == result["missing_files"]


def test_verify_and_drill_a_good_backup_then_detect_damage(inventory):
    from flows.backup import backup_flow
    from flows.verify import drill_flow, verify_flow
    from odoops.errors import IntegrityError

    backup_id = backup_flow("production", inventory=str(inventory))["backup_id"]
    assert verify_flow(backup_id, inventory=str(inventory))["ok"]
    drilled = drill_flow(backup_id, inventory=str(inventory))
    assert drilled["ok"] and drilled["files"] == 120 and drilled["attachments_checked"] == 90
    repo = repo_of(inventory)
    assert repo.list_backups()[0].verification == "drilled"
    with psycopg.connect(load_inventory(inventory).environment("production").database.dsn) as conn:
        scratch = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'odoops_scratch_%'").fetchone()[0]
    assert scratch == 0
    entry = repo.filestore_index(backup_id)[5]
    obj = repo.store.local_path(f"objects/{entry.sha256[:2]}/{entry.sha256}")
    obj.write_bytes(b"bit rot")
    with pytest.raises(IntegrityError, match="damaged"):
        verify_flow(backup_id, inventory=str(inventory))
    assert repo.list_backups()[0].verification == "failed"


def test_export_is_an_archive_odoo_restores(inventory, pg_cluster, odoo_db, tmp_path):
    """Odoo's own restore procedure: psql of dump.sql into a new database, filestore copied."""
    from flows.backup import backup_flow

    dbname, filestore = odoo_db
    backup_id = backup_flow("production", inventory=str(inventory))["backup_id"]
    out = tmp_path / "export.zip"
    with open(out, "wb") as f:
        repo_of(inventory).export_odoo_zip(backup_id, f)
    zf = zipfile.ZipFile(out)
    names = zf.namelist()
    assert names[:2] == ["dump.sql", "manifest.json"]
    assert sorted(n[len("filestore/"):] for n in names[2:]) == sorted(
        p.relative_to(filestore).as_posix() for p in filestore.rglob("*") if p.is_file())
    assert set(json.loads(zf.read("manifest.json"))) == {"odoo_dump", "db_name", "version", "version_info",
                                                          "major_version", "pg_version", "modules"}
    restored = f"{dbname}_restored"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(restored)))
    zf.extract("dump.sql", tmp_path)
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", restored, "-f", str(tmp_path / "dump.sql")],
                   check=True, capture_output=True)
    from tasks.postgres import ConnInfo, connect, table_row_counts

    with connect(ConnInfo.from_dsn(pg_cluster.dsn(dbname))) as a, connect(ConnInfo.from_dsn(pg_cluster.dsn(restored))) as b:
        assert table_row_counts(a) == table_row_counts(b)
    for name in names[2:]:
        assert zf.read(name) == (filestore / name[len("filestore/"):]).read_bytes()


def test_database_name_with_a_quote_and_a_space(tmp_path, pg_cluster, sample_template):
    from flows.backup import backup_flow
    from flows.verify import drill_flow

    template, template_fs = sample_template
    dbname = "acme's demo"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(dbname), sql.Identifier(template)))
    inv = write_inventory(tmp_path / "inv.yaml", {"production": host_env(pg_cluster, dbname, template_fs)})
    backup_id = backup_flow("production", inventory=str(inv))["backup_id"]
    assert repo_of(inv).manifest(backup_id)["db_name"] == dbname
    assert drill_flow(backup_id, inventory=str(inv))["ok"]


def test_unreachable_database_is_one_clear_line_and_lists_nothing(tmp_path, odoo_db):
    from flows.backup import backup_flow
    from odoops.sandbox import free_port

    _, filestore = odoo_db
    env = {"stage": "production", "platform": "host", "filestore": str(filestore),
           "database": {"dsn": f"postgresql://postgres@127.0.0.1:{free_port()}/acme"}}
    inv = write_inventory(tmp_path / "inv.yaml", {"production": env})
    with pytest.raises(ConnectionFailed) as info:
        backup_flow("production", inventory=str(inv))
    assert "unreachable" in str(info.value) and "\n" not in str(info.value)
    assert repo_of(inv).list_backups() == []


def test_wrong_password_never_shows_the_password(tmp_path, pg_cluster, odoo_db, monkeypatch):
    from flows.backup import backup_flow
    from odoops.errors import AuthenticationFailed

    dbname, filestore = odoo_db
    hba = pg_cluster.root / "pg" / "data" / "pg_hba.conf"
    original = hba.read_text()
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS guarded")
        conn.execute("CREATE ROLE guarded LOGIN PASSWORD 'right-password' SUPERUSER")
    hba.write_text("host all guarded 127.0.0.1/32 scram-sha-256\n" + original)
    reload_pg_conf(pg_cluster)
    try:
        monkeypatch.setenv("ACME_PG_PASSWORD", "Wrong-Secret-42")
        env = host_env(pg_cluster, dbname, filestore)
        env["database"] = {"dsn": env["database"]["dsn"].replace("postgres@", "guarded@"),
                           "password_env": "ACME_PG_PASSWORD"}
        inv = write_inventory(tmp_path / "inv.yaml", {"production": env})
        with pytest.raises(AuthenticationFailed) as info:
            backup_flow("production", inventory=str(inv))
        assert "Wrong-Secret-42" not in str(info.value)
        records = [r for r in (tmp_path / "backups" / "audit").rglob("*.json")]
        assert records and all("Wrong-Secret-42" not in r.read_text() for r in records)
        monkeypatch.setenv("ACME_PG_PASSWORD", "right-password")
        assert backup_flow("production", inventory=str(inv))["backup_id"]
    finally:
        hba.write_text(original)
        reload_pg_conf(pg_cluster)


def test_missing_filestore_folder(tmp_path, pg_cluster, odoo_db):
    from flows.backup import backup_flow

    dbname, _ = odoo_db
    inv = write_inventory(tmp_path / "inv.yaml",
                          {"production": host_env(pg_cluster, dbname, tmp_path / "no" / "such" / "folder")})
    with pytest.raises(ConfigError, match="filestore folder .* does not exist"):
        backup_flow("production", inventory=str(inv))
    assert repo_of(inv).list_backups() == [] and repo_of(inv).incomplete_backups() != []


def test_unknown_environment_and_backup(inventory):
    from flows.backup import backup_flow
    from flows.verify import verify_flow

    with pytest.raises(OdoopsError, match="unknown environment 'prod'"):
        backup_flow("prod", inventory=str(inventory))
    with pytest.raises(BackupNotFound, match="no complete backup"):
        verify_flow("production-20200101T000000Z-0000", inventory=str(inventory))


def test_config_file_is_kept_with_secrets_masked(tmp_path, pg_cluster, odoo_db):
    from flows.backup import backup_flow

    dbname, filestore = odoo_db
    conf = tmp_path / "odoo.conf"
    conf.write_text("[options]\nadmin_passwd = $pbkdf2-sha512$25000$supersecret\ndb_password = hunter2\n"
                    "workers = 4\nlimit_memory_hard = 2684354560\nsmtp_password = False\n")
    inv = write_inventory(tmp_path / "inv.yaml",
                          {"production": host_env(pg_cluster, dbname, filestore, odoo_config=str(conf))})
    backup_id = backup_flow("production", inventory=str(inv))["backup_id"]
    stored = repo_of(inv).store.get_bytes(f"backups/{backup_id}/odoo.conf").decode()
    assert "supersecret" not in stored and "hunter2" not in stored
    assert "workers = 4" in stored and "admin_passwd = ***" in stored and "smtp_password = False" in stored


def test_runs_are_named_after_what_they_do(inventory):
    """The UI's run list says which runbook touched which environment, not `imaginary-okapi`, and filters
    on tags by runbook, environment and stage."""
    from prefect.client.orchestration import get_client

    from flows.backup import backup_flow
    from flows.verify import verify_flow

    state = backup_flow("production", inventory=str(inventory), return_state=True)
    backup_id = state.result()["backup_id"]
    verified = verify_flow(backup_id, inventory=str(inventory), return_state=True)
    with get_client(sync_client=True) as client:
        backup_run = client.read_flow_run(state.state_details.flow_run_id)
        verify_run = client.read_flow_run(verified.state_details.flow_run_id)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d"
    assert re.fullmatch(rf"backup/production/{stamp}", backup_run.name), backup_run.name
    # and tagged, so the UI's run list filters by runbook, environment and stage
    assert {"runbook:backup", "environment:production", "stage:production"} <= set(backup_run.tags), backup_run.tags
    assert re.fullmatch(rf"verify/{re.escape(backup_id)}/{stamp}", verify_run.name), verify_run.name
