"""The restore runbook on a real PostgreSQL: the real Odoo 17 zip and dump, catalog backups, atomic swap,
undo, gates, and hostile or damaged archives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from odoops.errors import IntegrityError, RefusedError, UnsafeArchive
from odoops.inventory import load_inventory
from odoops.runtime import repository_for
from odoops.sandbox import SAMPLE_DUMP, SAMPLE_ZIP
from tasks.postgres import ConnInfo, connect, table_row_counts
from tests.helpers import host_env, kill_group, write_inventory

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def envs(tmp_path, pg_cluster, odoo_db):
    """production = a copy of the sample; staging = a database name that does not exist yet."""
    dbname, filestore = odoo_db
    staging_db = f"{dbname}_staging"
    inv = write_inventory(tmp_path / "inv.yaml", {
        "production": host_env(pg_cluster, dbname, filestore),
        "staging": host_env(pg_cluster, staging_db, tmp_path / "data" / "filestore" / staging_db, stage="staging",
                            url=None),
    })
    yield inv, dbname, filestore, staging_db, tmp_path / "data" / "filestore" / staging_db
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{staging_db}%",)):
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def counts(pg_cluster, dbname):
    with connect(ConnInfo.from_dsn(pg_cluster.dsn(dbname))) as conn:
        return table_row_counts(conn)


def params(pg_cluster, dbname):
    with psycopg.connect(pg_cluster.dsn(dbname)) as conn:
        return dict(conn.execute("SELECT key, value FROM ir_config_parameter").fetchall())


def files_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_catalog_backup_into_staging_is_neutralized_a_copy_and_the_backup_stays_intact(envs, pg_cluster):
    from flows.backup import backup_flow
    from flows.restore import restore_flow

    inv, prod_db, prod_fs, staging_db, staging_fs = envs
    backup_id = backup_flow("production", inventory=str(inv))["backup_id"]
    result = restore_flow(backup_id, "staging", inventory=str(inv))
    assert result["neutralized"] and not result["anonymized"] and result["snapshot"] is None
    assert counts(pg_cluster, staging_db) == {**counts(pg_cluster, prod_db), **{
        t: n for t, n in counts(pg_cluster, staging_db).items() if t in ("ir_cron", "ir_mail_server",
                                                                        "ir_config_parameter", "ir_ui_view")}}
    assert files_of(staging_fs) == files_of(prod_fs) and len(files_of(staging_fs)) == 120
    before, after = params(pg_cluster, prod_db), params(pg_cluster, staging_db)
    assert after["database.is_neutralized"].lower() == "true" and "database.is_neutralized" not in before
    assert after["database.uuid"] != before["database.uuid"] and after["database.secret"] != before["database.secret"]
    with psycopg.connect(pg_cluster.dsn(staging_db)) as conn:
        active = conn.execute("SELECT count(*) FROM ir_cron WHERE active").fetchone()[0]
    assert active == 1  # base.autovacuum_job only
    repo = repository_for(load_inventory(inv), "local")
    assert repo.verify(backup_id) == []  # a restore never consumes the backup it reads
    assert restore_flow(backup_id, "staging", inventory=str(inv))["snapshot"]  # and can be restored again


@pytest.mark.parametrize("archive", [SAMPLE_ZIP, SAMPLE_DUMP], ids=["zip", "dump"])
def test_odoo_archives_restore_to_the_same_rows_and_files(envs, pg_cluster, sample_template, archive):
    from flows.restore import restore_flow

    inv, _, _, staging_db, staging_fs = envs
    template_db, template_fs = sample_template
    result = restore_flow(str(archive), "staging", neutralize=False, inventory=str(inv))
    assert not result["neutralized"]
    assert counts(pg_cluster, staging_db) == counts(pg_cluster, template_db)
    restored_files = files_of(staging_fs)
    if archive == SAMPLE_ZIP:
        assert restored_files == files_of(template_fs)
        assert len(restored_files) == 120 and sum(f.startswith("checklist/") for f in restored_files) == 30
    else:
        assert restored_files == []  # Odoo's .dump backup has no filestore
    from odoops.audit import read_audit

    [record] = [r for r in read_audit(repository_for(load_inventory(inv), "local").store, "staging")]
    assert record["parameters"]["neutralize"] is False  # turning neutralization off is on the record


def test_after_the_swap_odoo_answers_and_a_user_logs_in(tmp_path, pg_cluster, envs, monkeypatch):
    from flows.restore import restore_flow
    from tests.odoo_standin import OdooStandin

    _, _, _, staging_db, staging_fs = envs
    monkeypatch.setenv("STAGING_LOGIN_PASSWORD", "staging-secret")
    with OdooStandin(databases={staging_db: {"admin": ("staging-secret", 2)}}) as odoo:
        env = host_env(pg_cluster, staging_db, staging_fs, stage="staging", url=odoo.url,
                       health={"login": "admin", "login_password_env": "STAGING_LOGIN_PASSWORD"})
        inv = write_inventory(tmp_path / "inv2.yaml", {"staging": env})
        restore_flow(str(SAMPLE_ZIP), "staging", inventory=str(inv))
    from odoops.audit import read_audit

    [record] = read_audit(repository_for(load_inventory(inv), "local").store, "staging")
    checks = record["details"]["post_checks"]
    assert checks["web/health"] == "HTTP 200 pass" and checks["xmlrpc login"].startswith("ok: admin logged in")
    assert checks["database.is_neutralized"] is True
    assert "staging-secret" not in json.dumps(record)


def test_restore_over_an_environment_keeps_a_snapshot_and_undo_puts_it_back(envs, pg_cluster):
    from flows.restore import restore_flow, restore_undo_flow

    inv, _, _, staging_db, staging_fs = envs
    restore_flow(str(SAMPLE_ZIP), "staging", inventory=str(inv))
    with psycopg.connect(pg_cluster.dsn(staging_db), autocommit=True) as conn:
        conn.execute("UPDATE res_partner SET name = 'Tested in staging' WHERE id = 3")
    (staging_fs / "marker").write_text("staging work")
    second = restore_flow(str(SAMPLE_ZIP), "staging", inventory=str(inv))
    assert second["snapshot"].startswith(f"{staging_db}__odoops_prev_")
    assert not (staging_fs / "marker").exists()
    restore_undo_flow("staging", inventory=str(inv))
    with psycopg.connect(pg_cluster.dsn(staging_db)) as conn:
        assert conn.execute("SELECT name FROM res_partner WHERE id = 3").fetchone()[0] == "Tested in staging"
    assert (staging_fs / "marker").read_text() == "staging work"


def test_production_needs_its_name_and_gets_a_verified_backup_first(envs, pg_cluster):
    from flows.restore import restore_flow

    inv, prod_db, _, _, _ = envs
    before = counts(pg_cluster, prod_db)
    with pytest.raises(RefusedError, match="production is production: confirm by naming it"):
        restore_flow(str(SAMPLE_ZIP), "production", inventory=str(inv))
    with pytest.raises(RefusedError, match="does not name the environment"):
        restore_flow(str(SAMPLE_ZIP), "production", confirm="staging", inventory=str(inv))
    assert repository_for(load_inventory(inv), "local").list_backups() == []
    result = restore_flow(str(SAMPLE_ZIP), "production", confirm="production", inventory=str(inv))
    assert not result["neutralized"] and result["pre_restore_backup"]
    [pre] = repository_for(load_inventory(inv), "local").list_backups("production")
    assert pre.kind == "pre-restore" and pre.verification == "verified"
    assert counts(pg_cluster, prod_db) == before


def hostile_zip(tmp_path: Path, name: str, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    path = tmp_path / name
    src = zipfile.ZipFile(SAMPLE_ZIP)
    with zipfile.ZipFile(path, "w") as zf:
        for item in src.namelist():
            if item not in entries:
                zf.writestr(item, src.read(item))
        for entry, data in entries.items():
            if data is not None:
                zf.writestr(entry, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda t: _truncated(t, SAMPLE_ZIP, "corrupt.zip", 300_000), "not a readable zip"),
        (lambda t: _truncated(t, SAMPLE_DUMP, "short.dump", 500_000), "damaged or truncated"),
        (lambda t: _zip_without_dump(t), "has no dump.sql"),
        (lambda t: hostile_zip(t, "escape.zip", {"filestore/../../escaped": b"pwned"}), "outside its folder"),
        (lambda t: hostile_zip(t, "absolute.zip", {"/tmp/odoops-absolute": b"pwned"}), "outside its folder"),
        (lambda t: hostile_zip(t, "link.zip", {}, symlink="filestore/ab/link"), "holds a link"),
        (lambda t: _flipped(t), "could not be read from the archive"),
    ],
    ids=["corrupt-zip", "truncated-dump", "no-dump-sql", "dotdot", "absolute", "symlink", "bad-crc"],
)
def test_bad_archives_are_refused_and_nothing_is_touched(envs, pg_cluster, tmp_path, make, error):
    from flows.restore import restore_flow

    inv, _, _, staging_db, staging_fs = envs
    archive = make(tmp_path)
    with pytest.raises(UnsafeArchive, match=error) as info:
        restore_flow(str(archive), "staging", inventory=str(inv))
    assert "\n" not in str(info.value)
    with psycopg.connect(pg_cluster.dsn()) as conn:
        leftovers = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s", (f"{staging_db}%",))
        assert leftovers.fetchone()[0] == 0
    assert not staging_fs.exists() and not Path("/tmp/odoops-absolute").exists()
    assert not (tmp_path.parent / "escaped").exists()


def _flipped(tmp_path: Path) -> Path:
    """The sample zip with bytes flipped inside one filestore file's compressed data (CRC no longer matches)."""
    data = bytearray(SAMPLE_ZIP.read_bytes())
    info = max((i for i in zipfile.ZipFile(SAMPLE_ZIP).infolist() if i.filename.startswith("filestore/")),
               key=lambda i: i.compress_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for offset in range(start + info.compress_size // 2, start + info.compress_size // 2 + 3):
        data[offset] ^= 0xFF
    path = tmp_path / "flipped.zip"
    path.write_bytes(bytes(data))
    return path


def _truncated(tmp_path: Path, source: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(source.read_bytes()[:size])
    return path


def _zip_without_dump(tmp_path: Path) -> Path:
    path = tmp_path / "nodump.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.json", zipfile.ZipFile(SAMPLE_ZIP).read("manifest.json"))
    return path


def test_another_major_version_is_refused_unless_allowed(envs, pg_cluster, tmp_path):
    from flows.restore import restore_flow

    inv, _, _, staging_db, _ = envs
    restore_flow(str(SAMPLE_ZIP), "staging", inventory=str(inv))
    manifest = zipfile.ZipFile(SAMPLE_ZIP).read("manifest.json").replace(b'"17.0"', b'"16.0"')
    old = hostile_zip(tmp_path, "odoo16.zip", {"manifest.json": manifest})
    with pytest.raises(RefusedError, match="is Odoo 16.0 but staging runs Odoo 17.0.*--allow-version-change"):
        restore_flow(str(old), "staging", inventory=str(inv))
    assert restore_flow(str(old), "staging", allow_version_change=True, inventory=str(inv))["tables"] > 100


def test_a_reserved_name_taken_by_someone_else_is_never_dropped(envs, pg_cluster):
    from flows.restore import restore_flow

    inv, _, _, staging_db, _ = envs
    foreign = f"{staging_db}__odoops_restore"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(foreign)))
    with pytest.raises(RefusedError, match="exists and odoops did not create it"):
        restore_flow(str(SAMPLE_ZIP), "staging", inventory=str(inv))
    with psycopg.connect(pg_cluster.dsn()) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (foreign,)).fetchone()


def test_a_restore_killed_mid_way_leaves_the_target_intact_and_is_cleaned_next_run(envs, pg_cluster, tmp_path):
    from flows.restore import restore_flow

    inv, _, _, staging_db, staging_fs = envs
    restore_flow(str(SAMPLE_ZIP), "staging", inventory=str(inv))
    before, files_before = counts(pg_cluster, staging_db), files_of(staging_fs)
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen([sys.executable, "-m", "odoops", "restore", str(SAMPLE_ZIP), "--to", "staging",
                             "--inventory", str(inv)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    temp_fs = staging_fs.parent / f".{staging_fs.name}.odoops-restore"
    def copy_under_way() -> bool:
        try:
            return temp_fs.exists() and any(temp_fs.rglob("checklist"))
        except FileNotFoundError:  # the folder moved while being listed
            return False

    deadline = time.monotonic() + 90
    try:
        while not copy_under_way():
            assert proc.poll() is None, proc.stderr.read().decode()[-1500:]
            assert time.monotonic() < deadline, "fault point never reached"
            time.sleep(0.002)
    finally:  # killed at the fault point, and in any case; nobody frees its slot: the next run must
        kill_group(proc)
    assert counts(pg_cluster, staging_db) == before and files_of(staging_fs) == files_before
    restore_flow(str(SAMPLE_ZIP), "staging", inventory=str(inv))
    assert not temp_fs.exists()
    with psycopg.connect(pg_cluster.dsn()) as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (f"{staging_db}__odoops_restore",)).fetchone()


def test_disk_full_mid_restore_leaves_the_target_intact(envs, pg_cluster, tmp_path):
    from flows.restore import restore_flow
    from odoops.errors import DiskFull, OdoopsError

    assert os.geteuid() == 0, "this test mounts a small tmpfs: run the suite as root (CI does)"
    inv, _, _, staging_db, _ = envs
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        data = load_inventory(inv)
        text = inv.read_text().replace(str(data.environment("staging").filestore), str(small / "fs" / staging_db))
        inv.write_text(text)
        with pytest.raises((DiskFull, OdoopsError)) as info:
            restore_flow(str(SAMPLE_ZIP), "staging", inventory=str(inv))
        assert "space" in str(info.value).lower()
        assert not any(small.rglob("*")) or not (small / "fs" / staging_db).exists()
        with psycopg.connect(pg_cluster.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                                (f"{staging_db}%",)).fetchone()[0] == 0
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)


def test_anonymized_restore_leaves_no_original_personal_data(envs, pg_cluster, monkeypatch, tmp_path):
    from flows.restore import restore_flow

    inv, prod_db, _, staging_db, _ = envs
    monkeypatch.setenv("ODOOPS_ANONYMIZE_KEY", "test-key-123")
    from tests.test_anonymize import _leftovers, _originals  # the same proof as the anonymizer's own tests

    inv_, prod_fs = inv, envs[2]
    with psycopg.connect(pg_cluster.dsn(prod_db)) as conn:
        originals = _originals(conn, prod_fs)
    assert len(originals) > 500
    result = restore_flow(str(SAMPLE_ZIP), "staging", anonymize=True, inventory=str(inv_))
    assert result["anonymized"] and result["neutralized"]
    dump = subprocess.run(["pg_dump", "--dbname", staging_db], capture_output=True, check=True).stdout.decode()
    assert _leftovers(dump, originals) == []
    staging_fs = envs[4]
    texts = "\n".join(p.read_bytes().decode("utf-8", "ignore") for p in staging_fs.rglob("*") if p.is_file())
    assert _leftovers(texts, originals) == []
    with pytest.raises(RefusedError, match="refusing to anonymize production"):
        restore_flow(str(SAMPLE_ZIP), "production", anonymize=True, confirm="production", inventory=str(inv))


def test_checks_catch_a_damaged_catalog_object(envs):
    from flows.backup import backup_flow
    from flows.restore import restore_flow

    inv, _, _, _, _ = envs
    backup_id = backup_flow("production", inventory=str(inv))["backup_id"]
    repo = repository_for(load_inventory(inv), "local")
    entry = next(e for e in repo.filestore_index(backup_id) if e.size > 0)
    repo.store.local_path(f"objects/{entry.sha256[:2]}/{entry.sha256}").write_bytes(b"bit rot")
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        restore_flow(backup_id, "staging", inventory=str(inv))

