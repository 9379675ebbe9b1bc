"""The upgrade runbook on a real Odoo 17.0 (tests/services_odoo.py): a custom addon written by the test, in
a good version and in broken ones, updated with ``odoo-bin -u``; every failure must put back the exact
previous state (every table's rows, every filestore file) and leave the previous code serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from odoops.errors import ConfigError, RefusedError
from tasks import snapshot
from tasks.postgres import ConnInfo
from tests.helpers import (
    copy_sample,
    drop_database,
    file_sha1s,
    host_env,
    kill_group,
    table_checksums,
    write_inventory,
)
from tests.services_odoo import xmlrpc_authenticate

ROOT = Path(__file__).resolve().parent.parent
ADMIN = ("admin", "admin")

VIEW = """<odoo><record id="view_partner_form_acme" model="ir.ui.view">
  <field name="name">res.partner.form.acme</field><field name="model">res.partner</field>
  <field name="inherit_id" ref="base.view_partner_form"/>
  <field name="arch" type="xml"><field name="vat" position="after">{fields}</field></field>
</record></odoo>"""


def write_addon(addons: Path, version: str, *, tier: bool = False, bad_view: bool = False, hook_raises: bool = False,
                hangs: bool = False) -> None:
    """The custom addon ``acme_custom`` at ``version``; each flag breaks it the way real addons break."""
    module = addons / "acme_custom"
    if module.exists():
        import shutil

        shutil.rmtree(module)
    module.mkdir(parents=True)
    (module / "__manifest__.py").write_text(repr({"name": "ACME custom", "version": version, "depends": ["contacts"],
                                                  "data": ["views.xml"], "license": "LGPL-3"}))
    fields = ["acme_code = fields.Char()"] + (["acme_tier = fields.Selection([('a', 'A'), ('b', 'B')])"]
                                               if tier else [])
    hook = ("\n    def _register_hook(self):\n        raise RuntimeError('acme hook broken')\n" if hook_raises else "")
    (module / "__init__.py").write_text("from odoo import fields, models\n\n\nclass Partner(models.Model):\n"
                                        "    _inherit = 'res.partner'\n" + "".join(f"    {f}\n" for f in fields) + hook)
    view_fields = '<field name="acme_code"/>' + ('<field name="acme_tier"/>' if tier else "")
    if bad_view:
        view_fields += '<field name="no_such_field"/>'
    (module / "views.xml").write_text(VIEW.format(fields=view_fields))
    if hangs:
        migration = module / "migrations" / version
        migration.mkdir(parents=True)
        (migration / "pre-migrate.py").write_text("import time\n\n\ndef migrate(cr, version):\n    time.sleep(3600)\n")


def column_exists(cluster, dbname: str, column: str) -> bool:
    with psycopg.connect(cluster.dsn(dbname)) as conn:
        return conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'res_partner' "
                            "AND column_name = %s", (column,)).fetchone() is not None


def module_version(cluster, dbname: str) -> str:
    with psycopg.connect(cluster.dsn(dbname)) as conn:
        return conn.execute("SELECT latest_version FROM ir_module_module WHERE name = 'acme_custom'").fetchone()[0]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/web/health", timeout=2) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read()).get("status") == "pass"
    except OSError:
        return False


def wait_healthy(url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not healthy(url):
        assert time.monotonic() < deadline, f"Odoo at {url} never became healthy"
        time.sleep(0.2)


class Site:
    """One self-hosted Odoo as an operator runs it: a config, addons, a service script (start/stop)."""

    def __init__(self, tmp_path: Path, cluster, dbname: str, filestore: Path, config: Path, url: str,
                 odoo_bin: Path) -> None:
        self.cluster, self.dbname, self.filestore, self.config, self.url = cluster, dbname, filestore, config, url
        self.ctl = tmp_path / "odoo-service.sh"
        pid, out = tmp_path / "odoo.pid", tmp_path / "odoo-service.out"
        # like `systemctl start|stop odoo`: start returns at once, stop waits until the process is gone
        self.ctl.write_text(textwrap.dedent(f"""\
            #!/bin/sh
            case "$1" in
            start) if [ -f "{pid}" ] && kill -0 "$(cat "{pid}")" 2>/dev/null; then exit 0; fi
                   setsid "{odoo_bin}" -c "{config}" >>"{out}" 2>&1 </dev/null &
                   echo $! >"{pid}" ;;
            stop)  if [ -f "{pid}" ]; then p=$(cat "{pid}"); kill "$p" 2>/dev/null
                   while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; rm -f "{pid}"; fi ;;
            esac
            """))
        self.ctl.chmod(0o755)

    def service(self, action: str) -> None:
        subprocess.run([str(self.ctl), action], check=True, timeout=120)

    def state(self) -> tuple[dict[str, str], dict[str, str]]:
        return table_checksums(self.cluster, self.dbname), file_sha1s(self.filestore)


@pytest.fixture
def site(tmp_path, pg_cluster, sample_template, odoo_install, odoo_db_role, odoo_config_file):
    """A staging copy of the sample with acme_custom 17.0.1.0.0 installed, served by its own Odoo."""
    from odoops.sandbox import free_port

    dbname, filestore = copy_sample(pg_cluster, sample_template, tmp_path)
    releases, current = tmp_path / "releases", tmp_path / "addons-current"
    write_addon(releases / "v1", "17.0.1.0.0")
    current.symlink_to(releases / "v1")  # the addons_path names the link, as a release layout does
    port = free_port()
    config = odoo_config_file(tmp_path / "data", addons_path=f"{odoo_install.addons_path},{current}", http_port=port,
                              logfile=tmp_path / "odoo-server.log", dbfilter=f"^{dbname}$")
    installed = odoo_install.run("-c", str(config), "-d", dbname, "-i", "acme_custom", "--stop-after-init")
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    site = Site(tmp_path, pg_cluster, dbname, filestore, config, f"http://127.0.0.1:{port}", odoo_install.odoo_bin)
    site.releases, site.current = releases, current
    site.inventory = write_inventory(tmp_path / "inv.yaml", {"staging": host_env(
        pg_cluster, dbname, filestore, stage="staging", url=site.url, addons_link=str(current),
        odoo_bin=[str(odoo_install.odoo_bin), "-c", str(config)],
        stop_command=[str(site.ctl), "stop"], start_command=[str(site.ctl), "start"])})
    site.service("start")
    wait_healthy(site.url)
    yield site
    site.service("stop")
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{dbname}%",))]
    for name in names:
        drop_database(pg_cluster, name)


def with_login(site: Site, monkeypatch) -> None:
    """The inventory also names a login, so the runbook's own verification logs in for real."""
    import yaml

    data = yaml.safe_load(site.inventory.read_text())
    data["environments"]["staging"]["health"] = {"login": ADMIN[0], "login_password_env": "ACME_ADMIN_PASSWORD"}
    site.inventory.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("ACME_ADMIN_PASSWORD", ADMIN[1])


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


@pytest.mark.parametrize("broken", ["bad_view", "hook_raises", "hangs"])
@pytest.mark.usefixtures("prefect_harness")
def test_a_broken_update_puts_back_the_exact_previous_state(site, pg_cluster, broken):
    from flows.upgrade import UpgradeFailed, upgrade_flow

    before = site.state()
    write_addon(site.releases / "v2", "17.0.1.1.0", tier=True, **{broken: True})
    started = time.monotonic()
    with pytest.raises(UpgradeFailed) as info:
        upgrade_flow("staging", modules=["acme_custom"], code=str(site.releases / "v2"),
                     timeout_seconds=20 if broken == "hangs" else 600, inventory=str(site.inventory))
    message = str(info.value)
    assert "rolled back to the exact previous state, and serves again" in message, message
    expected = {"bad_view": "odoo-bin exited 255", "hook_raises": "acme hook broken",
                "hangs": "did not finish within its time limit"}[broken]
    assert expected in message, message
    if broken == "hangs":
        assert time.monotonic() - started < 180, "killed at its limit, not left to hang"
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


def test_a_killed_upgrade_is_found_and_resume_rollback_puts_the_state_back(site, pg_cluster, tmp_path):
    """SIGKILL of the whole odoops process group while the update runs: the update itself (its own session)
    may go on; the next upgrade refuses and names --resume-rollback, which stops it and puts the state back."""
    before = site.state()
    write_addon(site.releases / "v2", "17.0.1.1.0", tier=True, hangs=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
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
    assert replaced.code == {"link": str(site.current), "previous": str(site.releases / "v2")}
