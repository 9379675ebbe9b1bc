"""Restore and neutralization proven against a real Odoo 17.0 server (tests/services_odoo.py), real PostgreSQL
and the real Prefect engine: what odoops restores must be a database Odoo itself runs, and odoops' own
neutralization must leave exactly the state Odoo's ``odoo-bin neutralize`` leaves."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from odoops.audit import read_audit
from odoops.inventory import load_inventory
from odoops.runtime import repository_for
from odoops.sandbox import SAMPLE_ZIP
from tasks.odoo import DUMMY_MAIL_SERVER, neutralize, verify_neutralized
from tests.helpers import copy_sample, drop_database, host_env, write_inventory
from tests.services_odoo import OdooInstall

ADMIN = ("admin", "admin")  # the fixture's administrator (uid 2), as Odoo's demo data creates it


def params(pg_cluster, dbname: str) -> dict[str, str]:
    with psycopg.connect(pg_cluster.dsn(dbname)) as conn:
        return dict(conn.execute("SELECT key, value FROM ir_config_parameter").fetchall())


@pytest.fixture
def staging(tmp_path, pg_cluster):
    """A staging environment whose database does not exist yet; its data_dir is ``tmp_path/data``.

    Yields (dbname, data_dir); drops the database and the restore's snapshots afterwards."""
    dbname = f"acme_{uuid.uuid4().hex[:8]}_staging"
    data_dir = tmp_path / "data"
    yield dbname, data_dir
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{dbname}%",)):
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def staging_inventory(path: Path, pg_cluster, dbname: str, data_dir: Path, **extra) -> Path:
    return write_inventory(path, {"staging": host_env(pg_cluster, dbname, data_dir / "filestore" / dbname,
                                                      stage="staging", **extra)})


@pytest.mark.usefixtures("prefect_harness")
def test_a_restored_zip_is_a_neutralized_copy_that_real_odoo_serves(tmp_path, pg_cluster, sample_template, staging,
                                                                     odoo_server):
    """The restore flow's result, opened by Odoo 17 itself: health, version, login, filestore, flags."""
    from flows.restore import restore_flow

    dbname, data_dir = staging
    inv = staging_inventory(tmp_path / "inv.yaml", pg_cluster, dbname, data_dir)
    result = restore_flow(str(SAMPLE_ZIP), "staging", inventory=str(inv))
    assert result["neutralized"] and not result["anonymized"]

    server = odoo_server(dbname, data_dir=data_dir)
    assert server.health() == {"status": "pass"}
    version = server.version()
    assert version["server_serie"] == "17.0" and version["server_version_info"][:2] == [17, 0]
    uid = server.authenticate(*ADMIN)
    assert isinstance(uid, int) and uid > 0
    assert server.authenticate(ADMIN[0], "not-the-password") is False

    # Odoo reads each attachment's bytes from the restored filestore (<data_dir>/filestore/<db>/<store_fname>)
    attachments = server.execute(uid, ADMIN[1], "ir.attachment", "search_read",
                                 [("store_fname", "!=", False), ("file_size", ">", 0)],
                                 fields=["datas", "checksum", "store_fname", "file_size"])
    assert len(attachments) >= 10
    for att in attachments:
        assert (data_dir / "filestore" / dbname / att["store_fname"]).is_file()
        content = base64.b64decode(att["datas"])
        assert len(content) == att["file_size"] and hashlib.sha1(content).hexdigest() == att["checksum"]

    get_param = lambda key: server.execute(uid, ADMIN[1], "ir.config_parameter", "get_param", key)  # noqa: E731
    assert get_param("database.is_neutralized") == "true"
    source = params(pg_cluster, sample_template[0])
    assert "database.is_neutralized" not in source
    assert get_param("database.uuid") not in (False, source["database.uuid"])
    assert server.stop() == 0  # a clean shutdown on SIGTERM, as a service manager expects
    assert "ERROR" not in server.log.read_text()


def _production_like(conn: psycopg.Connection) -> None:
    """What a real production database has and the fixture lacks, for every table Odoo's scripts touch:
    test_neutralize's seed, plus what only Odoo 17's mail neutralization handles."""
    from tests.test_neutralize import _production_like as live_servers_tokens_and_keys

    live_servers_tokens_and_keys(conn)
    conn.execute("INSERT INTO ir_config_parameter (key, value) VALUES ('mail.sfu_server_key', 'sfu-secret')")
    conn.execute("INSERT INTO mail_partner_device (partner_id, endpoint, keys) "
                 "VALUES (3, 'https://push.example/device-1', '{\"p256dh\": \"k\", \"auth\": \"a\"}')")
    conn.execute("INSERT INTO mail_notification_web_push (user_device, payload) "
                 "SELECT id, '{\"title\": \"hi\"}' FROM mail_partner_device")


def tables_odoo_neutralizes(conn: psycopg.Connection, install: OdooInstall) -> dict[str, list[str]]:
    """Table -> modules whose data/neutralize.sql (in the installed Odoo tree) writes to it, for the modules
    installed in the database: what ``odoo-bin neutralize`` runs, read from Odoo's own files."""
    modules = [r[0] for r in conn.execute(
        "SELECT name FROM ir_module_module WHERE state IN ('installed', 'to upgrade', 'to remove')")]
    writes = re.compile(r"\b(?:UPDATE|INSERT\s+INTO|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?)\s+(?!SET\b)([a-z_][a-z0-9_]*)",
                        re.I)
    tables: dict[str, list[str]] = {}
    for module in modules:
        for folder in install.addons_path.split(","):
            script = Path(folder) / module / "data" / "neutralize.sql"
            if script.is_file():
                text = re.sub(r"--[^\n]*", "", script.read_text())
                for table in writes.findall(text):
                    tables.setdefault(table.lower(), []).append(module)
    return tables


def table_rows(conn: psycopg.Connection, table: str) -> list[tuple]:
    return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(table))).fetchall()


def test_b_builtin_neutralization_leaves_what_odoo_bin_neutralize_leaves(tmp_path, pg_cluster, sample_template,
                                                                         odoo_install, odoo_config_file):
    """Two copies of one production-like database: odoops' SQL on one, Odoo's own command on the other."""
    prod, _ = copy_sample(pg_cluster, sample_template, tmp_path / "prod")
    ours, theirs = f"{prod}_odoops", f"{prod}_odoo"
    try:
        with psycopg.connect(pg_cluster.dsn(prod), autocommit=True) as conn:
            _production_like(conn)
            for name in (ours, theirs):
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                             sql.Identifier(prod)))
            touched = tables_odoo_neutralizes(conn, odoo_install)
            before = {t: table_rows(conn, t) for t in touched}
        # what this Odoo 17.0's base, web, mail and iap scripts touch (a newer tree may add tables: compared too)
        assert set(touched) >= {"ir_mail_server", "ir_cron", "ir_config_parameter", "ir_ui_view", "mail_template",
                                "fetchmail_server", "iap_account", "mail_notification_web_push",
                                "mail_partner_device"}

        with psycopg.connect(pg_cluster.dsn(ours)) as conn:
            report = neutralize(conn)
        assert {"base", "web", "mail", "iap"} <= set(report.modules)
        done = odoo_install.run("neutralize", "-c", str(odoo_config_file(tmp_path / "data")), "-d", theirs)
        assert done.returncode == 0, done.stderr[-2000:]

        with psycopg.connect(pg_cluster.dsn(ours)) as a, psycopg.connect(pg_cluster.dsn(theirs)) as b:
            for table in sorted(touched):
                after = table_rows(b, table)
                assert table_rows(a, table) == after, f"{table} (touched by {', '.join(touched[table])}) differs"
                assert after != before[table], f"{table}: the seed left nothing for Odoo to change"
            assert verify_neutralized(a) == [] and verify_neutralized(b) == []
            active = b.execute("SELECT d.module || '.' || d.name FROM ir_cron c JOIN ir_model_data d "
                               "ON d.model = 'ir.cron' AND d.res_id = c.id WHERE c.active").fetchall()
            assert active == [("base.autovacuum_job",)]
            servers = b.execute("SELECT name, smtp_host, smtp_port FROM ir_mail_server WHERE active").fetchall()
            assert servers == [(DUMMY_MAIL_SERVER, "invalid", 1025)]
            flags = b.execute("SELECT value FROM ir_config_parameter WHERE key = 'database.is_neutralized'")
            assert flags.fetchall() == [("true",)]
    finally:
        for name in (prod, ours, theirs):
            drop_database(pg_cluster, name)


@pytest.mark.usefixtures("prefect_harness")
def test_c_with_odoo_bin_the_restore_runs_odoos_own_neutralize(tmp_path, pg_cluster, staging, odoo_install,
                                                               odoo_config_file, odoo_server, monkeypatch):
    """An environment naming its odoo-bin is neutralized by Odoo itself, on the scratch copy, before the swap;
    the staging Odoo keeps running and the restore's own post-checks log in to it."""
    from flows.restore import restore_flow

    dbname, data_dir = staging
    server = odoo_server(dbname, data_dir=data_dir)  # staging's Odoo, up before its database exists
    cli_log = tmp_path / "odoo-cli.log"
    config = odoo_config_file(data_dir, logfile=cli_log)
    # written as the inventory example recommends; odoops puts the sub-command first (odoo-bin neutralize -c …)
    odoo_bin = [str(odoo_install.odoo_bin), "-c", str(config)]
    monkeypatch.setenv("STAGING_LOGIN_PASSWORD", ADMIN[1])
    inv = staging_inventory(tmp_path / "inv.yaml", pg_cluster, dbname, data_dir, odoo_bin=odoo_bin, url=server.url,
                            health={"login": ADMIN[0], "login_password_env": "STAGING_LOGIN_PASSWORD"})
    result = restore_flow(str(SAMPLE_ZIP), "staging", inventory=str(inv))
    assert result["neutralized"]

    [record] = read_audit(repository_for(load_inventory(inv), "local").store, "staging")
    assert record["details"]["neutralized_by"] == "odoo-bin neutralize"
    log = cli_log.read_text()
    assert f"Starting {dbname}__odoops_restore database neutralization" in log  # the scratch copy, pre-swap
    assert "Neutralization finished" in log
    checks = record["details"]["post_checks"]
    assert checks["web/health"] == "HTTP 200 pass" and checks["xmlrpc login"].startswith("ok: admin logged in")
    assert checks["database.is_neutralized"] is True
    with psycopg.connect(pg_cluster.dsn(dbname)) as conn:
        assert verify_neutralized(conn) == []
        assert conn.execute("SELECT count(*) FROM ir_cron WHERE active").fetchone()[0] == 1
        assert conn.execute("SELECT value FROM ir_config_parameter WHERE key = 'web.base.url'").fetchone()[0] \
            == server.url
