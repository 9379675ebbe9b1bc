"""The odoops command as an operator types it: listings in JSON, exit codes, one-line errors."""

from __future__ import annotations

import json
import zipfile

import pytest
from typer.testing import CliRunner

from odoops.cli import app
from tests.helpers import host_env, write_inventory

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def inv(tmp_path, pg_cluster, odoo_db):
    dbname, filestore = odoo_db
    return str(write_inventory(tmp_path / "inv.yaml", {"production": host_env(pg_cluster, dbname, filestore),
                                                         "staging": host_env(pg_cluster, "nope", tmp_path / "nofs",
                                                                             stage="staging")}))


def run(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result


def test_a_day_of_operations(inv, tmp_path):
    listing = run("envs", "list", "--inventory", inv, "--json")
    assert listing.exit_code == 0
    assert {e["name"]: e["stage"] for e in json.loads(listing.stdout)} == {"production": "production",
                                                                           "staging": "staging"}
    check = run("envs", "check", "production", "--inventory", inv, "--json")
    assert check.exit_code == 0 and all(c["ok"] for c in json.loads(check.stdout))
    bad = run("envs", "check", "staging", "--inventory", inv, "--json")
    assert bad.exit_code == 1
    assert {c["check"]: c["ok"] for c in json.loads(bad.stdout)} == {"database": False, "filestore": False}

    made = run("backup", "production", "--inventory", inv, "--json")
    assert made.exit_code == 0, made.output
    backup_id = json.loads(made.stdout)["backup_id"]
    listed = json.loads(run("backups", "list", "--inventory", inv, "--json").stdout)
    assert [(b["id"], b["kind"], b["verification"]) for b in listed] == [(backup_id, "manual", "unverified")]

    assert run("backups", "verify", backup_id, "--inventory", inv).exit_code == 0
    drilled = run("backups", "drill", backup_id, "--inventory", inv)
    assert drilled.exit_code == 0 and "drill passed" in drilled.stdout
    assert json.loads(run("backups", "list", "production", "--inventory", inv, "--json").stdout)[0][
        "verification"] == "drilled"

    out = tmp_path / "export.zip"
    assert run("backups", "export", backup_id, "-o", str(out), "--inventory", inv).exit_code == 0
    assert zipfile.ZipFile(out).namelist()[:2] == ["dump.sql", "manifest.json"]
    again = run("backups", "export", backup_id, "-o", str(out), "--inventory", inv)
    assert again.exit_code == 2 and "already exists" in again.stderr

    assert run("backups", "pin", backup_id, "--inventory", inv).exit_code == 0
    assert json.loads(run("backups", "list", "--inventory", inv, "--json").stdout)[0]["pinned"] is True
    pruned = run("backups", "prune", "--inventory", inv)
    assert pruned.exit_code == 0 and "dry run: nothing deleted" in pruned.stdout

    history = json.loads(run("history", "production", "--inventory", inv, "--json").stdout)
    assert [r["runbook"] for r in history] == ["backup", "verify", "drill", "pin"]
    assert all(r["environment"] == "production" and r["outcome"] == "success" for r in history)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("backup", "prod"), "unknown environment 'prod'"),
        (("backups", "verify", "production-20200101T000000Z-dead"), "no complete backup"),
        (("backups", "export", "production-20200101T000000Z-dead", "-o", "x.zip", "--format", "tar"),
         "unknown export format 'tar'"),
        (("backup", "production", "--kind", "weekly"), "unknown backup kind 'weekly'"),
        (("history", "nowhere"), "unknown environment 'nowhere'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(inv, args, message):
    result = run(*args, "--inventory", inv)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_missing_inventory(tmp_path):
    result = run("envs", "list", "--inventory", str(tmp_path / "nothing.yaml"))
    assert result.exit_code == 2 and "not found: create it" in result.stderr


@pytest.mark.parametrize("command", [["backups", "list", "--json"], ["history", "--json"], ["releases", "production",
                                                                                            "--json"]])
def test_read_only_commands_never_import_prefect(inv, command):
    """A listing is one process that answers at once: no Prefect import (a second or more before anything)."""
    import subprocess
    import sys
    from pathlib import Path

    listed = subprocess.run([sys.executable, "-X", "importtime", "-m", "odoops", *command, "--inventory", inv],
                            cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    json.loads(listed.stdout)
    imported = {line.rsplit("|", 1)[-1].strip() for line in listed.stderr.splitlines() if line.startswith("import time")}
    assert "odoops.cli" in imported and not {m for m in imported if m.split(".")[0] == "prefect"}
