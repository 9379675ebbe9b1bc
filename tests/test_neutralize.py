"""Neutralization and copy identity on a real copy of the Odoo 17 fixture database."""

from __future__ import annotations

import psycopg
import pytest

from tasks.odoo import DUMMY_MAIL_SERVER, neutralize, refresh_copy_identity, verify_neutralized


@pytest.fixture
def conn(pg_cluster, odoo_db):
    dbname, _ = odoo_db
    with psycopg.connect(pg_cluster.dsn(dbname), autocommit=True) as c:
        yield c


def _param(conn, key):
    row = conn.execute("SELECT value FROM ir_config_parameter WHERE key = %s", (key,)).fetchone()
    return row[0] if row else None


def _production_like(conn) -> None:
    """What a real production database has and the fixture lacks: live servers, tokens, keys."""
    conn.execute("INSERT INTO ir_mail_server (name, smtp_host, smtp_port, smtp_encryption, smtp_authentication, "
                 "active) VALUES ('prod smtp', 'smtp.acme.example', 587, 'starttls', 'login', true)")
    conn.execute("INSERT INTO fetchmail_server (name, server_type, active, state) "
                 "VALUES ('prod imap', 'imap', true, 'done')")
    conn.execute("INSERT INTO iap_account (service_name, account_token) VALUES ('sms', 'tok-123'), "
                 "('partner_autocomplete', 'tok-456+old')")
    conn.execute("INSERT INTO ir_config_parameter (key, value) VALUES "
                 "('mail.web_push_vapid_private_key', 'priv'), ('mail.web_push_vapid_public_key', 'pub')")
    conn.execute("UPDATE mail_template SET mail_server_id = (SELECT id FROM ir_mail_server WHERE name = 'prod smtp')")


def test_neutralize_like_odoo(conn):
    _production_like(conn)
    before = verify_neutralized(conn)
    assert any("is_neutralized" in p for p in before)
    assert any("scheduled action" in p for p in before)
    assert any("other than the dummy" in p for p in before)

    report = neutralize(conn)

    assert {"base", "web", "mail", "iap"} <= set(report.modules)
    assert "payment" not in report.modules  # not installed in the fixture: nothing attempted
    autovacuum = conn.execute("SELECT res_id FROM ir_model_data WHERE module = 'base' AND name = 'autovacuum_job' "
                              "AND model = 'ir.cron'").fetchone()[0]
    active = [r[0] for r in conn.execute("SELECT id FROM ir_cron WHERE active")]
    assert active == [autovacuum]
    servers = conn.execute("SELECT name, active, smtp_host, smtp_port FROM ir_mail_server ORDER BY id").fetchall()
    assert ("prod smtp", False, "smtp.acme.example", 587) in servers
    assert [s for s in servers if s[1]] == [(DUMMY_MAIL_SERVER, True, "invalid", 1025)]
    assert _param(conn, "database.is_neutralized") == "true"
    tokens = sorted(r[0] for r in conn.execute("SELECT account_token FROM iap_account"))
    assert tokens == ["tok-123+disabled", "tok-456+disabled"]
    assert _param(conn, "mail.web_push_vapid_private_key") is None
    assert _param(conn, "mail.web_push_vapid_public_key") is None
    assert conn.execute("SELECT bool_and(NOT active) FROM fetchmail_server").fetchone()[0] is True
    assert conn.execute("SELECT count(*) FROM mail_template WHERE mail_server_id IS NOT NULL").fetchone()[0] == 0
    assert conn.execute("SELECT active FROM ir_ui_view WHERE key = 'web.neutralize_banner'").fetchone()[0] is True
    assert verify_neutralized(conn) == []

    # idempotent: a second run changes nothing (Odoo's own script would add a second dummy server)
    again = neutralize(conn)
    assert again.rows_changed == 0
    assert conn.execute("SELECT count(*) FROM ir_mail_server WHERE name = %s", (DUMMY_MAIL_SERVER,)).fetchone()[0] == 1
    assert sorted(r[0] for r in conn.execute("SELECT account_token FROM iap_account")) == tokens
    assert verify_neutralized(conn) == []


def test_verify_catches_a_reactivated_cron_and_server(conn):
    neutralize(conn)
    conn.execute("UPDATE ir_cron SET active = true WHERE id = (SELECT max(id) FROM ir_cron)")
    conn.execute("UPDATE ir_mail_server SET active = false WHERE name = %s", (DUMMY_MAIL_SERVER,))
    problems = verify_neutralized(conn)
    assert len(problems) == 2
    assert "1 scheduled action(s)" in problems[0]
    assert "dummy outgoing mail server is missing or inactive" in problems[1]


def test_guarded_by_column(conn):
    """A module whose table lacks a column (another Odoo version) is skipped, not an error."""
    conn.execute("ALTER TABLE iap_account DROP COLUMN account_token")
    report = neutralize(conn)
    assert ("iap", "disable IAP account tokens (suffix +disabled)", "no column iap_account.account_token") in report.skipped
    assert verify_neutralized(conn) == []


def test_copy_identity(conn):
    uuid0, secret0, created0 = (_param(conn, k) for k in ("database.uuid", "database.secret", "database.create_date"))
    identity = refresh_copy_identity(conn, "https://staging.acme.example/")
    uuid1, secret1 = _param(conn, "database.uuid"), _param(conn, "database.secret")
    assert identity.uuid == uuid1 != uuid0
    assert secret1 != secret0 and len(secret1) == 36
    assert _param(conn, "database.create_date") == created0
    assert _param(conn, "web.base.url") == "https://staging.acme.example"
    assert secret1 not in repr(identity)
    refresh_copy_identity(conn)  # no base url: left as it is
    assert _param(conn, "database.uuid") != uuid1
    assert _param(conn, "web.base.url") == "https://staging.acme.example"
