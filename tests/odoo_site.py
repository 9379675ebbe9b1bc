"""A self-hosted Odoo 17 as an operator runs it, for the tests of the runbooks that change code and schema
(upgrade, deploy, rollback): a real ``odoo-bin`` (tests/services_odoo.py), a service script, a release layout
(``addons_path`` naming a link to a release folder) and a small custom addon ``acme_custom`` written in good and
broken versions the way real addons break."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path

import psycopg

from tests.helpers import drop_database_and_copies, file_sha1s, table_checksums

ADMIN = ("admin", "admin")

VIEW = """<odoo><record id="view_partner_form_acme" model="ir.ui.view">
  <field name="name">res.partner.form.acme</field><field name="model">res.partner</field>
  <field name="inherit_id" ref="base.view_partner_form"/>
  <field name="arch" type="xml"><field name="vat" position="after">{fields}</field></field>
</record></odoo>"""


def write_addon(addons: Path, version: str, *, tier: bool = False, bad_view: bool = False, hook_raises: bool = False,
                hangs: bool = False, import_error: bool = False, note: str = "", migration_raises: bool = False,
                deletes_partners: bool = False) -> None:
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
                                        "    _inherit = 'res.partner'\n" + "".join(f"    {f}\n" for f in fields) + hook
                                        + (f"# {note}\n" if note else "")
                                        + ("raise ImportError('acme code broken')\n" if import_error else ""))
    view_fields = '<field name="acme_code"/>' + ('<field name="acme_tier"/>' if tier else "")
    if bad_view:
        view_fields += '<field name="no_such_field"/>'
    (module / "views.xml").write_text(VIEW.format(fields=view_fields))
    migration = module / "migrations" / version
    scripts = {"pre-migrate.py": "import time\n\n\ndef migrate(cr, version):\n    time.sleep(3600)\n" if hangs else None,
               "post-migrate.py": ("def migrate(cr, version):\n    raise RuntimeError('acme migration broken')\n"
                                   if migration_raises else
                                   "def migrate(cr, version):  # 'merges duplicates' by deleting them\n"
                                   "    cr.execute(\"DELETE FROM res_partner WHERE name LIKE 'ACME duplicate%'\")\n"
                                   if deletes_partners else None)}
    for name, script in scripts.items():
        if script:
            migration.mkdir(parents=True, exist_ok=True)
            (migration / name).write_text(script)


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
        self.odoo_bin = odoo_bin
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

    def environment(self, stage: str, **extra) -> dict:
        """The site's inventory entry, as an operator writes it."""
        from tests.helpers import host_env

        return host_env(self.cluster, self.dbname, self.filestore, stage=stage, url=self.url,
                        addons_link=str(self.current), odoo_bin=[str(self.odoo_bin), "-c", str(self.config)],
                        stop_command=[str(self.ctl), "stop"], start_command=[str(self.ctl), "start"], **extra)

    def close(self) -> None:
        """Stop its Odoo; drop its database and every copy odoops made of it (snapshots, kept states)."""

        self.service("stop")
        drop_database_and_copies(self.cluster, self.dbname)


def with_login(site: Site, monkeypatch) -> None:
    """The inventory also names a login, so the runbook's own verification logs in for real."""
    import yaml

    data = yaml.safe_load(site.inventory.read_text())
    data["environments"]["staging"]["health"] = {"login": ADMIN[0], "login_password_env": "ACME_ADMIN_PASSWORD"}
    site.inventory.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("ACME_ADMIN_PASSWORD", ADMIN[1])




def open_site(folder: Path, pg_cluster, sample_template, odoo_install, odoo_config_file, release: Path,
              stage: str = "staging") -> Site:
    """A copy of the sample database with acme_custom installed from ``release`` (the folder the link
    ``folder/addons-current`` points at), served by its own Odoo, started and healthy."""
    from odoops.sandbox import free_port
    from tests.helpers import copy_sample

    dbname, filestore = copy_sample(pg_cluster, sample_template, folder)
    current = folder / "addons-current"
    current.symlink_to(release)  # the addons_path names the link, as a release layout does
    port = free_port()
    config = odoo_config_file(folder / "data", name=f"odoo-{dbname}.conf",
                              addons_path=f"{odoo_install.addons_path},{current}", http_port=port,
                              logfile=folder / "odoo-server.log", dbfilter=f"^{dbname}$")
    installed = odoo_install.run("-c", str(config), "-d", dbname, "-i", "acme_custom", "--stop-after-init")
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    site = Site(folder, pg_cluster, dbname, filestore, config, f"http://127.0.0.1:{port}", odoo_install.odoo_bin)
    site.current, site.stage = current, stage
    site.service("start")
    wait_healthy(site.url)
    return site
