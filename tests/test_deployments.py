"""End to end as an operator: a Prefect server, the deployments from prefect.yaml, a worker, and the
deployments triggered through the API exactly as the UI's Run button (and its approval form) does."""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml

from odoops import devserver
from odoops.inventory import load_inventory
from odoops.runtime import repository_for
from odoops.sandbox import SAMPLE_ZIP, free_port
from tests.helpers import copy_sample, drop_database, host_env, write_inventory


@pytest.fixture(scope="module")
def served(tmp_path_factory, pg_cluster, sample_template):
    """One server, worker and production environment for the module (starting them takes ~30 s)."""
    root = tmp_path_factory.mktemp("served")
    dbname, filestore = copy_sample(pg_cluster, sample_template, root)
    inventory = write_inventory(root / "environments.yaml", {"production": host_env(pg_cluster, dbname, filestore)})
    # No scheduler: the deployments' own schedules (a health check every 5 min, the nightly backup) would
    # start runs of their own in the middle of a test.
    local = devserver.start(root / "prefect", free_port(), {"ODOOPS_INVENTORY": str(inventory), **pg_cluster.env(),
                                                            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"})
    yield local, inventory
    local.stop()
    drop_database(pg_cluster, dbname)


async def _wait(client, run_id, until, seconds: float = 300):
    deadline = time.monotonic() + seconds
    while True:
        run = await client.read_flow_run(run_id)
        if until(run.state) or time.monotonic() > deadline:
            return run
        await asyncio.sleep(0.5)


def test_prefect_yaml_declares_every_runbook_and_the_nightly_fleet_backup():
    config = yaml.safe_load(open(devserver.PROJECT_DIR / "prefect.yaml"))
    names = {d["name"] for d in config["deployments"]}
    assert {"backup", "verify-backup", "drill-backup", "prune-backups", "restore", "restore-undo", "anonymize",
            "upgrade", "upgrade-rehearsal", "rollback", "deploy", "promote", "logs", "health", "incident",
            "cost-report", "nightly"} <= names
    # Backup schedules live only in the inventory: the backup deployment has none, the nightly deployment
    # (scheduled once) starts a backup for each environment whose schedule is due.
    deployments = {d["name"]: d for d in config["deployments"]}
    assert "schedules" not in deployments["backup"]
    nightly = deployments["nightly"]
    assert nightly["entrypoint"] == "flows/nightly.py:nightly_flow"
    assert [s.get("interval") for s in nightly["schedules"]] == [900]
    assert nightly["concurrency_limit"]["limit"] == 1
    example = load_inventory(devserver.PROJECT_DIR / "deployments" / "environments.example.yaml")
    assert example.environment("production").backup.schedule  # the example shows where a schedule goes
    for deployment in config["deployments"]:
        module, function = deployment["entrypoint"].split(":")
        assert (devserver.PROJECT_DIR / module).exists(), module
        assert f"def {function}(" in (devserver.PROJECT_DIR / module).read_text()


def test_run_button_backs_up_and_publishes_artifacts(served):
    local, inventory = served
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def scenario():
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("backup/backup")
            assert deployment.schedules == []  # the nightly deployment starts scheduled backups
            run = await client.create_flow_run_from_deployment(deployment.id, parameters={"environment": "production"})
            run = await _wait(client, run.id, lambda state: state.is_final())
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            return run, artifacts

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: local.api_url}):
        run, artifacts = asyncio.run(scenario())
    assert run.state.is_completed(), (run.state, (local.home / "prefect-worker.log").read_text()[-3000:])
    keys = {a.key for a in artifacts}
    assert {"backup-summary", "backup-parts"} <= keys
    [backup] = [b for b in repository_for(load_inventory(inventory), "local").list_backups("production")
                if b.kind == "manual"]
    summary = next(a for a in artifacts if a.key == "backup-summary")
    assert backup.id in summary.data
    from odoops.audit import read_audit

    [record] = [r for r in read_audit(repository_for(load_inventory(inventory), "local").store, "production")
                if r["flow_run_id"] == str(run.id)]
    assert record["flow_run_id"] == str(run.id) and record["outcome"] == "success"
    assert record["who"] != "" and record["backup_ids"] == [backup.id]


def test_restore_over_production_from_the_ui_waits_for_its_name(served, pg_cluster):
    """Without --confirm, a deployment run pauses for an approval input; only the exact name goes on."""
    local, inventory = served
    inv = load_inventory(inventory)
    production = inv.environment("production")
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import aresume_flow_run

    from tasks.postgres import ConnInfo, connect

    conninfo = ConnInfo.from_dsn(production.database.dsn)
    with connect(conninfo) as conn:  # a change the restore must keep or replace, visibly
        conn.execute("UPDATE res_partner SET name = 'changed since the sample' WHERE id = 1")

    def partner_name() -> str:
        with connect(conninfo) as conn:
            return conn.execute("SELECT name FROM res_partner WHERE id = 1").fetchone()[0]

    async def restore_answering(answer: str):
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("restore/restore")
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters={"source": str(SAMPLE_ZIP), "environment": "production"})
            paused = await _wait(client, run.id, lambda state: state.is_paused() or state.is_final())
            assert paused.state.is_paused(), paused.state
            assert partner_name() == "changed since the sample"  # nothing touched while it waits
            await aresume_flow_run(run.id, run_input={"environment_name": answer})
            return await _wait(client, run.id, lambda state: state.is_final(), seconds=480)

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: local.api_url}):
        refused = asyncio.run(restore_answering("prod"))
        assert refused.state.is_failed(), refused.state
        assert partner_name() == "changed since the sample"
        approved = asyncio.run(restore_answering("production"))
    assert approved.state.is_completed(), (approved.state, (local.home / "prefect-worker.log").read_text()[-3000:])
    assert partner_name() != "changed since the sample"
    repo = repository_for(inv, "local")
    [pre_restore] = [b for b in repo.list_backups("production") if b.kind == "pre-restore"]
    assert pre_restore.verification in ("verified", "drilled")
    from odoops.audit import read_audit

    records = {r["flow_run_id"]: r for r in read_audit(repo.store, "production") if r["runbook"] == "restore"}
    assert records[str(refused.id)]["outcome"].startswith("failed: production is production: confirm")
    assert records[str(approved.id)]["outcome"] == "success"
    assert records[str(approved.id)]["backup_ids"] == [pre_restore.id]
