"""``odoops logs``: JSON summary, human report, CI gate exit codes, one-line errors, env:NAME sources."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from odoops.cli_logs import register

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "odoo-logs"
LOG14 = FIXTURES / "14-odoo17-login-failed-http500.log"
LOG17 = FIXTURES / "17-odoo18-prefork-workers-lifecycle.log"


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app)
    return app


def invoke(app: typer.Typer, *args: str, input: bytes | None = None):
    return CliRunner().invoke(app, ["logs", *args], input=input)


@pytest.mark.parametrize("log", sorted(FIXTURES.glob("*.log")), ids=lambda p: p.stem)
def test_json_summary_matches_the_expected_figures(app, log):
    exp = json.loads((FIXTURES / "expected" / f"{log.stem}.json").read_text())
    result = invoke(app, str(log), "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert (s["records"], s["levels"], s["tracebacks"], s["records_with_traceback"]) == (
        exp["records"], exp["levels"], exp["traceback_header_lines"], exp["records_with_traceback"])
    assert s["requests"]["total"] == exp["werkzeug_request_lines"]
    assert s["requests"]["status"] == exp.get("status_codes", {})
    assert s["databases"] == exp["databases_field"]


def test_human_report_shows_tables(app):
    result = invoke(app, str(LOG14))
    assert result.exit_code == 0, result.output
    for title in ("Overview", "HTTP requests", "Slowest requests", "Error signatures", "Events", "Failed logins"):
        assert title in result.stdout
    assert "invalid manifest" in result.stdout


def test_fail_on_exits_3_unless_ignored(app):
    failed = invoke(app, str(LOG17), "--fail-on", "error", "--json")
    assert failed.exit_code == 3
    assert json.loads(failed.stdout)["gate"]["matched"] == 7
    passed = invoke(app, str(LOG17), "--fail-on", "ERROR", "--ignore", "Database creation error",
                    "--ignore", r"Worker \(35\)")
    assert passed.exit_code == 0, passed.output
    assert "passed" in passed.stdout
    assert invoke(app, str(LOG17), "--fail-on", "critical").exit_code == 0


def test_standard_input_gzip_and_since(app, tmp_path):
    result = invoke(app, "-", "--json", input=LOG14.read_bytes())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["records"] == 16
    gz = tmp_path / "odoo.log.1.gz"
    gz.write_bytes(gzip.compress(LOG17.read_bytes()))
    s = json.loads(invoke(app, str(gz), "--json", "--since", "2025-08-06T16:40:00").stdout)
    assert 0 < s["records"] < 95 and s["skipped_before_since"] == 95 - s["records"]


def test_bad_input_is_one_red_line_and_exit_2(app, tmp_path):
    other = tmp_path / "syslog"
    other.write_text("May  1 10:00:00 host sshd[1]: Accepted publickey for root\n" * 3)
    cases = {
        (str(other),): f"error: no Odoo log records found in {other}: is it an Odoo log?",
        (str(tmp_path / "missing.log"),): "error: log file not found:",
        (str(LOG14), "--fail-on", "loud"): "error: unknown log level 'loud'",
        (str(LOG14), "--since", "yesterday-ish"): "error: cannot read --since 'yesterday-ish'",
        ("env:prod",): "error: inventory",
    }
    for args, message in cases.items():
        result = invoke(app, *args, "--inventory", str(tmp_path / "none.yaml"))
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith(message), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


def test_env_source_reads_the_environment_logs(app, tmp_path):
    local = tmp_path / "odoo.log"
    local.write_bytes(LOG17.read_bytes())
    inventory = tmp_path / "environments.yaml"
    inventory.write_text(f"""
environments:
  staging:
    stage: staging
    platform: host
    database: {{dsn: "postgresql://odoo@127.0.0.1:5432/acme_staging"}}
    filestore: data/filestore/acme_staging
    logs: [{local}]
  bare:
    stage: development
    platform: host
    database: {{dsn: "postgresql://odoo@127.0.0.1:5432/dev"}}
    filestore: data/filestore/dev
""")
    result = invoke(app, "env:staging", "--json", "--inventory", str(inventory))
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["records"] == 95 and s["sources"][0]["source"] == f"staging:{local}"
    bare = invoke(app, "env:bare", "--inventory", str(inventory))
    assert bare.exit_code == 2 and "has no 'logs' paths" in bare.stderr
    unknown = invoke(app, "env:nope", "--inventory", str(inventory))
    assert unknown.exit_code == 2 and "unknown environment 'nope'" in unknown.stderr


def test_follow_with_duration(app, tmp_path):
    log = tmp_path / "odoo.log"
    log.write_bytes(LOG14.read_bytes())
    result = invoke(app, str(log), "--follow", "--duration", "0.3", "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["records"] == 0 and s["alerts"] == []  # follow starts at the end of the file
    two = invoke(app, str(log), str(log), "--follow")
    assert two.exit_code == 2 and "--follow takes exactly one log file" in two.stderr
