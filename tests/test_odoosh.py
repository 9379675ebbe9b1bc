"""The ``odoosh`` platform against the Odoo.sh stand-in (tests/odoosh_standin.py: a real sshd as a build user
with Odoo.sh's home layout, the real Odoo 17 sample database on the tests' PostgreSQL).

Backups go through the CLI and come back identical in a self-hosted environment; logs come from
``~/logs``; what only the Odoo.sh dashboard does is refused saying where; a rebuilt branch (new build id),
a changed host key and a dump cut mid-way each end in one line that names the fix, and lose nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from odoops.cli import app
from odoops.errors import ConfigError, RefusedError
from odoops.inventory import load_inventory, odoosh_builds_file
from odoops.platforms import platform_for
from odoops.platforms.odoosh import OdooShPlatform
from odoops.runtime import repository_for
from tests.helpers import (
    copy_sample,
    drop_database_and_copies,
    file_sha1s,
    host_env,
    table_checksums,
    write_inventory,
)
from tests.odoosh_standin import OdooShStandin

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parent.parent
# what a restore changes on purpose: a copy gets its own identity and the target's URL
COPY_IDENTITY = ("database.uuid", "database.secret", "database.create_date", "web.base.url")


@pytest.fixture(scope="module")
def site(pg_cluster, sample_template, tmp_path_factory):
    """The stand-in build on a copy of the sample, and an inventory: ``sh`` (odoosh) and ``local`` (host)."""
    folder = tmp_path_factory.mktemp("odoosh")
    dbname, filestore = copy_sample(pg_cluster, sample_template, folder)
    local_db = f"{dbname}_local"
    standin = OdooShStandin(pg_cluster, dbname, filestore).start()
    inventory = write_inventory(folder / "inv.yaml", {
        "sh": {"stage": "production", "platform": "odoosh", "odoosh": standin.odoosh_block(),
               "backup": {"storage": "local"}},
        "local": host_env(pg_cluster, local_db, folder / "data" / "filestore" / local_db, stage="development"),
    })
    try:
        yield standin, inventory, local_db, folder / "data" / "filestore" / local_db
    finally:
        standin.stop()
        drop_database_and_copies(pg_cluster, dbname)


def cli(*args: str):
    """``odoops ARGS`` in this process (the session's Prefect server)."""
    return CliRunner().invoke(app, list(args))


def cli_process(*args: str) -> subprocess.CompletedProcess:
    """``python -m odoops ARGS`` as an operator runs it, against the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run([sys.executable, "-m", "odoops", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def error_line(result) -> str:
    """The one red line the CLI prints for an operator error (exit code 2)."""
    text = (result.stderr if isinstance(result, subprocess.CompletedProcess) else result.output).strip()
    assert text.startswith("error:") and "\n" not in text, text
    return text


def catalog(inventory: Path) -> list[str]:
    return [b.id for b in repository_for(load_inventory(inventory), "local").list_backups("sh")]


def params(pg_cluster, dbname: str) -> dict[str, str]:
    with psycopg.connect(pg_cluster.dsn(dbname)) as conn:
        return dict(conn.execute("SELECT key, value FROM ir_config_parameter").fetchall())


def test_the_inventory_block_is_checked(tmp_path, site):
    standin, *_ = site
    block = standin.odoosh_block()
    cases = [
        ({"odoosh": {**block, "ssh": "acme.dev.odoo.com"}}, "is not an Odoo.sh SSH address: write <build_id>@<host>"),
        ({"odoosh": block, "database": {"dsn": "postgresql://x@h/db"}}, "environments.sh.database: does not apply to "
                                                                         "platform odoosh"),
        ({}, "environments.sh.odoosh: missing; add odoosh: {project: P"),
        ({"odoosh": {**block, "branch": None}}, "environments.sh.odoosh.branch: missing"),
        ({"odoosh": {**block, "api_key": "secret"}}, "environments.sh.odoosh.api_key: unknown key"),
    ]
    for extra, message in cases:
        inv = write_inventory(tmp_path / "bad.yaml", {"sh": {"stage": "staging", "platform": "odoosh", **extra}})
        with pytest.raises(ConfigError) as caught:
            load_inventory(inv)
        assert message in str(caught.value) and "\n" not in str(caught.value)


def test_backup_over_ssh_restores_identically_elsewhere(site, pg_cluster):
    standin, inventory, local_db, local_fs = site
    home_before = {p for p in standin.home.rglob("*")}
    done = cli_process("backup", "sh", "--json", "--inventory", str(inventory))
    assert done.returncode == 0, done.stderr
    backup_id = json.loads(done.stdout)["backup_id"]
    assert {p for p in standin.home.rglob("*")} == home_before  # nothing written in the build, no dump file
    repo = repository_for(load_inventory(inventory), "local")
    manifest = repo.manifest(backup_id)
    assert manifest["db_name"] == standin.dbname  # read from the build's shell, written nowhere in the inventory
    assert manifest["odoops"]["missing_files"] == [] and manifest["odoops"]["filestore"]["files"] == 120
    config = repo.store.get_bytes(f"backups/{backup_id}/odoo.conf").decode()
    assert "admin_passwd = ***" in config and standin.admin_passwd not in config
    assert f"db_name = {standin.dbname}" in config

    verified = cli("backups", "verify", backup_id, "--inventory", str(inventory))
    assert verified.exit_code == 0, verified.output
    restored = cli("restore", backup_id, "--to", "local", "--no-neutralize", "--inventory", str(inventory))
    assert restored.exit_code == 0, restored.output
    source, copy = table_checksums(pg_cluster, standin.dbname), table_checksums(pg_cluster, local_db)
    assert copy.pop("public.ir_config_parameter") != source.pop("public.ir_config_parameter")
    assert copy == source and len(copy) > 100
    before, after = params(pg_cluster, standin.dbname), params(pg_cluster, local_db)
    assert {k: v for k, v in after.items() if k not in COPY_IDENTITY} == \
        {k: v for k, v in before.items() if k not in COPY_IDENTITY}
    assert file_sha1s(local_fs) == file_sha1s(standin.filestore) and len(file_sha1s(local_fs)) == 120


def test_the_builds_logs_feed_the_analyzer(site):
    _, inventory, *_ = site
    result = cli("logs", "env:sh", "--json", "--inventory", str(inventory))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    expected = json.loads((ROOT / "tests/fixtures/odoo-logs/expected/14-odoo17-login-failed-http500.json").read_text())
    assert summary["records"] == expected["records"] == 16
    assert summary["levels"]["ERROR"] == expected["levels"]["ERROR"] == 5
    assert summary["sources"][0]["source"].endswith("logs/odoo.log")


def test_what_only_the_dashboard_does_is_refused_saying_where(site):
    standin, inventory, *_ = site
    backup_id = catalog(inventory)[-1]
    refused = cli("restore", backup_id, "--to", "sh", "--confirm", "sh", "--inventory", str(inventory))
    assert refused.exit_code == 2
    line = error_line(refused)
    assert "sh is an Odoo.sh build, which cannot restore through odoops" in line
    assert "Odoo.sh → acme → main → Backups → Import Database" in line and "odoops backups export" in line
    drill = cli("backups", "drill", backup_id, "--inventory", str(inventory))
    assert drill.exit_code == 2 and "cannot create database" in error_line(drill)
    assert "odoops restore ID --to ENV" in error_line(drill)
    with platform_for(load_inventory(inventory).environment("sh")) as platform:
        assert isinstance(platform, OdooShPlatform)
        for operation, where in (("drop_database", "Settings"), ("switch_release", "push the release to the branch "
                                 "main"), ("upgrade", "Odoo.sh → acme → main → Upgrade")):
            with pytest.raises(RefusedError, match=where):
                platform.ensure_can(operation)
        with pytest.raises(RefusedError, match="push the release"):
            platform.change_needs()  # deploy and upgrade ask this first
        with pytest.raises(RefusedError, match="Import Database"):
            platform.filestore_folders()  # snapshots, undo
        assert platform.run(["psql", "-XAtc", "SELECT current_database()"]).stdout.decode().strip() == standin.dbname


def test_a_dump_cut_mid_way_lists_nothing(site):
    standin, inventory, *_ = site
    listed = catalog(inventory)
    root = load_inventory(inventory).storages["local"].path
    folders = set((root / "backups").iterdir())
    standin.cut_dumps_after(200_000)
    try:
        cut = cli("backup", "sh", "--inventory", str(inventory))
    finally:
        standin.heal()
    assert cut.exit_code == 2
    assert "pg_dump in the build on 127.0.0.1 ended without an exit status (killed, or the connection was cut)" \
        in error_line(cut)
    assert catalog(inventory) == listed
    assert {f for f in (root / "backups").iterdir() if (f / "manifest.json").exists()} <= folders
    assert not any(p.name.endswith(".dump") for f in set((root / "backups").iterdir()) - folders for p in f.rglob("*"))


def test_a_rebuilt_branch_names_set_ssh_then_works_at_its_new_address(site):
    standin, inventory, *_ = site
    written = inventory.read_bytes()
    old = standin.address
    new = standin.new_build()
    assert new != old
    refused = cli("backup", "sh", "--inventory", str(inventory))
    assert refused.exit_code == 2
    line = error_line(refused)
    assert f"ssh {old} refused the login" in line
    assert "Odoo.sh → acme → main → the build's Connect menu → SSH, then run odoops envs set-ssh sh" in line
    logs = cli("logs", "env:sh", "--inventory", str(inventory))  # every way in says the same
    assert logs.exit_code == 2 and "refused the login" in error_line(logs) and "envs set-ssh sh" in error_line(logs)

    typo = cli("envs", "set-ssh", "sh", "acme.dev.odoo.com", "--inventory", str(inventory))
    assert typo.exit_code == 2 and "is not an Odoo.sh SSH address" in error_line(typo)
    wrong = cli("envs", "set-ssh", "sh", old, "--inventory", str(inventory))  # checked first: never stored
    assert wrong.exit_code == 2 and "authentication failed" in error_line(wrong)
    assert not odoosh_builds_file(inventory).exists()
    done = cli("envs", "set-ssh", "sh", new, "--inventory", str(inventory))
    assert done.exit_code == 0, done.output
    assert f"now reaches build {new}, its database is {standin.dbname}" in " ".join(done.output.split())
    assert inventory.read_bytes() == written  # the operator's file is left as written
    env = load_inventory(inventory).environment("sh")
    assert (env.ssh.user, env.odoosh.address) == (standin.user, new)
    logs = cli("logs", "env:sh", "--json", "--inventory", str(inventory))
    assert logs.exit_code == 0 and json.loads(logs.output)["records"] == 16


def test_a_changed_host_key_is_refused_never_accepted(site):
    standin, inventory, *_ = site
    known = standin.known_hosts.read_text()
    standin.new_host_key()
    refused = cli("backup", "sh", "--inventory", str(inventory))
    assert refused.exit_code == 2
    line = error_line(refused)
    assert f"host key of [127.0.0.1]:{standin.port} has CHANGED" in line and "set-ssh" not in line
    assert standin.known_hosts.read_text() == known
