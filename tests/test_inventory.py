"""The inventory is validated on load: each mistake is one line naming the key and the fix."""

from __future__ import annotations

import pytest

from odoops.errors import ConfigError, UnknownEnvironmentError
from odoops.inventory import load_inventory

GOOD = """
storage:
  local: {type: local, path: ./backups}
  offsite: {type: s3, bucket: odoo-backups, prefix: acme/, endpoint_url: null, region: eu-west-1}
environments:
  production:
    stage: production
    platform: host
    database: {dsn: "postgresql://odoo@127.0.0.1:5432/acme"}
    filestore: /var/lib/odoo/filestore/acme
    url: http://127.0.0.1:8069
    backup: {storage: local, schedule: "0 2 * * *", timezone: Europe/Brussels,
             keep: {daily: 7, weekly: 4, monthly: 3}}
  staging:
    stage: staging
    platform: host
    database: {dsn: "postgresql://odoo@127.0.0.1:5432/acme_staging", password_env: STAGING_PG}
    filestore: data/filestore/acme_staging
"""


def write(tmp_path, text):
    path = tmp_path / "environments.yaml"
    path.write_text(text)
    return path


def test_the_issue_example_loads(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    prod = inv.environment("production")
    assert prod.is_production and prod.backup.timezone == "Europe/Brussels"
    assert prod.backup.keep == {"daily": 7, "weekly": 4, "monthly": 3}
    assert inv.storage("offsite").prefix == "acme/" and inv.storage("offsite").type == "s3"
    assert inv.storage("local").path == tmp_path / "backups"  # relative to the inventory file
    staging = inv.environment("staging")
    assert staging.backup.storage == "local" and staging.backup.keep == {"daily": 7, "weekly": 4, "monthly": 3}
    assert staging.filestore == str(tmp_path / "data/filestore/acme_staging")


def test_fleet_fields_site_labels_and_caps(tmp_path):
    text = GOOD.replace("    url: http", "    site: eu\n    labels: [retail, eu, retail]\n    url: http", 1)
    inv = load_inventory(write(tmp_path, "fleet: {max_backups_per_storage: 8}\n" + text))
    prod = inv.environment("production")
    assert (prod.site, prod.labels) == ("eu", ("retail", "eu"))
    assert (inv.environment("staging").site, inv.environment("staging").labels) == (None, ())
    assert (inv.fleet.max_backups_per_storage, inv.fleet.max_backups_per_db_server) == (8, 2)


def test_the_shipped_example_inventory_loads():
    from pathlib import Path

    inv = load_inventory(Path(__file__).parent.parent / "deployments" / "environments.example.yaml")
    assert "production" in inv.environments


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("stage: production", "stage: prod"), "environments.production.stage: 'prod' is not one of"),
        (("platform: host\n    database: {dsn: \"postgresql://odoo@127.0.0.1:5432/acme\"}",
          "platform: kubernetes\n    database: {dsn: \"postgresql://odoo@127.0.0.1:5432/acme\"}"),
         "environments.production.platform: 'kubernetes' is not one of host, docker, odoosh"),
        (("    filestore: /var/lib/odoo/filestore/acme\n", ""), "environments.production.filestore: missing"),
        (("keep: {daily: 7,", "keep: {daily: seven,"), "environments.production.backup.keep.daily: expected a whole"),
        (("odoo@127.0.0.1:5432/acme\"", "odoo:hunter2@127.0.0.1:5432/acme\""), "contains a password"),
        (('schedule: "0 2 * * *"', 'schedule: "at two"'), "is not a 5-field cron expression"),
        (("timezone: Europe/Brussels", "timezone: Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (('schedule: "0 2 * * *"', 'schedule: "0 2 * * 9"'),
         "environments.production.backup.schedule: '0 2 * * 9' is not a valid cron expression (bad day-of-week)"),
        (('schedule: "0 2 * * *"', 'schedule: "2am daily please"'), "is not a 5-field cron expression"),
        (("    url: http", "    site: EU West\n    url: http"), "environments.production.site: 'EU West' is not a name"),
        (("    url: http", "    labels: retail\n    url: http"), "environments.production.labels: expected a list"),
        (("environments:\n", "fleet: {max_backups_per_db_server: 0}\nenvironments:\n"),
         "fleet.max_backups_per_db_server: expected a whole number >= 1"),
        (("environments:\n", "fleet: {max_backups: 3}\nenvironments:\n"), "fleet.max_backups: unknown key"),
        (("storage: local, schedule", "storage: tape, schedule"), "no storage named 'tape'"),
        (("    url: http", "    colour: blue\n    url: http"), "environments.production.colour: unknown key"),
        (("database: {dsn: \"postgresql://odoo@127.0.0.1:5432/acme\"}", "database: [1, 2]"),
         "environments.production.database: expected a mapping"),
    ],
)
def test_bad_inventories_are_refused_with_the_key_and_the_fix(tmp_path, change, expected):
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigError) as info:
        load_inventory(write(tmp_path, GOOD.replace(old, new, 1)))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and "hunter2" not in message


def test_unknown_environment_names_the_known_ones(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    with pytest.raises(UnknownEnvironmentError, match="unknown environment 'prod'.*production, staging"):
        inv.environment("prod")


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_inventory(write(tmp_path, "environments:\n  a: [\n"))
    with pytest.raises(ConfigError, match="not found: create it"):
        load_inventory(tmp_path / "nope.yaml")


def test_commands_must_be_argument_lists_not_shell_strings(tmp_path):
    text = GOOD.replace("    url: http", "    stop_command: systemctl stop odoo; rm -rf /\n    url: http")
    with pytest.raises(ConfigError, match="must be a list of arguments"):
        load_inventory(write(tmp_path, text))


def test_odoo_sub_commands_come_before_the_inventorys_options():
    from odoops.platforms.base import odoo_command

    conf = ["/opt/odoo/odoo-bin", "-c", "/etc/odoo/odoo.conf"]
    assert odoo_command(conf, ["neutralize", "-d", "db"]) == \
        ["/opt/odoo/odoo-bin", "neutralize", "-c", "/etc/odoo/odoo.conf", "-d", "db"]
    assert odoo_command(conf, ["-u", "mail", "--stop-after-init"]) == [*conf, "-u", "mail", "--stop-after-init"]
    assert odoo_command(["python3", "odoo-bin"], ["shell", "-d", "db"]) == ["python3", "odoo-bin", "shell", "-d", "db"]
