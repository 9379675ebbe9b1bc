"""End to end as an operator: a Prefect server, the deployments from prefect.yaml, a worker, and the
backup deployment triggered through the API exactly as the UI's Run button does."""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml

from odoops import devserver
from odoops.inventory import load_inventory
from odoops.runtime import repository_for
from odoops.sandbox import free_port
from tests.helpers import host_env, write_inventory


@pytest.fixture
def served(tmp_path, pg_cluster, odoo_db):
    dbname, filestore = odoo_db
    inventory = write_inventory(tmp_path / "environments.yaml",
                                {"production": host_env(pg_cluster, dbname, filestore)})
    local = devserver.start(tmp_path / "prefect", free_port(), {"ODOOPS_INVENTORY": str(inventory),
                                                               **pg_cluster.env()})
    yield local, inventory
    local.stop()


def test_prefect_yaml_declares_every_runbook_and_a_nightly_backup():
    config = yaml.safe_load(open(devserver.PROJECT_DIR / "prefect.yaml"))
    names = {d["name"] for d in config["deployments"]}
    assert {"backup", "verify-backup", "drill-backup", "prune-backups", "restore", "restore-undo", "anonymize",
            "logs", "health", "incident", "cost-report"} <= names
    backup = next(d for d in config["deployments"] if d["name"] == "backup")
    demo_env = load_inventory(devserver.PROJECT_DIR / "deployments" / "environments.example.yaml").environment(
        "production")
    [nightly] = backup["schedules"]
    assert (nightly["cron"], nightly["timezone"]) == (demo_env.backup.schedule, demo_env.backup.timezone)
    assert nightly["parameters"] == {"environment": "production", "kind": "scheduled"}
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
            assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
            run = await client.create_flow_run_from_deployment(deployment.id, parameters={"environment": "production"})
            deadline = time.monotonic() + 150
            while True:
                run = await client.read_flow_run(run.id)
                if run.state.is_final() or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1)
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            return run, artifacts

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: local.api_url}):
        run, artifacts = asyncio.run(scenario())
    assert run.state.is_completed(), (run.state, (local.home / "prefect-worker.log").read_text()[-3000:])
    keys = {a.key for a in artifacts}
    assert {"backup-summary", "backup-parts"} <= keys
    [backup] = repository_for(load_inventory(inventory), "local").list_backups("production")
    summary = next(a for a in artifacts if a.key == "backup-summary")
    assert backup.id in summary.data
    from odoops.audit import read_audit

    [record] = read_audit(repository_for(load_inventory(inventory), "local").store, "production")
    assert record["flow_run_id"] == str(run.id) and record["outcome"] == "success"
    assert record["who"] != "" and record["backup_ids"] == [backup.id]
