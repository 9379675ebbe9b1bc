"""Anonymization of a real copy of the Odoo 17 fixture, checked from the outside.

The proof here does not reuse the engine's own scanner: the originals are collected by plain SQL
before anonymizing, and searched afterwards in a plain-SQL ``pg_dump`` of the whole database and in
every file of the filestore.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from odoops.errors import ConfigError
from tasks.anonymize import (
    PLACEHOLDER,
    ResidueFound,
    anonymize,
    anonymize_attachments,
    load_rules,
    parse_rules,
)

KEY = "test-key-7f3a"  # a made-up key for the tests only
PASSWORD = "staging-pass"
EMAIL = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")
PHONE = re.compile(r"\+?\(?\d[\d\s().-]{6,}\d")

# Rows the default rules keep on purpose: the company's own partner and the technical users'
# partners (OdooBot, public user, templates) carry no personal data and are referenced by Odoo's
# layouts; their values are therefore not "originals" that must disappear.
KEPT_PARTNERS = sql.SQL("SELECT partner_id FROM res_company UNION SELECT res_id FROM ir_model_data WHERE model = "
                 "'res.partner' AND module = 'base' AND name IN ('main_partner', 'partner_root', 'public_partner', "
                 "'default_user_res_partner', 'template_portal_user_id_res_partner')")


@pytest.fixture
def conn(pg_cluster, odoo_db):
    with psycopg.connect(pg_cluster.dsn(odoo_db[0]), autocommit=True) as c:
        yield c


@pytest.fixture
def copies(pg_cluster, sample_template, tmp_path):
    """Make more copies of the fixture database (dropped afterwards)."""
    made: list[str] = []

    def make() -> psycopg.Connection:
        name = f"anon_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as c:
            c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                     sql.Identifier(sample_template[0])))
        made.append(name)
        return psycopg.connect(pg_cluster.dsn(name), autocommit=True)

    yield make
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as c:
        for name in made:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _originals(conn, filestore: Path) -> set[str]:
    """Every personal value of the fixture: partners, users' logins, IBANs, notes, contract files."""
    values: set[str] = set()
    for row in conn.execute(sql.SQL(
            "SELECT name, complete_name, email, phone, mobile, phone_sanitized, street, vat, website, comment "
            "FROM res_partner WHERE id NOT IN ({})").format(KEPT_PARTNERS)):
        for v in row[:-1]:
            if v:
                values.add(v)
        if row[-1]:
            values.update(EMAIL.findall(row[-1]))
            values.update(PHONE.findall(row[-1]))
    for (login,) in conn.execute("SELECT login FROM res_users WHERE login LIKE '%@%'"):
        values.add(login)
    for acc, sanitized, holder in conn.execute("SELECT acc_number, sanitized_acc_number, acc_holder_name "
                                               "FROM res_partner_bank"):
        values.update((acc, sanitized, holder))
    for (body,) in conn.execute("SELECT body FROM mail_message WHERE message_type = 'comment' AND body <> ''"):
        values.update(EMAIL.findall(body))
        values.update(p.strip() for p in PHONE.findall(body))
        values.add(" ".join(re.sub(r"<[^>]+>", " ", body).split()))
    for (fname,) in conn.execute("SELECT store_fname FROM ir_attachment WHERE mimetype = 'text/plain'"):
        for line in (filestore / fname).read_text().splitlines():
            if line.startswith(("Signed by ", "IBAN ")):
                values.add(line.split(" ", 2)[-1] if line.startswith("Signed") else line[5:])
    # Excluded, and only these: strings of 1-3 characters (too generic to be personal); values that
    # Odoo's own module-defined views and e-mail templates quote as examples ("Marc Demo", "Mitchell
    # Admin" in auth_signup's templates): that is Odoo's source code, identical in every database; and
    # values the kept rows hold too (the company's own address, shared by its employees' contacts).
    source = "\n".join(r[0] for r in conn.execute(sql.SQL(
        "SELECT arch_db::text FROM ir_ui_view WHERE arch_fs IS NOT NULL UNION ALL "
        "SELECT t.body_html::text FROM mail_template t JOIN ir_model_data d ON d.model = 'mail.template' "
        "AND d.res_id = t.id AND d.module NOT LIKE '\\_\\_%%' UNION ALL "
        "SELECT concat_ws(' ', name, email, phone, street, street2, vat) FROM res_partner WHERE id IN ({})"
    ).format(KEPT_PARTNERS)) if r[0]).lower()
    return {v.strip() for v in values if len(v.strip()) > 3 and v.strip().lower() not in source}


def _leftovers(text: str, originals: set[str]) -> list[str]:
    """Originals found in text (case-insensitive): lines holding a value's rarest word, then a substring test."""
    lines = text.lower().splitlines()
    index: dict[str, set[int]] = {}
    for i, line in enumerate(lines):
        for word in set(re.findall(r"[0-9a-z]+", line)):
            index.setdefault(word, set()).add(i)
    found = []
    for value in originals:
        words = re.findall(r"[0-9a-z]+", value.lower())
        if not words or not all(w in index for w in words):
            continue
        rarest = min(words, key=lambda w: len(index[w]))
        if any(value.lower() in lines[i] for i in index[rarest]):
            found.append(value)
    return found


def _dump(dbname: str) -> str:
    result = subprocess.run(["pg_dump", "--no-owner", "--format=plain", "-d", dbname], capture_output=True,
                            check=True)
    return result.stdout.decode("utf-8", "replace")


def test_no_original_left_anywhere(conn, odoo_db):
    dbname, filestore = odoo_db
    originals = _originals(conn, filestore)
    assert len(originals) > 2000
    assert _leftovers(_dump(dbname), originals)  # the check itself finds them before
    admin_hash = conn.execute("SELECT password FROM res_users WHERE login = 'admin'").fetchone()[0]
    text_files = {r[0] for r in conn.execute("SELECT store_fname FROM ir_attachment WHERE mimetype = 'text/plain'")}
    filenode = conn.execute("SELECT pg_relation_filenode('res_partner')").fetchone()[0]

    # every row sampled: which 500 of 543 partners a random sample holds must not decide the test
    rules = dataclasses.replace(load_rules(), sample_rows=10_000)
    report = anonymize(conn, rules, KEY, filestore, user_password=PASSWORD)

    assert report.clean and report.residue == []
    assert report.rows["res_partner"] == 543 and report.rows["mail_message"] == 675
    assert ("res_partner_bank", "acc_number", 61) in report.updated
    assert report.needles > 2000
    assert _leftovers(_dump(dbname), originals) == []
    for path in filestore.rglob("*"):
        if path.is_file():
            assert _leftovers(path.read_bytes().decode("utf-8", "replace"), originals) == [], path.name
    assert not any((filestore / f).exists() for f in text_files)
    assert report.attachments.attachments == 10 and report.attachments.files_removed == 10

    # users: unique logins, the administrator untouched, everyone else on the staging password
    logins = [r[0] for r in conn.execute("SELECT login FROM res_users")]
    assert len(logins) == len(set(logins)) and "admin" in logins and "__system__" in logins
    assert conn.execute("SELECT password FROM res_users WHERE login = 'admin'").fetchone()[0] == admin_hash
    hashes = {r[0] for r in conn.execute("SELECT password FROM res_users WHERE id > 2")}
    assert len(hashes) == 1  # one hash of the staging password, set in one statement
    for stored in hashes:
        _, scheme, rounds, salt, digest = stored.split("$")
        assert scheme == "pbkdf2-sha512" and rounds == "600000"
        raw_salt = base64.b64decode(salt.replace(".", "+") + "=" * (-len(salt) % 4))
        expected = hashlib.pbkdf2_hmac("sha512", PASSWORD.encode(), raw_salt, int(rounds))
        assert base64.b64decode(digest.replace(".", "+") + "=" * (-len(digest) % 4)) == expected

    # Odoo's stored computed fields follow their sources
    bad = conn.execute(
        "SELECT count(*) FROM res_partner c JOIN res_partner p ON p.id = c.commercial_partner_id "
        "WHERE c.id <> p.id AND p.is_company AND NOT c.is_company "
        "AND c.complete_name IS DISTINCT FROM p.name || ', ' || c.name").fetchone()[0]
    assert bad == 0
    assert conn.execute("SELECT count(*) FROM res_partner WHERE email_normalized IS DISTINCT FROM lower(email) "
                        "AND email IS NOT NULL").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM res_partner_bank WHERE sanitized_acc_number <> "
                        "upper(regexp_replace(acc_number, '\\W+', '', 'g'))").fetchone()[0] == 0
    assert conn.execute(
        "SELECT count(*) FROM mail_message m JOIN res_partner p ON p.id = m.author_id WHERE p.email IS NOT NULL "
        "AND m.email_from <> '\"' || p.name || '\" <' || p.email || '>'").fetchone()[0] == 0
    assert conn.execute(
        "SELECT count(*) FROM mail_message m JOIN res_partner p ON p.id = m.res_id AND m.model = 'res.partner' "
        "WHERE m.record_name <> p.complete_name").fetchone()[0] == 0
    # old row versions are gone: VACUUM FULL rewrote the table into a new file
    assert conn.execute("SELECT pg_relation_filenode('res_partner')").fetchone()[0] != filenode


def _snapshot(c: psycopg.Connection) -> list[tuple]:
    return c.execute("SELECT p.id, p.name, p.email, p.phone, p.complete_name, p.vat, u.login FROM res_partner p "
                     "LEFT JOIN res_users u ON u.partner_id = p.id ORDER BY p.id").fetchall()


def test_deterministic_per_key(copies):
    rules = load_rules().only("res_partner", "res_users")
    a, b, c = copies(), copies(), copies()
    original = _snapshot(a)
    for db, key in ((a, KEY), (b, KEY), (c, "another-key")):
        anonymize(db, rules, key, vacuum=False, verify=False)
    assert _snapshot(a) == _snapshot(b) != original
    same_key, other_key = _snapshot(a), _snapshot(c)
    changed = [(x, y) for x, y in zip(same_key, other_key, strict=True) if x[1:] != y[1:]]
    assert len(changed) >= 540  # every anonymized partner differs under another key
    for db in (a, b, c):
        db.close()


def test_twice_is_harmless(conn, odoo_db):
    rules = load_rules()
    anonymize(conn, rules, KEY, odoo_db[1], vacuum=False)
    again = anonymize(conn, rules, KEY, odoo_db[1], vacuum=False)
    assert again.clean and again.attachments.attachments == 0
    logins = [r[0] for r in conn.execute("SELECT login FROM res_users")]
    assert len(logins) == len(set(logins))


def _indexes(conn) -> dict[str, tuple[int, str]]:
    return {name: (oid, definition) for name, oid, definition in conn.execute(
        "SELECT c.relname, c.oid, pg_get_indexdef(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid IN ('res_partner'::regclass, 'mail_message'::regclass)")}


def test_indexes_come_back_the_same_and_a_failure_keeps_them(conn):
    """The plain indexes set aside for the bulk UPDATE are rebuilt; any index with more to it is left in place."""
    from odoops.errors import ToolFailed

    conn.execute("COMMENT ON INDEX res_partner__ref_index IS 'looked up by the EDI connector'")
    conn.execute("ALTER TABLE res_partner CLUSTER ON res_partner__vat_index")
    before = _indexes(conn)
    rules = load_rules().only("res_partner", "mail_message")

    conn.execute("CREATE FUNCTION odoops_test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                 "$$ BEGIN IF NEW.id = 300 THEN RAISE EXCEPTION 'row 300 is locked by a test'; END IF; "
                 "RETURN NEW; END $$")
    conn.execute("CREATE TRIGGER odoops_test_refuse BEFORE UPDATE ON mail_message "
                 "FOR EACH ROW EXECUTE FUNCTION odoops_test_refuse()")
    name_before = conn.execute("SELECT name FROM res_partner WHERE id = 16").fetchone()[0]
    with pytest.raises(ToolFailed, match="anonymization failed on table mail_message: row 300 is locked"):
        anonymize(conn, rules, KEY, vacuum=False, verify=False)
    assert _indexes(conn) == before  # nothing dropped, nothing rebuilt: the whole UPDATE rolled back
    assert conn.execute("SELECT name FROM res_partner WHERE id = 16").fetchone()[0] == name_before

    conn.execute("DROP TRIGGER odoops_test_refuse ON mail_message")
    anonymize(conn, rules, KEY, vacuum=False, verify=False)
    after = _indexes(conn)
    assert {n: d for n, (_, d) in after.items()} == {n: d for n, (_, d) in before.items()}
    rebuilt = {n for n in before if after[n][0] != before[n][0]}
    assert {"res_partner__name_index", "res_partner__complete_name_index", "mail_message__parent_id_index"} <= rebuilt
    assert not rebuilt & {"res_partner_pkey", "res_partner__ref_index", "res_partner__vat_index"}
    assert conn.execute("SELECT obj_description('res_partner__ref_index'::regclass, 'pg_class')") \
        .fetchone()[0] == "looked up by the EDI connector"
    assert conn.execute("SELECT indisclustered FROM pg_index WHERE indexrelid = 'res_partner__vat_index'::regclass") \
        .fetchone()[0]


def test_residue_is_reported_without_values(conn):
    """Rules that forget columns: the proof names table and column, never the value."""
    # every partner sampled: with the default 500 of 548, which chatter rows hold a sampled value is chance
    rules = dataclasses.replace(load_rules().only("res_partner"), sample_rows=10_000)
    phone = conn.execute("SELECT phone FROM res_partner WHERE id = 16").fetchone()[0]
    with pytest.raises(ResidueFound) as err:
        anonymize(conn, rules, KEY, vacuum=False)
    message = str(err.value)
    assert message.startswith("anonymization left original personal values in ir_attachment.index_content (")
    assert "\n" not in message and phone not in message and KEY not in message
    places = {(t, c) for t, c, _ in err.value.report.residue}
    assert {("res_users", "login"), ("res_partner_bank", "acc_holder_name"), ("mail_message", "record_name"),
            ("mail_message", "email_from")} <= places
    assert not any(t == "res_partner" for t, _ in places)


def test_key_never_in_logs_or_report(conn, caplog):
    caplog.set_level(logging.DEBUG)
    report = anonymize(conn, load_rules().only("res_partner", "res_users", "res_partner_bank", "mail_message"),
                       "very-secret-key-4711", vacuum=False, verify=False)
    assert "very-secret-key-4711" not in caplog.text
    assert "very-secret-key-4711" not in repr(report) and "very-secret-key-4711" not in str(report.as_dict())


RULES_OK = {"tables": {"res_partner": {"columns": {"name": {"strategy": "fake", "kind": "partner_name"}}}}}


@pytest.mark.parametrize(("change", "expected"), [
    ({"columns": {"foo": "hash"}},
     "rules file bad.yaml: res_partner: column res_partner.foo does not exist: fix the rule or remove it"),
    ({"columns": {"name": "scramble"}}, "res_partner.name: unknown strategy 'scramble': use one of"),
    ({"columns": {"name": {"strategy": "fake", "kind": "planet"}}}, "unknown fake kind 'planet'"),
    ({"columns": {"name": {"strategy": "constant"}}}, "strategy constant needs a value"),
    ({"columns": {"partner_latitude": {"strategy": "fake", "kind": "text"}}},
     "column res_partner.partner_latitude is numeric: strategy fake needs a text column"),
])
def test_bad_rules_are_one_line_config_errors(conn, change, expected):
    name_before = conn.execute("SELECT name FROM res_partner WHERE id = 16").fetchone()[0]
    data = {"tables": {"res_partner": change}}
    with pytest.raises(ConfigError) as err:
        anonymize(conn, parse_rules(data, "bad.yaml"), KEY)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert conn.execute("SELECT name FROM res_partner WHERE id = 16").fetchone()[0] == name_before


def test_unique_columns_tables_and_files(conn, tmp_path):
    with pytest.raises(ConfigError, match="column res_users.login is unique: strategy fake can collide, use hash"):
        anonymize(conn, parse_rules({"tables": {"res_users": {"columns": {"login": {"strategy": "fake",
                                                                                    "kind": "email"}}}}}, "u.yaml"), KEY)
    with pytest.raises(ConfigError, match="table hr_employee does not exist .required: true."):
        anonymize(conn, parse_rules({"tables": {"hr_employee": {"required": True, "columns": {"name": "hash"}}}},
                                    "r.yaml"), KEY)
    absent = anonymize(conn, parse_rules({"tables": {"hr_employee": {"columns": {"name": "hash"}}, **RULES_OK["tables"]}},
                                         "ok.yaml"), KEY, verify=False, vacuum=False)
    assert ("hr_employee", "table absent") in absent.skipped
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("tables:\n  res_partner: [\n")
    with pytest.raises(ConfigError, match="rules file .*broken.yaml is not valid YAML at line"):
        load_rules(bad_yaml)


def test_attachments_never_touch_a_hardlinked_filestore(conn, odoo_db, tmp_path):
    """A copy whose filestore shares inodes with production's: production's files stay byte-identical."""
    _, copy_fs = odoo_db
    prod_fs = tmp_path / "prod-filestore"
    shutil.copytree(copy_fs, prod_fs)
    shutil.rmtree(copy_fs)
    shutil.copytree(prod_fs, copy_fs, copy_function=os.link)  # like `cp -al`
    prod_digest = {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in prod_fs.rglob("*") if p.is_file()}
    text = conn.execute("SELECT id, store_fname FROM ir_attachment WHERE mimetype = 'text/plain' ORDER BY id").fetchall()
    # an image attachment sharing the first text file: that file must survive (still referenced)
    conn.execute("INSERT INTO ir_attachment (name, type, store_fname, checksum, mimetype, res_model) "
                 "SELECT 'shared.bin', 'binary', store_fname, checksum, 'application/octet-stream', 'res.partner' "
                 "FROM ir_attachment WHERE id = %s", (text[0][0],))

    report = anonymize_attachments(conn, copy_fs, "scrub")

    sha = hashlib.sha1(PLACEHOLDER).hexdigest()
    assert report.attachments == 10 and report.files_written == 1 and report.files_removed == 9
    assert (copy_fs / sha[:2] / sha).read_bytes() == PLACEHOLDER
    rows = conn.execute("SELECT store_fname, checksum, file_size, index_content FROM ir_attachment "
                        "WHERE mimetype = 'text/plain'").fetchall()
    assert set(rows) == {(f"{sha[:2]}/{sha}", sha, len(PLACEHOLDER), PLACEHOLDER.decode().strip())}
    assert (copy_fs / text[0][1]).exists()
    assert not (copy_fs / text[1][1]).exists()
    assert {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in prod_fs.rglob("*") if p.is_file()} == prod_digest
    assert anonymize_attachments(conn, copy_fs, "scrub").attachments == 0  # idempotent

    dropped = anonymize_attachments(conn, copy_fs, "drop")
    assert dropped.attachments == 10
    assert conn.execute("SELECT count(*) FROM ir_attachment WHERE mimetype = 'text/plain'").fetchone()[0] == 0
    assert not (copy_fs / sha[:2] / sha).exists()


# A database shaped like the benchmark one (shared/bench/big_odoo_rows.sql), small: 3,000 more partners
# (companies and their contacts) and 4,000 chatter messages on them, authored in turn by OdooBot (partner 2),
# the company (partner 1), the administrator, the demo user and staff users, with the copies Odoo makes of
# the author's "Name" <address>: mail_message.email_from / reply_to, the outgoing queue (mail_mail: email_cc,
# and email_to, a text column, holding the recipient's or the sender's own address), notifications and
# tracked e-mail changes.
SHAPED_ROWS = """
SET session_replication_role = replica;
INSERT INTO res_partner (id, name, complete_name, email, email_normalized, phone, phone_sanitized, street, city, zip,
   comment, active, type, is_company, employee, partner_share, lang, parent_id, commercial_partner_id,
   commercial_company_name, ref, create_uid, write_uid, create_date, write_date)
SELECT 100000 + g, x.pname, CASE WHEN x.iscomp THEN x.cname ELSE x.cname || ', ' || x.pname END, x.em, x.em,
  x.ph, replace(replace(x.ph, ' ', ''), '-', ''), g || ' Ridgeway Ave', 'Fairbanks', lpad((g * 7919 % 99999)::text, 5, '0'),
  '<p>Prefers calls before noon, contact ' || x.em || '</p>', true, 'contact', x.iscomp, false, true, 'en_US',
  CASE WHEN x.iscomp THEN NULL ELSE x.cid END, x.cid, x.cname, 'C' || g, 2, 2, now(), now()
FROM generate_series(1, 3000) g
CROSS JOIN LATERAL (SELECT (g - 1) % 10 = 0 AS iscomp, 100000 + g - (g - 1) % 10 AS cid,
  'Quintero Freight ' || (g - 1) / 10 AS cname,
  CASE WHEN (g - 1) % 10 = 0 THEN 'Quintero Freight ' || (g - 1) / 10
       ELSE (ARRAY['Harriet', 'Osvaldo', 'Imogen', 'Tobias', 'Leonora'])[1 + g % 5] || ' Quenneville' || g END AS pname,
  'contact' || g || '@quintero-freight.example.org' AS em, '+1 907-555-' || lpad(g::text, 4, '0') AS ph) x;
SELECT setval('res_partner_id_seq', (SELECT max(id) FROM res_partner));
INSERT INTO mail_message (id, res_id, model, record_name, message_type, subtype_id, author_id, email_from, reply_to, body,
   subject, is_internal, message_id, date, create_date, write_date, create_uid, write_uid, reply_to_force_new)
SELECT 100000 + m, p.id, 'res.partner', p.name, CASE WHEN m % 3 = 0 THEN 'email' ELSE 'comment' END, 2, a.id,
  '"' || a.name || '" <' || a.email || '>', '"' || a.name || '" <' || a.email || '>',
  '<p>Called ' || p.name || ' about order S' || m || ', follow-up by ' || a.name || '.</p>',
  CASE WHEN m % 3 = 0 THEN 'Re: order S' || m END, false, '<' || m || '.shaped@example>', now(), now(), now(), 2, 2, false
FROM generate_series(1, 4000) m
JOIN res_partner p ON p.id = 100001 + m % 3000
JOIN res_partner a ON a.id = (ARRAY[2, 1, 3, 7, 541, 542, 543, 2, 1, 3])[1 + m % 10];
SELECT setval('mail_message_id_seq', (SELECT max(id) FROM mail_message));
INSERT INTO mail_mail (id, mail_message_id, state, body_html, email_to, email_cc, headers, is_notification, auto_delete,
   create_date, write_date)
SELECT 100000 + m.id, m.id, 'sent', m.body,
  CASE WHEN m.id % 2 = 0 THEN m.email_from ELSE '"' || p.name || '" <' || p.email || '>' END, m.email_from,
  '{"Return-Path": "' || p.email || '", "X-Odoo-Objects": "res.partner-' || p.id || '"}', true, false, now(), now()
FROM mail_message m JOIN res_partner p ON p.id = m.res_id AND m.model = 'res.partner'
WHERE m.id > 100000 AND m.message_type = 'email';
INSERT INTO mail_notification (author_id, mail_message_id, mail_mail_id, res_partner_id, notification_type,
   notification_status, is_read)
SELECT m.author_id, m.id, 100000 + m.id, m.res_id, 'email', 'sent', true
FROM mail_message m WHERE m.id > 100000 AND m.message_type = 'email';
INSERT INTO mail_tracking_value (field_id, mail_message_id, old_value_char, new_value_char, create_date, write_date)
SELECT f.id, m.id, 'old.' || p.email, p.email, now(), now()
FROM mail_message m JOIN res_partner p ON p.id = m.res_id
JOIN ir_model_fields f ON f.model = 'res.partner' AND f.name = 'email'
WHERE m.id > 100000 AND m.id % 7 = 0;
SET session_replication_role = origin;
"""
# what the shaped rows hold that must be gone afterwards (all of it personal: contacts, not kept rows)
SHAPED_ORIGINALS = re.compile(r"quenneville|quintero|907-555|ridgeway")
KEPT_ADDRESSES = ('"OdooBot" <odoobot@example.com>', '"YourCompany" <info@yourcompany.com>')


@pytest.fixture
def shaped(conn):
    with conn.cursor() as cur:
        cur.execute(SHAPED_ROWS)
    return conn


def test_default_rules_pass_their_proof_on_a_benchmark_shaped_database(shaped, odoo_db):
    """Messages by OdooBot and the company keep their "Name" <address> (kept rows) everywhere Odoo copies it,
    those copies are never needles, and everything personal is gone: the default rules pass their own proof."""
    conn = shaped
    dbname, filestore = odoo_db
    assert conn.execute("SELECT count(*) FROM mail_message WHERE author_id IN (1, 2)").fetchone()[0] == 1604
    assert len(SHAPED_ORIGINALS.findall(_dump(dbname).lower())) > 20_000

    report = anonymize(conn, load_rules(), KEY, filestore, user_password=PASSWORD)  # the default rules, as shipped

    assert report.clean and report.residue == [] and report.needles > 1000
    assert report.needles_kept > 0  # copies of kept values were sampled, and left out of the proof
    assert conn.execute("SELECT value FROM ir_config_parameter WHERE key = 'odoops.anonymization'").fetchone() == ("clean",)
    # kept everywhere: OdooBot's and the company's address, in the message and in every copy of it
    kept = conn.execute(
        "SELECT m.email_from, m.reply_to, mm.email_cc, mm.email_to FROM mail_message m "
        "LEFT JOIN mail_mail mm ON mm.mail_message_id = m.id WHERE m.id > 100000 AND m.author_id IN (1, 2)").fetchall()
    assert {r[0] for r in kept} == {r[1] for r in kept} == set(KEPT_ADDRESSES)
    assert {r[2] for r in kept if r[2]} == set(KEPT_ADDRESSES)
    # anonymized everywhere: the administrator's, the users' and the contacts' addresses and names
    others = conn.execute("SELECT DISTINCT email_from FROM mail_message WHERE id > 100000 AND author_id NOT IN (1, 2)")
    assert all("example.invalid" in r[0] for r in others)
    assert SHAPED_ORIGINALS.findall(_dump(dbname).lower()) == []


def test_residue_names_its_rule_rows_and_marks_the_copy(shaped, odoo_db, tmp_path):
    """Rules without the outgoing queue: the error names the column, the rule the originals belong to, the row
    count and --report; the report lists the row ids, never a value; the copy is marked not anonymized."""
    conn = shaped
    rules = load_rules()  # every row sampled, so that the counts are exact
    rules = dataclasses.replace(rules, tables=tuple(t for t in rules.tables if t.table != "mail_mail"), sample_rows=10_000)
    with pytest.raises(ResidueFound) as err:
        anonymize(conn, rules, KEY, odoo_db[1], vacuum=False)
    message = str(err.value)
    # every queued address but OdooBot's and the company's (kept) is an original left in place
    leaked = [r[0] for r in conn.execute("SELECT id FROM mail_mail WHERE email_to <> ALL(%s) ORDER BY id",
                                         (list(KEPT_ADDRESSES),))]
    assert len(leaked) == 1067
    assert "\n" not in message and KEY not in message and not SHAPED_ORIGINALS.search(message.lower())
    assert "mail_mail.email_to (1067 rows; originals of rule " in message
    assert "--report FILE" in message and "odoops.anonymization=residue" in message
    assert conn.execute("SELECT value FROM ir_config_parameter WHERE key = 'odoops.anonymization'").fetchone() == (
        "residue",)
    written = err.value.report.write(tmp_path / "report.json").read_text()
    assert not SHAPED_ORIGINALS.search(written.lower()) and "odoobot@" not in written
    data = json.loads(written)
    assert data["clean"] is False
    [queue] = [r for r in data["residue"] if (r["table"], r["column"]) == ("mail_mail", "email_to")]
    assert queue["count"] == 1067 and queue["row_ids_complete"] and "res_partner.email" in queue["rules"]
    # the ids are the rows that really hold the originals (the addresses the rules did not reach)
    assert sorted(int(i) for i in queue["row_ids"]) == leaked


@pytest.mark.usefixtures("prefect_harness")
def test_cli_anonymize_writes_the_report(shaped, odoo_db, tmp_path, pg_cluster, monkeypatch):
    """`odoops anonymize ENV --report FILE` as typed: one red line and exit 2 on residue, the report on disk."""
    from typer.testing import CliRunner

    from odoops.cli import app
    from tests.helpers import host_env, write_inventory

    dbname, filestore = odoo_db
    inv = write_inventory(tmp_path / "inv.yaml", {"staging": host_env(pg_cluster, dbname, filestore, stage="staging")})
    rules = yaml.safe_load(Path("deployments/anonymize-rules.yaml").read_text())
    del rules["tables"]["mail_mail"]
    rules["sample_rows"] = 10_000
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    monkeypatch.setenv("ODOOPS_ANONYMIZE_KEY", KEY)
    result = CliRunner().invoke(app, ["anonymize", "staging", "--inventory", str(inv), "--rules",
                                      str(tmp_path / "rules.yaml"), "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 2
    assert result.output.startswith("error: anonymization left original personal values in mail_mail.")
    assert "--report FILE" in result.output and not SHAPED_ORIGINALS.search(result.output.lower())
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["clean"] is False
    assert {(r["table"], r["column"]): r["count"] for r in report["residue"]}[("mail_mail", "email_to")] == 1067


@pytest.mark.usefixtures("prefect_harness")
def test_cli_restore_anonymize_sample_passes_its_proof(pg_cluster, tmp_path, monkeypatch):
    """`odoops restore sample.zip --to staging --anonymize --report FILE`: the default rules pass their proof."""
    from typer.testing import CliRunner

    from odoops.cli import app
    from odoops.sandbox import SAMPLE_ZIP
    from tests.helpers import drop_database, host_env, write_inventory

    dbname = f"staging_{uuid.uuid4().hex[:8]}"
    inv = write_inventory(tmp_path / "inv.yaml", {"staging": host_env(pg_cluster, dbname, tmp_path / "fs" / dbname,
                                                                      stage="staging")})
    monkeypatch.setenv("ODOOPS_ANONYMIZE_KEY", KEY)
    try:
        result = CliRunner().invoke(app, ["restore", str(SAMPLE_ZIP), "--to", "staging", "--anonymize", "--inventory",
                                          str(inv), "--report", str(tmp_path / "r.json")])
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["clean"] is True and report["residue"] == [] and report["needles"] > 1000
        assert report["rows"]["res_partner"] == 543
        with psycopg.connect(pg_cluster.dsn(dbname)) as c:
            assert c.execute("SELECT value FROM ir_config_parameter WHERE key = 'odoops.anonymization'").fetchone() \
                == ("clean",)
    finally:
        drop_database(pg_cluster, dbname)


@pytest.mark.usefixtures("prefect_harness")
def test_without_a_configured_key_a_one_time_key_is_used_and_said(pg_cluster, odoo_db, copies, tmp_path,
                                                                    monkeypatch):
    """No ceremony: without ODOOPS_ANONYMIZE_KEY the run uses a random key of its own, says so, and its
    pseudonyms match no other run's (a configured key gives the same pseudonyms every time)."""
    from typer.testing import CliRunner

    from odoops.cli import app
    from tasks.anonymize import key_from_env
    from tests.helpers import host_env, write_inventory

    monkeypatch.delenv("ODOOPS_ANONYMIZE_KEY", raising=False)
    assert key_from_env() != key_from_env() and len(key_from_env()) >= 32
    dbname, filestore = odoo_db
    inv = write_inventory(tmp_path / "inv.yaml", {"staging": host_env(pg_cluster, dbname, filestore, stage="staging")})
    result = CliRunner().invoke(app, ["anonymize", "staging", "--inventory", str(inv), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["key"] == "one-time"
    assert "random one-time key" in result.stderr and "ODOOPS_ANONYMIZE_KEY" in result.stderr
    other = copies()
    anonymize(other, load_rules(), key_from_env(), vacuum=False, verify=False)
    with psycopg.connect(pg_cluster.dsn(dbname)) as conn:
        first = _snapshot(conn)
    second = _snapshot(other)
    assert sum(x[1] != y[1] for x, y in zip(first, second, strict=True)) >= 540, "pseudonyms differ between runs"
    other.close()
