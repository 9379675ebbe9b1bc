"""The upgrade runbook on a real Odoo 17.0 (tests/services_odoo.py): a custom addon written by the test, in
a good version and in broken ones, updated with ``odoo-bin -u``; every failure must put back the exact
previous state (every table's rows, every filestore file) and leave the previous code serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from odoops.errors import ConfigError, RefusedError
from tasks import snapshot
from tasks.postgres import ConnInfo
from tests.helpers import (
    kill_group,
    write_inventory,
)
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

@pytest.fixture
def site(tmp_path, pg_cluster, sample_template, odoo_install, odoo_config_file):
    """A staging copy of the sample with acme_custom 17.0.1.0.0 installed, served by its own Odoo."""
    releases = tmp_path / "releases"
    write_addon(releases / "v1", "17.0.1.0.0")
    site = open_site(tmp_path, pg_cluster, sample_template, odoo_install, odoo_config_file, releases / "v1")
    site.releases = releases
    site.inventory = write_inventory(tmp_path / "inv.yaml", {"staging": site.environment("staging")})
    yield site
    site.close()


@pytest.mark.usefixtures("prefect_harness")
def test_a_good_update_adds_the_column_and_serves(site, pg_cluster, monkeypatch):
    from flows.upgrade import upgrade_flow
    from odoops.audit import read_audit
    from odoops.inventory import load_inventory
    from odoops.runtime import repository_for

    with_login(site, monkeypatch)
    write_addon(site.releases / "v2", "17.0.1.1.0", tier=True)
    result = upgrade_flow("staging", modules=["acme_custom"], code=str(site.releases / "v2"),
                          inventory=str(site.inventory))
    assert result["outcome"] == "success" and result["versions"]["acme_custom"] == ("17.0.1.0.0", "17.0.1.1.0")
    assert result["checks"]["login"].startswith("ok: admin logged in") and result["checks"]["problems"] == []
    assert column_exists(pg_cluster, site.dbname, "acme_tier") and module_version(pg_cluster, site.dbname) == \
        "17.0.1.1.0"
    assert healthy(site.url) and xmlrpc_authenticate(site.url, site.dbname, *ADMIN)
    assert os.readlink(site.current) == str(site.releases / "v2")
    [kept] = snapshot.snapshots(ConnInfo.from_dsn(pg_cluster.dsn()), "staging")
    assert kept.state == "kept" and kept.database == result["snapshot"]
    [record] = read_audit(repository_for(load_inventory(site.inventory), "local").store, "staging")
    assert record["runbook"] == "upgrade" and record["outcome"] == "success"


# The other ways a release breaks (a bad view, an exception in _register_hook, an update that never ends, code
# that does not import) go through the same change machinery (flows/changes.py): tests/test_deploy.py shows each.
@pytest.mark.parametrize("broken", ["migration_raises", "deletes_partners"])
@pytest.mark.usefixtures("prefect_harness")
def test_a_broken_update_puts_back_the_exact_previous_state(site, pg_cluster, broken):
    from flows.upgrade import UpgradeFailed, upgrade_flow

    with psycopg.connect(pg_cluster.dsn(site.dbname), autocommit=True) as conn:  # what a bad migration may delete
        conn.execute("INSERT INTO res_partner (name, active, type) "
                     "SELECT 'ACME duplicate ' || i, true, 'contact' FROM generate_series(1, 12) i")
    before = site.state()
    write_addon(site.releases / "v2", "17.0.1.1.0", tier=True, **{broken: True})
    with pytest.raises(UpgradeFailed) as info:
        upgrade_flow("staging", modules=["acme_custom"], code=str(site.releases / "v2"), inventory=str(site.inventory))
    message = str(info.value)
    assert "rolled back to the exact previous state, and serves again" in message, message
    expected = {"migration_raises": "acme migration broken",
                "deletes_partners": "the update deleted rows: res_partner went from"}[broken]
    assert expected in message, message
    assert site.state() == before, "every table's rows and every filestore file as before the update"
    assert not column_exists(pg_cluster, site.dbname, "acme_tier")  # a failed _register_hook had committed it
    assert module_version(pg_cluster, site.dbname) == "17.0.1.0.0"
    assert os.readlink(site.current) == str(site.releases / "v1"), "the previous code is what serves"
    assert healthy(site.url) and xmlrpc_authenticate(site.url, site.dbname, *ADMIN)
    assert snapshot.snapshots(ConnInfo.from_dsn(pg_cluster.dsn()), "staging") == [], "the snapshot went back in"


@pytest.mark.usefixtures("prefect_harness")
def test_preflight_refusals_touch_nothing(site, pg_cluster, tmp_path):
    from flows.upgrade import upgrade_flow

    before = site.state()
    with psycopg.connect(pg_cluster.dsn(site.dbname)) as conn:
        uninstalled = conn.execute("SELECT name FROM ir_module_module WHERE state = 'uninstalled' "
                                   "ORDER BY name LIMIT 1").fetchone()
    for modules, refusal in [(["no_such_module"], "unknown module 'no_such_module'"),
                             *([([uninstalled[0]], "not installed: an update run only updates installed modules")]
                               if uninstalled else [])]:
        with pytest.raises(RefusedError, match=refusal):
            upgrade_flow("staging", modules=modules, inventory=str(site.inventory))
    write_addon(site.releases / "v16", "16.0.1.1.0")
    with pytest.raises(RefusedError, match=r"version 16.0.1.1.0 in .*, not a 17.0 version"):
        upgrade_flow("staging", modules=["acme_custom"], code=str(site.releases / "v16"), inventory=str(site.inventory))
    with pytest.raises(RefusedError, match="module acme_custom is not in the new code"):
        upgrade_flow("staging", modules=["acme_custom"], code=str(tmp_path), inventory=str(site.inventory))
    with pytest.raises(ConfigError, match="not both"):
        upgrade_flow("staging", modules=["acme_custom"], all_modules=True, inventory=str(site.inventory))
    import yaml

    data = yaml.safe_load(site.inventory.read_text())
    del data["environments"]["staging"]["stop_command"]
    (tmp_path / "no-stop.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="an upgrade needs stop_command"):
        upgrade_flow("staging", modules=["acme_custom"], inventory=str(tmp_path / "no-stop.yaml"))
    assert site.state() == before and healthy(site.url), "Odoo kept serving: nothing was stopped"
    assert os.readlink(site.current) == str(site.releases / "v1")
    assert snapshot.snapshots(ConnInfo.from_dsn(pg_cluster.dsn()), "staging") == []


@pytest.mark.usefixtures("prefect_harness")
def test_a_major_upgrade_on_a_host_checks_its_target_tree_first(site, odoo_install, tmp_path):
    """--to SERIES --odoo TREE: the tree's own release number, every installed module in the addons path the
    config names (the links swapped for the new tree and release), custom manifests at SERIES; refused before
    anything is touched. An "18.0 tree" here is the real 17.0 tree's addons beside a release.py saying 18.0:
    only its files are read."""
    import yaml

    from flows.upgrade import upgrade_flow

    with pytest.raises(ConfigError, match="--odoo needs odoo_link in the inventory"):
        upgrade_flow("staging", to_series="18.0", odoo_tree=str(odoo_install.root), inventory=str(site.inventory))
    link = tmp_path / "odoo-current"
    link.symlink_to(odoo_install.root)
    # as a host laid out for it is configured: Odoo's own addons through the link (read at the next start only)
    config = site.config.read_text()
    paths = next(line for line in config.splitlines() if line.startswith("addons_path"))
    site.config.write_text(config.replace(paths, f"addons_path = {link}/addons,{link}/odoo/addons,{site.current}"))
    data = yaml.safe_load(site.inventory.read_text())
    data["environments"]["staging"]["odoo_link"] = str(link)
    site.inventory.write_text(yaml.safe_dump(data))
    fake = tmp_path / "odoo-18.0"
    (fake / "odoo").mkdir(parents=True)
    (fake / "odoo" / "release.py").write_text((odoo_install.root / "odoo" / "release.py").read_text().replace(
        "version_info = (17, 0,", "version_info = (18, 0,"))
    (fake / "odoo" / "addons").symlink_to(odoo_install.root / "odoo" / "addons")
    before = site.state()
    for tree, refusal in [(odoo_install.root, "the target reports Odoo 17.0, not 18.0"),
                          (tmp_path / "no-tree", "is not an Odoo tree"),
                          (fake, "installed modules .* not in the target's addons path")]:
        with pytest.raises(RefusedError, match=refusal):
            upgrade_flow("staging", to_series="18.0", odoo_tree=str(tree), inventory=str(site.inventory))
    (fake / "addons").symlink_to(odoo_install.root / "addons")
    with pytest.raises(RefusedError, match="module acme_custom is version 17.0.1.0.0 in the target, not a 18.0"):
        upgrade_flow("staging", to_series="18.0", odoo_tree=str(fake), inventory=str(site.inventory))
    with pytest.raises(RefusedError, match="the database already runs Odoo 17.0: --to 17.0 is not an upgrade"):
        upgrade_flow("staging", to_series="17.0", odoo_tree=str(odoo_install.root), inventory=str(site.inventory))
    assert site.state() == before and healthy(site.url), "Odoo kept serving: nothing was stopped"
    assert os.readlink(site.current) == str(site.releases / "v1") and os.readlink(link) == str(odoo_install.root)


def test_a_killed_upgrade_is_found_and_resume_rollback_puts_the_state_back(site, pg_cluster, tmp_path):
    """SIGKILL of the whole odoops process group while the update runs: the update itself (its own session)
    may go on; the next upgrade refuses and names --resume-rollback, which stops it and puts the state back."""
    before = site.state()
    write_addon(site.releases / "v2", "17.0.1.1.0", tier=True, hangs=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    cli = [sys.executable, "-m", "odoops"]
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen([*cli, "upgrade", "staging", "--modules", "acme_custom", "--code",
                             str(site.releases / "v2"), "-i", str(site.inventory)],
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
    [pending] = snapshot.snapshots(server, "staging")
    assert pending.state == "in-progress" and not healthy(site.url), "killed with Odoo stopped, mid-update"
    from typer.testing import CliRunner

    from odoops.cli import app

    checked = CliRunner().invoke(app, ["envs", "check", "staging", "-i", str(site.inventory), "--json"])
    found = {c["check"]: c for c in json.loads(checked.stdout)}["interrupted runs"]
    assert checked.exit_code == 1 and not found["ok"] and "--resume-rollback" in found["detail"], checked.stdout

    again = subprocess.run([*cli, "upgrade", "staging", "--modules", "acme_custom", "-i", str(site.inventory)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "odoops upgrade staging --resume-rollback" in " ".join(again.stderr.split()), \
        again.stderr
    back = subprocess.run([*cli, "upgrade", "staging", "--resume-rollback", "-i", str(site.inventory)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert back.returncode == 0 and "is back" in back.stdout, back.stdout + back.stderr
    assert not any(holder_alive(pending.process)), "the orphaned update was stopped first"
    wait_healthy(site.url)
    assert site.state() == before and module_version(pg_cluster, site.dbname) == "17.0.1.0.0"
    assert os.readlink(site.current) == str(site.releases / "v1")
    assert snapshot.snapshots(server, "staging") == []


def holder_alive(process: dict) -> list[bool]:
    from odoops import holders

    return [not holders.liveness(process, 0).dead]


@pytest.mark.parametrize("version", ["good", "bad_view"])
@pytest.mark.usefixtures("prefect_harness")
def test_a_rehearsal_reports_and_never_touches_the_environment(site, pg_cluster, version):
    from flows.upgrade_rehearsal import rehearse_upgrade_flow

    before = site.state()
    write_addon(site.releases / "v2", "17.0.1.1.0", tier=True, bad_view=version == "bad_view")
    if version == "good":
        result = rehearse_upgrade_flow("staging", modules=["acme_custom"], code=str(site.releases / "v2"),
                                       inventory=str(site.inventory))
    else:  # as the operator types it; a verdict of failure is exit code 1
        from prefect.settings import PREFECT_API_URL

        typed = subprocess.run([sys.executable, "-m", "odoops", "upgrade", "staging", "--modules", "acme_custom",
                                "--code", str(site.releases / "v2"), "--rehearse", "--json", "-i", str(site.inventory)],
                               cwd=ROOT, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
                               capture_output=True, text=True, timeout=600)
        assert typed.returncode == 1, typed.stderr[-2000:]  # the report, and exit 1: the runbook found a problem
        result = json.loads(typed.stdout)
    if version == "good":
        assert result["verdict"] == "would succeed" and result["errors"] == []
        assert result["modules_after"]["acme_custom"]["version"] == "17.0.1.0.0 → 17.0.1.1.0"
    else:
        assert result["verdict"].startswith("would fail: odoo-bin exited 255")
        assert any("ParseError" in e["signature"] for e in result["errors"]), result["errors"]
        assert result["modules_after"]["acme_custom"]["version"] == "17.0.1.0.0 → 17.0.1.0.0"
    assert set(result["phases"]) == {"backup", "copy", "update"} and result["backup_id"].startswith("staging-")
    # the environment: same rows, same files, same code, still serving; no scratch copy left behind
    assert site.state() == before and not column_exists(pg_cluster, site.dbname, "acme_tier")
    assert os.readlink(site.current) == str(site.releases / "v1") and healthy(site.url)
    with psycopg.connect(pg_cluster.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'odoops_scratch_rehearsal%'"
                            ).fetchone()[0] == 0
    assert not list(site.filestore.parent.glob("odoops_scratch_rehearsal*"))


@pytest.mark.usefixtures("prefect_harness")
def test_rollback_after_a_success_needs_restore_data_and_keeps_the_replaced_state(site, pg_cluster):
    from flows.rollback import rollback_flow
    from flows.upgrade import upgrade_flow

    before = site.state()
    write_addon(site.releases / "v2", "17.0.1.1.0", tier=True)
    upgrade_flow("staging", modules=["acme_custom"], code=str(site.releases / "v2"), inventory=str(site.inventory))
    with psycopg.connect(pg_cluster.dsn(site.dbname), autocommit=True) as conn:  # a write made after the upgrade
        conn.execute("UPDATE res_partner SET acme_tier = 'a' WHERE id = 3")
    after_upgrade = site.state()
    with pytest.raises(RefusedError, match=r"would be lost from the live state .*--restore-data"):
        rollback_flow("staging", inventory=str(site.inventory))
    assert site.state() == after_upgrade, "refused: nothing touched"

    result = rollback_flow("staging", restore_data=True, inventory=str(site.inventory))
    assert result["checks"]["problems"] == [] and site.state() == before
    assert not column_exists(pg_cluster, site.dbname, "acme_tier") and module_version(pg_cluster, site.dbname) == \
        "17.0.1.0.0"
    assert os.readlink(site.current) == str(site.releases / "v1") and xmlrpc_authenticate(site.url, site.dbname,
                                                                                            *ADMIN)
    kept = result["replaced_kept_as"]  # the way forward again: the upgraded state with its write
    with psycopg.connect(pg_cluster.dsn(kept)) as conn:
        assert conn.execute("SELECT acme_tier FROM res_partner WHERE id = 3").fetchone() == ("a",)
    [replaced] = [s for s in snapshot.snapshots(ConnInfo.from_dsn(pg_cluster.dsn()), "staging") if s.database == kept]
    assert replaced.code == {"previous": {"path": str(site.releases / "v2")}}


@pytest.mark.usefixtures("prefect_harness")
def test_production_waits_for_an_approval_that_shows_the_last_rehearsal(site, pg_cluster, monkeypatch):
    import threading

    import yaml
    from prefect.flow_runs import resume_flow_run
    from prefect.input.actions import read_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state

    from flows.upgrade import upgrade_flow
    from flows.upgrade_rehearsal import rehearse_upgrade_flow
    from odoops.audit import read_audit
    from odoops.inventory import load_inventory
    from odoops.runtime import repository_for
    from tests.helpers import paused_run

    data = yaml.safe_load(site.inventory.read_text())
    data["environments"] = {"production": {**data["environments"]["staging"], "stage": "production"}}
    site.inventory.write_text(yaml.safe_dump(data))
    write_addon(site.releases / "v2", "17.0.1.1.0", tier=True)
    rehearse_upgrade_flow("production", modules=["acme_custom"], code=str(site.releases / "v2"),
                          inventory=str(site.inventory))
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(result=upgrade_flow(
        "production", modules=["acme_custom"], code=str(site.releases / "v2"), inventory=str(site.inventory))),
        daemon=True)
    worker.start()
    paused = paused_run("upgrade/production")
    description = read_flow_run_input(keyset_from_paused_state(paused.state)["description"], paused.id)
    assert "Last rehearsal: rehearsal of" in description and "**would succeed**" in description, description
    assert "Pre-upgrade backup: `production-" in description and "acme_custom" in description
    assert not column_exists(pg_cluster, site.dbname, "acme_tier"), "nothing changed while it waits"
    resume_flow_run(paused.id, run_input={"approve": True})
    worker.join(timeout=600)
    assert outcome["result"]["outcome"] == "success" and column_exists(pg_cluster, site.dbname, "acme_tier")
    runbooks = [r["runbook"] for r in read_audit(repository_for(load_inventory(site.inventory), "local").store,
                                                  "production")]
    assert runbooks[-1] == "upgrade" and "upgrade-rehearsal" in runbooks


def test_upgrade_commands_compose_the_documented_invocations(tmp_path):
    from odoops.inventory import UpgradeCommand
    from tasks.odoo import upgrade_argv

    log = tmp_path / "u.log"
    assert upgrade_argv(None, "acme", ["a", "b"], log) == ["-d", "acme", "-u", "a,b", "--stop-after-init", "--no-http"]
    openupgrade = UpgradeCommand("openupgrade", "openupgrade", upgrade_path="/srv/ou/scripts")
    assert upgrade_argv(openupgrade, "acme", None, log) == [
        "-d", "acme", "-u", "all", "--stop-after-init", "--no-http", "--upgrade-path=/srv/ou/scripts",
        "--load=base,web,openupgrade_framework"]
    script = UpgradeCommand("mine", "script", argv=("/srv/upgrade", "--db={database}", "{modules}", "{logfile}"))
    assert upgrade_argv(script, "acme", None, log) == ["/srv/upgrade", "--db=acme", "all", str(log)]


@pytest.mark.parametrize(("spec", "message"), [
    ({"mine": {"kind": "magic"}}, "upgrade_commands.mine.kind"),
    ({"mine": {"kind": "script"}}, "upgrade_commands.mine.argv: missing"),
    ({"ou": {"kind": "openupgrade"}}, "upgrade_commands.ou"),
    ({"mine": {"kind": "script", "argv": ["x"], "timeout": -1}}, "timeout: expected seconds > 0"),
])
def test_bad_upgrade_commands_are_refused_on_load(tmp_path, spec, message):
    from odoops.inventory import load_inventory

    inventory = write_inventory(tmp_path / "inv.yaml", {"staging": {
        "stage": "staging", "platform": "host", "database": {"dsn": "postgresql://odoo@127.0.0.1:5432/acme"},
        "filestore": str(tmp_path / "fs"), "upgrade_commands": spec}})
    with pytest.raises(ConfigError, match=message):
        load_inventory(inventory)


@pytest.mark.usefixtures("prefect_harness")
def test_a_script_upgrade_command_runs_and_its_failure_is_rolled_back(site, pg_cluster, tmp_path):
    """--command NAME runs the inventory's own upgrade script (here: a company's script that migrates data
    with psql and fails, then one that wraps odoo-bin -u); the failing one is rolled back like any update."""
    import yaml

    from flows.upgrade import UpgradeFailed, upgrade_flow

    broken, wrapper = tmp_path / "upgrade-acme-broken.sh", tmp_path / "upgrade-acme.sh"
    broken.write_text('#!/bin/sh\npsql -v ON_ERROR_STOP=1 -q -d "$1" -c "ALTER TABLE res_partner ADD COLUMN '
                      'x_half_migrated integer" && echo "data migration step 2 failed" >&2\nexit 3\n')
    wrapper.write_text(f'#!/bin/sh\nexec "{site.odoo_bin}" -c "{site.config}" -d "$1" -u "$2" --stop-after-init '
                       '--no-http --logfile "$3"\n')
    for script in (broken, wrapper):
        script.chmod(0o755)
    data = yaml.safe_load(site.inventory.read_text())
    data["environments"]["staging"]["upgrade_commands"] = {
        "broken": {"kind": "script", "argv": [str(broken), "{database}"], "timeout": 120},
        "company": {"kind": "script", "argv": [str(wrapper), "{database}", "{modules}", "{logfile}"], "timeout": 600}}
    site.inventory.write_text(yaml.safe_dump(data))
    before = site.state()
    with pytest.raises(UpgradeFailed, match="upgrade-acme-broken.sh exited 3: rolled back to the exact previous"):
        upgrade_flow("staging", modules=["acme_custom"], command="broken", inventory=str(site.inventory))
    assert site.state() == before and not column_exists(pg_cluster, site.dbname, "x_half_migrated")
    with pytest.raises(ConfigError, match=r"no upgrade command 'nope' \(known: update, broken, company\)"):
        upgrade_flow("staging", modules=["acme_custom"], command="nope", inventory=str(site.inventory))

    write_addon(site.releases / "v2", "17.0.1.1.0", tier=True)
    result = upgrade_flow("staging", modules=["acme_custom"], code=str(site.releases / "v2"), command="company",
                          inventory=str(site.inventory))
    assert result["outcome"] == "success" and column_exists(pg_cluster, site.dbname, "acme_tier")
    assert module_version(pg_cluster, site.dbname) == "17.0.1.1.0" and healthy(site.url)


@pytest.mark.usefixtures("prefect_harness")
def test_the_database_unreachable_mid_run_names_resume_rollback_which_puts_it_back(site, pg_cluster, tmp_path):
    """The database server becomes unreachable while the upgrade command runs and stays so through the rollback:
    the run fails saying the previous state could not be put back and naming the command that does it; once the
    server is reachable again, that command restores the exact previous state."""
    import threading

    import yaml

    from flows.changes import ChangeFailed
    from flows.upgrade import upgrade_flow
    from tests.tcp_outage import TcpOutage

    outage = TcpOutage("127.0.0.1", pg_cluster.port)
    running, script = tmp_path / "upgrading", tmp_path / "upgrade-acme.sh"
    script.write_text(f'#!/bin/sh\ntouch "{running}"\nsleep 3\n')
    script.chmod(0o755)
    data = yaml.safe_load(site.inventory.read_text())
    staging = data["environments"]["staging"]
    staging["database"]["dsn"] = f"postgresql://postgres@127.0.0.1:{outage.port}/{site.dbname}"
    staging["upgrade_commands"] = {"slow": {"kind": "script", "argv": [str(script)], "timeout": 60}}
    site.inventory.write_text(yaml.safe_dump(data))
    before = site.state()

    def cut_while_it_runs() -> None:
        while not running.exists():
            time.sleep(0.05)
        outage.cut()

    threading.Thread(target=cut_while_it_runs, daemon=True).start()
    try:
        with pytest.raises(ChangeFailed) as info:
            upgrade_flow("staging", modules=["acme_custom"], command="slow", inventory=str(site.inventory))
        message = str(info.value)
        assert "putting the previous state back failed too" in message, message
        assert "run odoops upgrade staging --resume-rollback" in message, message
        outage.heal()
        back = upgrade_flow("staging", resume_rollback=True, inventory=str(site.inventory))
        assert back["checks"]["problems"] == [], back
    finally:
        outage.close()
    wait_healthy(site.url)
    assert site.state() == before and module_version(pg_cluster, site.dbname) == "17.0.1.0.0"
    assert snapshot.snapshots(ConnInfo.from_dsn(pg_cluster.dsn()), "staging") == []
