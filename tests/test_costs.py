"""The cost report: numbers checked against hand-computed cases, files opened and read back,
bad inputs refused with one line naming the key, the flow's artifacts and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from odoops.cli_costs import register
from odoops.errors import ConfigError
from tasks import costs

ROOT = Path(__file__).resolve().parent.parent
EXACT = {"abs": 1e-9}

# Case A: round prices, Community self-hosted, break-even in storage above Odoo.sh's included storage.
CASE_A = """\
months: 12
users: 10
workers: 2
staging_environments: 1
database_gb: 30
filestore_gb: 20
backup_retention_factor: 2
license_per_user_month: 40
enterprise_self_hosted: false
maintenance_hourly_rate: 100
odoosh_worker_month: 50
odoosh_included_storage_gb: 20
odoosh_storage_gb_month: 0.5
odoosh_staging_env_month: 20
odoosh_maintenance_hours_month: 1
odoosh_setup_hours: 2
selfhosted_server_month: 100
selfhosted_workers_per_server: 4
selfhosted_staging_workers: 1
selfhosted_block_storage_gb_month: 0.1
selfhosted_s3_gb_month: 0.25
selfhosted_monitoring_month: 10
selfhosted_maintenance_hours_month: 3
selfhosted_setup_hours: 10
"""

# Case B: Enterprise on both (licences cancel), two servers, measured sizes, break-even in storage
# below Odoo.sh's included storage.
CASE_B = {
    "months": 36, "users": 20, "workers": 4, "staging_environments": 2, "enterprise_self_hosted": True,
    "license_per_user_month": 30, "maintenance_hourly_rate": 50,
    "odoosh_worker_month": 40, "odoosh_included_storage_gb": 100, "odoosh_storage_gb_month": 1.0,
    "odoosh_staging_env_month": 25, "odoosh_maintenance_hours_month": 2, "odoosh_setup_hours": 0,
    "selfhosted_server_month": 80, "selfhosted_workers_per_server": 3, "selfhosted_staging_workers": 1,
    "selfhosted_block_storage_gb_month": 0.2, "selfhosted_s3_gb_month": 0.1, "selfhosted_monitoring_month": 20,
    "selfhosted_maintenance_hours_month": 2, "selfhosted_setup_hours": 0,
}
MEASURED_B = {"database_gb": 10, "filestore_gb": 40, "backup_repository_gb": 75}


@pytest.fixture
def case_a_file(tmp_path: Path) -> Path:
    path = tmp_path / "case-a.yaml"
    path.write_text(CASE_A, encoding="utf-8")
    return path


@pytest.fixture
def report_a(case_a_file: Path) -> costs.CostReport:
    return costs.compute_costs(costs.load_inputs(case_a_file))


def item(report: costs.CostReport, option: str, name: str) -> pd.Series:
    rows = report.line_items[(report.line_items.option == option) & (report.line_items.item == name)]
    assert len(rows) == 1, (option, name)
    return rows.iloc[0]


# --- hand-computed cases --------------------------------------------------------------------------

def test_case_a_line_items_and_totals(report_a: costs.CostReport) -> None:
    # Odoo.sh:  licences 10 x 40 = 400; workers 2 x 50 = 100; storage (30 + 20 - 20) x 0.5 = 15;
    #           staging 1 x 20 = 20; maintenance 1 h x 100 = 100  -> 635 / month; setup 2 h x 100 = 200
    #           12 months: 635 x 12 + 200 = 7620 + 200 = 7820
    # Self-hosted: licences 0 (Community); servers ceil((2 + 1 x 1) / 4) = 1 x 100 = 100;
    #           block 50 GB x (1 + 1) x 0.1 = 10; S3 (50 x 2 = 100 GB) x 0.25 = 25; monitoring 10;
    #           maintenance 3 h x 100 = 300  -> 445 / month; setup 10 h x 100 = 1000
    #           12 months: 445 x 12 + 1000 = 5340 + 1000 = 6340
    t = report_a.totals
    assert t.at["odoosh", "monthly"] == pytest.approx(635, **EXACT)
    assert t.at["odoosh", "one_time"] == pytest.approx(200, **EXACT)
    assert t.at["odoosh", "horizon_total"] == pytest.approx(7820, **EXACT)
    assert t.at["selfhosted", "monthly"] == pytest.approx(445, **EXACT)
    assert t.at["selfhosted", "one_time"] == pytest.approx(1000, **EXACT)
    assert t.at["selfhosted", "horizon_total"] == pytest.approx(6340, **EXACT)
    assert item(report_a, "odoosh", "Storage above included").monthly == pytest.approx(15, **EXACT)
    assert item(report_a, "selfhosted", "Servers").quantity == 1
    assert item(report_a, "selfhosted", "Block storage").quantity == pytest.approx(100, **EXACT)
    assert item(report_a, "selfhosted", "S3 backup storage").monthly == pytest.approx(25, **EXACT)
    assert item(report_a, "selfhosted", "Odoo Enterprise licences").monthly == 0
    assert report_a.cheaper == "selfhosted"
    assert set(report_a.line_items.basis) == {"input"}
    # Cumulative: month 0 is the one-time cost, the last month the horizon total.
    assert report_a.cumulative.loc[0, "odoosh"] == pytest.approx(200, **EXACT)
    assert report_a.cumulative.loc[12, "selfhosted"] == pytest.approx(6340, **EXACT)
    assert list(report_a.cumulative.index) == list(range(13))


def test_case_a_break_even(report_a: costs.CostReport) -> None:
    # Users: Odoo.sh 235 + 40u (licences are the only per-user cost), self-hosted 445 flat:
    #   235 + 40u = 445 -> u = 210 / 40 = 5.25
    assert report_a.break_even_users == pytest.approx(5.25, **EXACT)
    # Storage x (GB of data), backup = 2x: Odoo.sh 620 + 0.5 max(0, x - 20); self-hosted
    #   410 + x (2 x 0.1 + 2 x 0.25) = 410 + 0.7x.
    #   x <= 20: 620 = 410 + 0.7x -> x = 300, outside; x >= 20: 610 + 0.5x = 410 + 0.7x -> x = 1000
    assert report_a.break_even_storage_gb == pytest.approx(1000, **EXACT)
    # Month: one-time gap 1000 - 200 = 800, monthly gap 635 - 445 = 190 -> 800 / 190 = 80/19
    assert report_a.break_even_month == pytest.approx(80 / 19, **EXACT)


def test_case_b_enterprise_both_and_measured_sizes() -> None:
    report = costs.compute_costs(costs.load_inputs(overrides=CASE_B, measured=MEASURED_B))
    # Odoo.sh: licences 20 x 30 = 600; workers 4 x 40 = 160; storage max(0, 50 - 100) = 0;
    #          staging 2 x 25 = 50; maintenance 2 x 50 = 100 -> 910 / month; 36 months: 32760
    # Self-hosted: licences 600; servers ceil((4 + 2 x 1) / 3) = 2 x 80 = 160;
    #          block 50 x 3 x 0.2 = 30; S3 75 (measured) x 0.1 = 7.5; monitoring 20; maintenance 100
    #          -> 917.5 / month; 36 months: 33030
    t = report.totals
    assert t.at["odoosh", "monthly"] == pytest.approx(910, **EXACT)
    assert t.at["selfhosted", "monthly"] == pytest.approx(917.5, **EXACT)
    assert t.at["odoosh", "horizon_total"] == pytest.approx(32760, **EXACT)
    assert t.at["selfhosted", "horizon_total"] == pytest.approx(33030, **EXACT)
    assert item(report, "selfhosted", "Servers").quantity == 2
    assert report.cheaper == "odoosh"
    # Users: licences on both sides cancel, equal slopes -> never.
    assert report.break_even_users is None
    # Storage: Odoo.sh 910 up to 100 GB; self-hosted 880 + x (3 x 0.2 + 1.5 x 0.1) = 880 + 0.75x
    #   (backup/data ratio 75 / 50 = 1.5) -> 910 = 880 + 0.75x -> x = 40, inside [0, 100]
    assert report.break_even_storage_gb == pytest.approx(40, **EXACT)
    # No one-time costs: the cumulative lines only meet at month 0, which is no break-even.
    assert report.break_even_month is None
    assert report.inputs.sources["database_gb"] == "measured"
    assert report.inputs.sources["users"] == "override"
    assert item(report, "selfhosted", "S3 backup storage").basis == "measured+override"
    assert item(report, "odoosh", "Hosting workers").basis == "override"


def test_storage_never_breaks_even_when_storage_is_free_on_both_sides() -> None:
    # Storage costs 0 everywhere: the gap is constant (defaults otherwise) -> never.
    report = costs.compute_costs({"odoosh_storage_gb_month": 0, "selfhosted_block_storage_gb_month": 0,
                                  "selfhosted_s3_gb_month": 0})
    assert report.break_even_storage_gb is None
    assert report.break_even_users is not None


def test_defaults_are_labelled_estimates() -> None:
    report = costs.compute_costs()
    assert set(report.inputs.sources.values()) == {"estimate"}
    assert set(report.line_items.basis) == {"estimate"}
    # The seed's figures: VPS $48/month, 100 GB block storage $10, S3 100 GB $2-3.
    assert report.inputs["selfhosted_server_month"] == 48.0
    assert report.inputs["selfhosted_block_storage_gb_month"] * 100 == pytest.approx(10)
    assert 2 <= report.inputs["selfhosted_s3_gb_month"] * 100 <= 3
    assert all("estimate" in spec.note or not isinstance(spec.default, float) for spec in costs.INPUTS.values())
    assert "estimate" in costs.render_markdown(report).lower()


def test_example_inputs_file_matches_defaults() -> None:
    values = costs.read_inputs_file(ROOT / "deployments" / "cost-inputs.example.yaml")
    assert values == {k: v for k, v in costs.default_inputs().items() if k in values}
    assert set(costs.INPUTS) - set(values) == {"backup_repository_gb"}  # commented out: estimated


# --- files read back --------------------------------------------------------------------------------

def test_written_files_read_back(report_a: costs.CostReport, tmp_path: Path) -> None:
    files = costs.write_report(report_a, tmp_path / "out")
    assert set(files) == {"csv", "markdown", "html", "png"}

    csv = pd.read_csv(files["csv"])
    pd.testing.assert_frame_equal(csv, report_a.line_items, check_dtype=False)
    assert csv.groupby("option")["horizon_total"].sum()["odoosh"] == pytest.approx(7820)

    md = files["markdown"].read_text(encoding="utf-8")
    html = files["html"].read_text(encoding="utf-8")
    for text in (md, html):
        for figure in ("USD 635.00", "USD 445.00", "USD 7,820.00", "USD 6,340.00", "5.25 users", "1,000.00 GB"):
            assert figure in text, figure
        assert "12-month total" in text
    assert '<img src="costs.png"' in html
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")

    raw = files["png"].read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000
    from PIL import Image

    with Image.open(files["png"]) as img:
        assert img.size == (800, 450)
        colours = img.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 10  # lines drawn, not a blank canvas


def test_unwritable_out_dir_is_one_line_error(report_a: costs.CostReport, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="--out") as exc:
        costs.write_report(report_a, blocker / "sub")
    assert "\n" not in str(exc.value)


# --- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("odoosh_worker_month: -5\n", ["'odoosh_worker_month'", "-5", ">= 0"]),
    ("selfhosted_s3_gb_month: -0.01\n", ["'selfhosted_s3_gb_month'", ">= 0"]),
    ("selfhosted_server_month:\n", ["'selfhosted_server_month'", "has no value", "remove the line"]),
    ("license_per_user_month: null\n", ["'license_per_user_month'", "has no value"]),
    ("odoosh_worker_montth: 25\n", ["unknown key 'odoosh_worker_montth'", "did you mean 'odoosh_worker_month'"]),
    ("colour: blue\n", ["unknown key 'colour'", "cost-inputs.example.yaml"]),
    ("selfhosted_s3_gb_month: '$0.02'\n", ["'selfhosted_s3_gb_month'", "must be a number", "without quotes"]),
    ("users: yes\n", ["'users'", "must be a number"]),
    ("users: 2.5\n", ["'users'", "whole number"]),
    ("enterprise_self_hosted: maybe\n", ["'enterprise_self_hosted'", "true or false"]),
    ("months: 0\n", ["'months'", ">= 1"]),
    ("selfhosted_workers_per_server: 0\n", ["'selfhosted_workers_per_server'", ">= 1"]),
    ("odoosh_storage_gb_month: .nan\n", ["'odoosh_storage_gb_month'", "finite"]),
    ("- users: 3\n", ["expected a mapping"]),
    ("users: [1\n", ["not valid YAML", "line"]),
])
def test_bad_inputs_file_is_refused_with_one_line(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "inputs.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        costs.load_inputs(path)
    message = str(exc.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)


def test_missing_inputs_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found; give an existing file"):
        costs.load_inputs(tmp_path / "nope.yaml")


def test_empty_inputs_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n", encoding="utf-8")
    assert costs.load_inputs(path).values == costs.default_inputs()


@pytest.mark.parametrize(("measured", "expected"), [
    ({"database_size": 3}, "unknown key 'database_size'"),
    ({"filestore_gb": -1}, "'filestore_gb' is -1"),
    ({"backup_repository_gb": "big"}, "'backup_repository_gb' must be a number"),
])
def test_bad_measured_sizes_are_refused(measured: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match="measured sizes") as exc:
        costs.load_inputs(measured=measured)
    assert expected in str(exc.value)


def test_overrides_none_are_ignored_and_bad_override_refused() -> None:
    assert costs.load_inputs(overrides={"users": None}).values["users"] == 10
    with pytest.raises(ConfigError, match="cost report parameters: 'workers' is -1"):
        costs.load_inputs(overrides={"workers": -1})


# --- CLI ----------------------------------------------------------------------------------------------

def cli_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """odoops (test app)."""

    register(app)
    return app


def test_cli_json_without_prefect(case_a_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-out"
    result = CliRunner().invoke(cli_app(), ["cost-report", "--inputs", str(case_a_file), "--out", str(out),
                                            "--json", "--no-prefect", "--no-measure"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["monthly"] == {"odoosh": 635.0, "selfhosted": 445.0}
    assert data["horizon_total"] == {"odoosh": 7820.0, "selfhosted": 6340.0}
    assert data["break_even_users"] == 5.25 and data["break_even_storage_gb"] == 1000.0
    assert all(Path(p).stat().st_size > 0 for p in data["files"].values())


def test_cli_bad_input_prints_one_red_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("odoosh_worker_month: -5\n", encoding="utf-8")
    result = CliRunner().invoke(cli_app(), ["cost-report", "--inputs", str(path), "--out", str(tmp_path)],
                                color=True)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0] and "'odoosh_worker_month'" in lines[0]
    assert "\x1b[31m" in lines[0]  # red
    assert result.stdout == ""
    assert not (tmp_path / "costs.csv").exists()


def test_cli_through_prefect_flow(prefect_harness, case_a_file: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app(), ["cost-report", "--inputs", str(case_a_file), "--out",
                                            str(tmp_path / "o"), "--json", "--no-measure"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["horizon_total"]["selfhosted"] == 6340.0
    assert (tmp_path / "o" / "costs.png").stat().st_size > 0


# --- flow and artifacts -----------------------------------------------------------------------------

def test_flow_publishes_artifacts(prefect_harness, case_a_file: Path, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.cost_report import MARKDOWN_ARTIFACT_KEY, TABLE_ARTIFACT_KEY, cost_report_flow

    out = tmp_path / "flow-out"
    state = cost_report_flow(inputs_file=str(case_a_file), out_dir=str(out), users=14,
                             measured={"backup_repository_gb": 40}, measure=False, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    # users 14 -> Odoo.sh 635 + 4 x 40 = 795; backup measured 40 GB x 0.25 = 10 instead of 25 -> 430
    assert result["monthly"] == {"odoosh": 795.0, "selfhosted": 430.0}
    assert result["measured"] == ["backup_repository_gb"]
    assert set(result["files"]) == {"csv", "markdown", "html", "png"}
    assert pd.read_csv(result["files"]["csv"]).monthly.sum() == pytest.approx(795 + 430)

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {TABLE_ARTIFACT_KEY, MARKDOWN_ARTIFACT_KEY}
    table = by_key[TABLE_ARTIFACT_KEY]
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {r["option"]: r["total_12_months"] for r in rows} == {
        "Odoo.sh": 795 * 12 + 200, "Self-hosted Docker": 430 * 12 + 1000}
    md = by_key[MARKDOWN_ARTIFACT_KEY]
    assert md.type == "markdown"
    assert "USD 9,740.00" in md.data and "estimates" in md.data and "costs.html" in md.data
    assert "Measured on the environments: backup_repository_gb" in md.data


def test_flow_bad_input_fails_run_with_config_error(prefect_harness, tmp_path: Path) -> None:
    from flows.cost_report import cost_report_flow

    path = tmp_path / "bad.yaml"
    path.write_text("odoosh_worker_month:\n", encoding="utf-8")
    state = cost_report_flow(inputs_file=str(path), out_dir=str(tmp_path / "never"), return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match="'odoosh_worker_month' has no value"):
        state.result()
    assert not (tmp_path / "never").exists()


# --- sizes measured on real environments ---------------------------------------------------------------

def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_sizes_are_measured_on_the_production_environments(prefect_harness, pg_cluster, odoo_db, tmp_path: Path):
    """Database (pg_database_size), filestore (every file) and backup repository (after dedup) sizes."""
    import psycopg

    from flows.backup import backup_flow
    from flows.cost_report import cost_report_flow
    from tests.helpers import host_env, write_inventory

    dbname, filestore = odoo_db
    unreachable = host_env(pg_cluster, dbname, filestore, stage="staging")
    unreachable["database"] = {"dsn": "postgresql://odoo@127.0.0.1:1/nowhere"}  # not production: not measured
    inventory = write_inventory(tmp_path / "environments.yaml", {
        "production": host_env(pg_cluster, dbname, filestore), "staging": unreachable})
    backup_flow("production", inventory=str(inventory))
    backup_flow("production", inventory=str(inventory))  # the second stores no file twice
    with psycopg.connect(pg_cluster.dsn(dbname)) as conn:
        db_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    result = cost_report_flow(out_dir=str(tmp_path / "out"), inventory=str(inventory))
    sizes = result["measured_sizes"]
    assert sizes["database_gb"] == pytest.approx(db_bytes / 1e9, abs=0.002)
    assert sizes["filestore_gb"] == pytest.approx(_tree_bytes(filestore) / 1e9, abs=0.0005)
    assert sizes["backup_repository_gb"] == pytest.approx(_tree_bytes(tmp_path / "backups") / 1e9, abs=0.0005)
    assert result["measurement_notes"] == []

    # production unreachable: its database and filestore stay estimates, and the note says why
    broken = write_inventory(tmp_path / "broken.yaml", {"production": unreachable | {"stage": "production"}})
    result = cost_report_flow(out_dir=str(tmp_path / "out2"), inventory=str(broken))
    assert "database_gb" not in result["measured"] and "database_gb" in result["estimates"]
    assert result["measured"] == ["backup_repository_gb"]
    assert len(result["measurement_notes"]) == 1 and "production not measured" in result["measurement_notes"][0]


def test_cli_measures_and_says_so(pg_cluster, odoo_db, tmp_path: Path) -> None:
    from tests.helpers import host_env, write_inventory

    dbname, filestore = odoo_db
    inventory = write_inventory(tmp_path / "environments.yaml", {"production": host_env(pg_cluster, dbname, filestore)})
    result = CliRunner().invoke(cli_app(), ["cost-report", "--out", str(tmp_path / "o"), "--no-prefect",
                                            "--inventory", str(inventory)])
    assert result.exit_code == 0, result.output
    assert "measured on the environments: backup_repository_gb 0.000, database_gb 0.0" in result.stdout
    missing = CliRunner().invoke(cli_app(), ["cost-report", "--out", str(tmp_path / "o"), "--no-prefect",
                                             "--inventory", str(tmp_path / "missing.yaml")])
    assert missing.exit_code == 2 and "inventory" in missing.stderr and "not found" in missing.stderr
