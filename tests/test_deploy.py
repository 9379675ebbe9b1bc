"""Deploy, promote and rollback on a real Odoo 17.0 (tests/odoo_site.py) from a real git repository of the
user's addons: a good release updates the module and serves; every broken release (a bad view, an exception
in ``_register_hook``, an update that never ends, code that does not import) is rolled back to the exact
previous state — every table's rows, every filestore file, the previous release serving — by itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from odoops.errors import ConfigError, RefusedError
from tasks import git, snapshot
from tasks.postgres import ConnInfo
from tests.helpers import kill_group, paused_run, write_inventory
from tests.odoo_site import (
    ADMIN,
    column_exists,
    healthy,
    module_version,
    open_site,
    wait_healthy,
    with_login,
    write_addon,
)
from tests.services_odoo import xmlrpc_authenticate

ROOT = Path(__file__).resolve().parent.parent


class AddonsRepo:
    """The user's addons repository: a bare remote (what GitHub would be) and a clone the test commits in."""

    def __init__(self, folder: Path) -> None:
        self.remote, self.work = folder / "addons.git", folder / "addons-work"
        self._git("init", "--bare", "--quiet", "-b", "main", str(self.remote))
        self._git("clone", "--quiet", str(self.remote), str(self.work))
        for key, value in (("user.name", "Dev"), ("user.email", "dev@example.com")):
            self._git("-C", str(self.work), "config", key, value)

    @staticmethod
    def _git(*args: str) -> str:
        return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout.strip()

    def commit(self, version: str, message: str, **flags) -> str:
        write_addon(self.work, version, **flags)
        self._git("-C", str(self.work), "add", "-A")
        self._git("-C", str(self.work), "commit", "--quiet", "-m", message)
        self._git("-C", str(self.work), "push", "--quiet", "origin", "HEAD:main")
        return self._git("-C", str(self.work), "rev-parse", "HEAD")


@pytest.fixture
def addons(tmp_path) -> AddonsRepo:
    repo = AddonsRepo(tmp_path)
    repo.first = repo.commit("17.0.1.0.0", "acme_custom 1.0")
    return repo


def _site(folder: Path, addons: AddonsRepo, pg_cluster, sample_template, odoo_install, odoo_config_file, stage: str):
    """An environment running the repository's first commit from its release folder."""
    folder.mkdir()
    first = git.export(git.mirror(str(addons.remote)), addons.first, folder / "releases" / addons.first)
    site = open_site(folder, pg_cluster, sample_template, odoo_install, odoo_config_file, first, stage)
    site.first = first
    return site


def _entry(site, stage: str) -> dict:
    return site.environment(stage, git={"repository": str(site.addons.remote)},
                            releases_dir=str(site.first.parent))


@pytest.fixture
def site(tmp_path, addons, pg_cluster, sample_template, odoo_install, odoo_config_file, monkeypatch):
    monkeypatch.setenv("ODOOPS_CACHE", str(tmp_path / "cache"))
    site = _site(tmp_path / "staging", addons, pg_cluster, sample_template, odoo_install, odoo_config_file, "staging")
    site.addons = addons
    site.inventory = write_inventory(tmp_path / "inv.yaml", {"staging": _entry(site, "staging")})
    yield site
    site.close()


def _records(inventory: Path, environment: str) -> list[dict]:
    from typer.testing import CliRunner

    from odoops.cli import app

    listed = CliRunner().invoke(app, ["releases", environment, "-i", str(inventory), "--json"])
    assert listed.exit_code == 0, listed.output
    return json.loads(listed.stdout)


@pytest.mark.usefixtures("prefect_harness")
def test_a_good_release_updates_its_module_and_serves(site, pg_cluster, monkeypatch):
    from flows.deploy import deploy_flow
    from odoops.audit import read_audit
    from odoops.inventory import load_inventory
    from odoops.runtime import repository_for

    with_login(site, monkeypatch)
    second = site.addons.commit("17.0.1.1.0", "acme_custom: tiers", tier=True)
    result = deploy_flow("staging", ref="main", inventory=str(site.inventory))
    assert result["outcome"] == "success" and result["commit"] == second and result["modules"] == ["acme_custom"]
    assert result["checks"]["login"].startswith("ok: admin logged in")
    assert result["checks"]["version"].startswith("17.0"), "the server that answers runs the database's series"
    assert [c["subject"] for c in result["plan"]["commits"]] == ["acme_custom: tiers", "acme_custom 1.0"]
    assert column_exists(pg_cluster, site.dbname, "acme_tier") and module_version(pg_cluster, site.dbname) == \
        "17.0.1.1.0"
    assert os.readlink(site.current) == str(site.first.parent / second)
    assert healthy(site.url) and xmlrpc_authenticate(site.url, site.dbname, *ADMIN)
    [progress, done] = _records(site.inventory, "staging")
    assert progress["outcome"] == "in-progress" and done["outcome"] == "success"
    assert done["release"]["commit"] == second and done["modules_updated"] == ["acme_custom"]
    assert done["snapshot"] == result["snapshot"] and done["previous"]["path"] == str(site.first)
    [record] = read_audit(repository_for(load_inventory(site.inventory), "local").store, "staging")
    assert record["runbook"] == "deploy" and record["outcome"] == "success"

    # the next release that changes no manifest version: a restart only, no snapshot, the downtime reported
    third = site.addons.commit("17.0.1.1.0", "acme_custom: a comment", tier=True, note="reviewed")
    again = deploy_flow("staging", ref=third[:10], inventory=str(site.inventory))
    assert again["modules"] == [] and again["snapshot"] is None and 0 < again["downtime"] < 60
    assert os.readlink(site.current) == str(site.first.parent / third)
    assert _records(site.inventory, "staging")[-1]["previous"]["commit"] == second


@pytest.mark.parametrize("broken", ["bad_view", "hook_raises", "hangs", "import_error"])
@pytest.mark.usefixtures("prefect_harness")
def test_a_broken_release_is_rolled_back_to_the_exact_previous_state(site, pg_cluster, broken, monkeypatch):
    """import_error keeps the manifest version: a restart-only release whose code breaks the registry, which
    /web/health does not see and the login does."""
    from flows.deploy import DeployFailed, deploy_flow

    with_login(site, monkeypatch)
    before, logins_before = site.state(), _login_log(pg_cluster, site.dbname)
    version = "17.0.1.0.0" if broken == "import_error" else "17.0.1.1.0"
    bad = site.addons.commit(version, f"acme_custom broken: {broken}", tier=broken != "import_error", **{broken: True})
    with pytest.raises(DeployFailed) as info:
        deploy_flow("staging", ref="main", timeout_seconds=20 if broken == "hangs" else 600,
                    inventory=str(site.inventory))
    message = str(info.value)
    assert "rolled back to the exact previous state, and serves again" in message, message
    expected = {"bad_view": "odoo-bin exited 255", "hook_raises": "acme hook broken",
                "hangs": "did not finish within its time limit", "import_error": "login"}[broken]
    assert expected in message, message
    after = site.state()
    changed = sorted(t for t in set(before[0]) | set(after[0]) if before[0].get(t) != after[0].get(t))
    # the verification after the rollback logs in for real, and Odoo logs that login: the only write since
    assert changed in ([], ["public.res_users_log"]) and after[1] == before[1], \
        "every table's rows and every filestore file as before the deploy"
    assert set(logins_before) < set(_login_log(pg_cluster, site.dbname)), "the login log only grew"
    assert not column_exists(pg_cluster, site.dbname, "acme_tier") and module_version(pg_cluster, site.dbname) == \
        "17.0.1.0.0"
    assert os.readlink(site.current) == str(site.first), "the previous release is what serves"
    assert healthy(site.url) and xmlrpc_authenticate(site.url, site.dbname, *ADMIN)
    assert snapshot.snapshots(ConnInfo.from_dsn(pg_cluster.dsn()), "staging") == [], "the snapshot went back in"
    last = _records(site.inventory, "staging")[-1]
    assert last["outcome"] == "rolled back" and last["release"]["commit"] == bad
    assert last["details"]["failure"]


@pytest.mark.usefixtures("prefect_harness")
def test_rollback_of_a_restart_only_release_changes_the_code_only(site, pg_cluster):
    from flows.deploy import deploy_flow
    from flows.rollback import rollback_flow

    second = site.addons.commit("17.0.1.0.0", "acme_custom: wording", note="wording")
    deploy_flow("staging", ref="main", inventory=str(site.inventory))
    before = site.state()
    back = rollback_flow("staging", inventory=str(site.inventory))
    assert back["code_only"] and back["checks"]["problems"] == [] and back["back_to"] == str(site.first)
    assert os.readlink(site.current) == str(site.first) and healthy(site.url)
    assert site.state() == before, "no data was touched"
    last = _records(site.inventory, "staging")[-1]
    assert last["action"] == "rollback" and last["previous"]["commit"] == second and last["outcome"] == "success"


@pytest.mark.usefixtures("prefect_harness")
def test_bad_input_is_refused_before_anything_is_touched(site, tmp_path):
    import yaml

    from flows.deploy import deploy_flow

    before = site.state()
    with pytest.raises(RefusedError, match="git ref 'no-such-branch' not found in .*addons.git: push it"):
        deploy_flow("staging", ref="no-such-branch", inventory=str(site.inventory))
    site.addons.commit("16.0.1.1.0", "acme_custom for the wrong series")
    with pytest.raises(RefusedError, match=r"module acme_custom is version 16.0.1.1.0 in .*, not a 17.0 version"):
        deploy_flow("staging", ref="main", inventory=str(site.inventory))
    data = yaml.safe_load(site.inventory.read_text())
    data["environments"]["staging"]["git"] = {"repository": str(tmp_path / "nowhere.git")}
    (tmp_path / "bad-repo.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="cannot read the git repository .*nowhere.git"):
        deploy_flow("staging", ref="main", inventory=str(tmp_path / "bad-repo.yaml"))
    del data["environments"]["staging"]["git"]
    (tmp_path / "no-git.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="a deploy needs git in the inventory"):
        deploy_flow("staging", ref="main", inventory=str(tmp_path / "no-git.yaml"))
    assert site.state() == before and os.readlink(site.current) == str(site.first) and healthy(site.url)
    assert [r["outcome"] for r in _records(site.inventory, "staging")] == []


def _login_log(cluster, dbname: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(cluster.dsn(dbname)) as conn:
        return conn.execute("SELECT id, create_uid, create_date FROM res_users_log").fetchall()


@pytest.mark.usefixtures("prefect_harness")
def test_promote_to_production_waits_for_an_approval_given_in_the_ui(site, tmp_path, pg_cluster, sample_template,
                                                                      odoo_install, odoo_config_file):
    from prefect.flow_runs import resume_flow_run
    from prefect.input.actions import read_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state

    from flows.deploy import deploy_flow
    from flows.promote import promote_flow

    prod = _site(tmp_path / "production", site.addons, pg_cluster, sample_template, odoo_install, odoo_config_file,
                 "production")
    prod.addons = site.addons
    try:
        inventory = write_inventory(tmp_path / "two.yaml", {"staging": _entry(site, "staging"),
                                                            "production": _entry(prod, "production")})
        second = site.addons.commit("17.0.1.1.0", "acme_custom: tiers", tier=True)
        deploy_flow("staging", ref="main", inventory=str(inventory))
        site.addons.commit("17.0.1.2.0", "not yet on staging", tier=True)  # main moves on: promote takes staging's
        before = prod.state()

        # refused when nobody approves in time: nothing touched
        with pytest.raises(RefusedError, match="not approved within 3 s: nothing was changed"):
            promote_flow("staging", "production", approval_timeout_seconds=3, inventory=str(inventory))
        assert prod.state() == before and os.readlink(prod.current) == str(prod.first)

        outcome: dict = {}
        worker = threading.Thread(target=lambda: outcome.update(
            result=promote_flow("staging", "production", inventory=str(inventory))), daemon=True)
        worker.start()
        paused = paused_run("deploy/production")
        description = read_flow_run_input(keyset_from_paused_state(paused.state)["description"], paused.id)
        assert f"Deploy {second[:12]}" in description and "acme_custom" in description
        assert "Pre-deploy backup: `production-" in description, description
        assert "acme_custom: tiers" in description and "not yet on staging" not in description
        resume_flow_run(paused.id, run_input={"approve": True})
        worker.join(timeout=600)
        result = outcome["result"]
        assert result["commit"] == second and result["outcome"] == "success"
        assert column_exists(pg_cluster, prod.dbname, "acme_tier") and healthy(prod.url)
        assert os.readlink(prod.current) == str(prod.first.parent / second)
        last = _records(inventory, "production")[-1]
        assert last["action"] == "promote" and last["backup_id"] == result["backup_id"]
    finally:
        prod.close()


def test_a_killed_deploy_is_found_and_resume_rollback_puts_the_state_back(site, pg_cluster, tmp_path):
    """SIGKILL of odoops mid-update, as the operator's shell runs it: the next deploy refuses and names
    --resume-rollback, which stops the orphaned update and puts the snapshot and the previous release back."""
    before = site.state()
    site.addons.commit("17.0.1.1.0", "acme_custom: hangs", tier=True, hangs=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    cli = [sys.executable, "-m", "odoops"]
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen([*cli, "deploy", "staging", "--ref", "main", "-i", str(site.inventory)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = ConnInfo.from_dsn(pg_cluster.dsn())
    deadline = time.monotonic() + 180
    try:
        while not any(s.process for s in snapshot.snapshots(server, "staging")):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the update never started"
            time.sleep(0.1)
    finally:
        kill_group(proc)
    again = subprocess.run([*cli, "deploy", "staging", "--ref", "main", "-i", str(site.inventory)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "odoops deploy staging --resume-rollback" in " ".join(again.stderr.split()), \
        again.stderr
    back = subprocess.run([*cli, "deploy", "staging", "--resume-rollback", "-i", str(site.inventory)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert back.returncode == 0 and "is back" in back.stdout, back.stdout + back.stderr
    wait_healthy(site.url)
    assert site.state() == before and module_version(pg_cluster, site.dbname) == "17.0.1.0.0"
    assert os.readlink(site.current) == str(site.first)
    assert snapshot.snapshots(server, "staging") == []
    assert [r["outcome"] for r in _records(site.inventory, "staging")] == ["in-progress", "rolled back (resumed)"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_busy_environment_is_refused_with_its_holder_named(pg_cluster, tmp_path, monkeypatch):
    """Another runbook holds staging (its slot): the deploy waits its bounded turn, then names the holder."""
    from prefect import flow

    from flows.deploy import deploy_flow
    from odoops.errors import EnvironmentBusy
    from odoops.slots import environment_slot
    from tests.helpers import host_env

    inventory = write_inventory(tmp_path / "inv.yaml", {"staging": host_env(
        pg_cluster, "acme_busy", tmp_path / "fs", stage="staging", odoo_bin=["true"], stop_command=["true"],
        start_command=["true"], git={"repository": str(tmp_path / "addons.git")})})
    holding, release = threading.Event(), threading.Event()

    @flow(name="hold-staging")
    def hold() -> None:
        with environment_slot("staging"):
            holding.set()
            release.wait(120)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert holding.wait(120), "the holder never took the slot"
        monkeypatch.setenv("ODOOPS_SLOT_WAIT_SECONDS", "1")
        with pytest.raises(EnvironmentBusy, match=r"staging is busy: held by hold-staging .*still held after \d+ s: wait for it to end"):
            deploy_flow("staging", ref="main", inventory=str(inventory))
    finally:
        release.set()
        holder.join(60)


@pytest.mark.usefixtures("prefect_harness")
def test_disk_full_while_snapshotting_changes_nothing(pg_cluster, sample_template, tmp_path):
    """The snapshot deploy and upgrade share (flows/changes.py) on a filestore whose file system has no room
    left for the snapshot's folders: refused with one line, no snapshot left behind, the data as it was.
    (The upgrade runbook reaches the snapshot without a git repository.)"""
    import shutil

    from flows.upgrade import upgrade_flow
    from odoops.errors import DiskFull
    from tests.helpers import copy_sample, drop_database, file_sha1s, host_env, table_checksums

    assert os.geteuid() == 0, "this test mounts a small tmpfs: run the suite as root (CI does)"
    dbname, filestore = copy_sample(pg_cluster, sample_template, tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    folders = sum(1 for p in filestore.rglob("*") if p.is_dir()) + 1
    # room for the filestore's own folders and files (tmpfs counts an inode per folder and file), none for a copy
    inodes = folders + sum(1 for p in filestore.rglob("*") if p.is_file()) + 3
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=64m,nr_inodes={inodes}", "tmpfs", str(small)], check=True)
    try:
        live = small / dbname
        shutil.copytree(filestore, live)
        inventory = write_inventory(tmp_path / "inv.yaml", {"staging": host_env(
            pg_cluster, dbname, live, stage="staging", odoo_bin=["true"], stop_command=["true"],
            start_command=["true"])})
        before = table_checksums(pg_cluster, dbname), file_sha1s(live)
        with pytest.raises(DiskFull, match="no space left to snapshot the filestore .*nothing was changed"):
            upgrade_flow("staging", modules=["contacts"], inventory=str(inventory))
        assert (table_checksums(pg_cluster, dbname), file_sha1s(live)) == before
        assert sorted(p.name for p in small.iterdir()) == [dbname], "no half-made snapshot folder"
        assert snapshot.snapshots(ConnInfo.from_dsn(pg_cluster.dsn()), "staging") == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)
        drop_database(pg_cluster, dbname)
