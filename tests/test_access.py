"""Access control: the exposed setup of docs/operating.md on a real Prefect server — basic auth on every API
call (``PREFECT_SERVER_API_AUTH_STRING``), the worker and the odoops CLI sending the credentials
(``PREFECT_API_AUTH_STRING``), anything else refused; the audit record naming who started each run; and the
credentials appearing in nothing odoops writes."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from odoops import devserver
from odoops.audit import read_audit
from odoops.inventory import load_inventory
from odoops.runtime import repository_for
from odoops.sandbox import free_port
from tests.helpers import copy_sample, drop_database, host_env, write_inventory

AUTH = "operator:Au7h-5ecret-9d2e"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, pg_cluster, sample_template):
    """A server that wants basic auth, the deployments, a worker holding the credentials, one environment."""
    root = tmp_path_factory.mktemp("guarded")
    dbname, filestore = copy_sample(pg_cluster, sample_template, root)
    inventory = write_inventory(root / "environments.yaml", {"production": host_env(pg_cluster, dbname, filestore)})
    local = devserver.start(root / "prefect", free_port(),
                            {"ODOOPS_INVENTORY": str(inventory), **pg_cluster.env(),
                             "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                             "PREFECT_LOGGING_LEVEL": "INFO", **devserver.auth_env(AUTH)}, deploy=False)
    try:  # `prefect deploy` and the worker as make serve runs them, with the credentials; one deployment is enough
        local.prefect("work-pool", "create", devserver.WORK_POOL, "--type", "process")
        local.prefect("--no-prompt", "deploy", "--name", "backup")
        local.start_worker(devserver.WorkerSpec(devserver.WORK_POOL, devserver.DEFAULT_WORKER))
        yield local, inventory
    finally:
        local.stop()
    drop_database(pg_cluster, dbname)


def _status(local, auth: str | None) -> int:
    request = urllib.request.Request(f"{local.api_url}/flow_runs/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _cli(local, inventory, auth: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in local.env.items() if "AUTH_STRING" not in k}
    env.update({"ODOOPS_INVENTORY": str(inventory), **({"PREFECT_API_AUTH_STRING": auth} if auth else {})})
    return subprocess.run([sys.executable, "-m", "odoops", *args], env=env, capture_output=True, text=True,
                          timeout=180, cwd=devserver.PROJECT_DIR, stdin=subprocess.DEVNULL)


def test_the_api_refuses_calls_without_the_right_credentials(guarded):
    local, _ = guarded
    assert _status(local, None) == 401
    assert _status(local, "operator:wrong") == 401
    assert _status(local, AUTH) == 200
    with urllib.request.urlopen(f"{local.api_url}/health", timeout=5) as resp:  # noqa: S310 - probes stay open
        assert resp.status == 200


def test_cli_with_wrong_credentials_says_so_in_one_line(guarded):
    local, inventory = guarded
    result = _cli(local, inventory, "operator:wrong", "backup", "production")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "PREFECT_API_AUTH_STRING" in lines[0] and "401" in lines[0], result.stderr
    assert "wrong" not in result.stderr and "Traceback" not in result.stderr


def test_cli_and_worker_run_with_the_credentials_and_the_audit_names_who(guarded):
    local, inventory = guarded
    cli = _cli(local, inventory, AUTH, "backup", "production")
    assert cli.returncode == 0, cli.stdout + cli.stderr

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    async def through_the_worker():
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("backup/backup")
            run = await client.create_flow_run_from_deployment(deployment.id, parameters={"environment": "production"})
            deadline = time.monotonic() + 180
            while not (run := await client.read_flow_run(run.id)).state.is_final():
                assert time.monotonic() < deadline, run.state
                await asyncio.sleep(0.5)
            runs = await client.read_flow_runs()
            logs = []  # the worker's flow process sends its logs in batches: wait for the backup's own line
            while not any("committed to local" in log.message for log in logs):
                assert time.monotonic() < deadline, [log.message for log in logs]
                await asyncio.sleep(0.5)
                logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            artifacts = await client.read_artifacts()
            return run, runs, logs, artifacts

    with temporary_settings({PREFECT_API_URL: local.api_url, PREFECT_API_AUTH_STRING: AUTH}):
        run, runs, logs, artifacts = asyncio.run(through_the_worker())
    worker_log = (local.home / "prefect-worker.log").read_text()
    assert run.state.is_completed(), (run.state, worker_log[-3000:])
    [cli_run] = [r for r in runs if r.id != run.id and r.name.startswith("backup/production/")]

    repo = repository_for(load_inventory(inventory), "local")
    records = {r["flow_run_id"]: r for r in read_audit(repo.store, "production")}
    import getpass
    import socket

    assert records[str(cli_run.id)]["who"] == f"user:{getpass.getuser()}@{socket.gethostname()}"
    assert records[str(run.id)]["who"] == "deployment:backup (UI or API)"
    assert all(r["outcome"] == "success" for r in (records[str(cli_run.id)], records[str(run.id)]))

    # The credentials are in nothing odoops wrote: audit records, run logs, artifacts, the CLI's output,
    # the worker's log, the backups' manifests.
    password = AUTH.split(":", 1)[1]
    written = [json.dumps(list(records.values())), json.dumps([log.message for log in logs]),
               json.dumps([a.data for a in artifacts], default=str), cli.stdout, cli.stderr, worker_log]
    written += [p.read_text(errors="replace") for p in (inventory.parent / "backups").rglob("*.json")]
    assert len(logs) > 5 and {a.key for a in artifacts} >= {"backup-summary", "backup-parts"}
    assert not [text[:200] for text in written if password in text]
