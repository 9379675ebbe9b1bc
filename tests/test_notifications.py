"""Notifications: the automations of deployments/automation-*.yaml installed on a real Prefect server, a
failing production run started from the CLI, and a webhook receiver on loopback that sees what an
operator's chat or alerting tool would get — or, with the endpoint down, nothing, while the run's own
outcome stays what it was and Prefect records the failed notification."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from odoops import devserver
from odoops.sandbox import free_port
from tests.helpers import write_inventory

DB_PASSWORD = "pg-S3cret-4f1b9c"  # what must never reach a notification


class _Receiver(BaseHTTPRequestHandler):
    """An incoming-webhook endpoint (what Slack, Mattermost or an alerting tool runs): records each POST."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        self.server.posts.append({"path": self.path, "body": body})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    server.posts = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def alerting(tmp_path_factory, pg_cluster):
    """A Prefect server (no deployments needed: the CLI runs the flows against it) and an inventory whose
    production database is gone, so that a backup of it fails; its password comes from a variable."""
    root = tmp_path_factory.mktemp("alerting")
    inventory = write_inventory(root / "environments.yaml", {"production": {
        "stage": "production", "platform": "host", "filestore": str(root / "filestore"),
        "database": {"dsn": pg_cluster.dsn("acme_gone"), "password_env": "ODOOPS_TEST_PG_PASSWORD"},
        "backup": {"storage": "local", "schedule": "0 2 * * *"}}})
    local = devserver.start(root / "prefect", free_port(), {"ODOOPS_INVENTORY": str(inventory), **pg_cluster.env(),
                                                            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"},
                            deploy=False)
    yield local, inventory
    local.stop()


def _cli_backup(local, inventory) -> subprocess.CompletedProcess:
    env = {**local.env, "ODOOPS_INVENTORY": str(inventory), "ODOOPS_TEST_PG_PASSWORD": DB_PASSWORD}
    return subprocess.run([sys.executable, "-m", "odoops", "backup", "production"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=devserver.PROJECT_DIR, stdin=subprocess.DEVNULL)


def _api(local, path: str, body: dict) -> list | dict:
    import urllib.request

    request = urllib.request.Request(f"{local.api_url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def _failed_production_runs(local) -> list[dict]:
    return _api(local, "/flow_runs/filter", {"flow_runs": {"tags": {"all_": ["stage:production"]},
                                                           "state": {"type": {"any_": ["FAILED"]}}}})


def _wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def test_failed_production_run_calls_the_webhook_with_its_link_and_no_secret(alerting, receiver):
    local, inventory = alerting
    url = f"http://127.0.0.1:{receiver.server_port}/hooks/T0KEN-failed"
    names = devserver.install_automations(local, url, environments=["production"])
    assert names == ["odoops: production run failed", "odoops: no backup of production in 26 h"]
    assert devserver.install_automations(local, url, environments=["production"]) == names  # idempotent
    automations = _api(local, "/automations/filter", {})
    assert sorted(a["name"] for a in automations) == sorted(names)
    missed = next(a for a in automations if a["name"].startswith("odoops: no backup"))
    assert (missed["trigger"]["posture"], missed["trigger"]["within"]) == ("Proactive", 26 * 3600)

    result = _cli_backup(local, inventory)
    assert result.returncode == 2, result.stdout + result.stderr
    [run] = _failed_production_runs(local)
    assert run["name"].startswith("backup/production/")

    def notice():
        return [p for p in receiver.posts if p["path"] == "/hooks/T0KEN-failed" and run["name"] in p["body"]]

    [post] = _wait_for(notice, 60, "the failure notice")
    body = json.loads(post["body"])
    assert body["run"] == run["name"] and body["state"] == "Failed"
    assert body["url"] == f"http://127.0.0.1:{local.port}/runs/flow-run/{run['id']}"
    assert "acme_gone" in body["message"]  # the reason, as the run's state says it
    assert {"runbook:backup", "environment:production", "stage:production"} <= set(body["tags"])
    assert DB_PASSWORD not in post["body"] and "T0KEN" not in post["body"]


def test_missed_backup_fires_when_no_backup_completed_within_the_window(alerting, receiver):
    local, _ = alerting
    url = f"http://127.0.0.1:{receiver.server_port}/hooks/T0KEN-missed"
    # 12 s instead of 26 h: the same trigger, a window short enough to wait for (Prefect's minimum is 10 s)
    devserver.install_automations(local, url, environments=["production"], missed_backup_hours=12 / 3600)
    started = time.monotonic()

    def notice():
        return [p for p in receiver.posts if p["path"] == "/hooks/T0KEN-missed" and "no backup" in p["body"]]

    post = _wait_for(notice, 60, "the missed-backup notice")[0]
    assert time.monotonic() - started >= 10  # not before the window has passed
    body = json.loads(post["body"])
    assert body["environment"] == "production"
    assert body["url"].startswith(f"http://127.0.0.1:{local.port}/automations/automation/")


def test_webhook_down_leaves_the_run_as_it_was_and_records_the_failed_call(alerting, receiver):
    local, inventory = alerting
    dead = f"http://127.0.0.1:{free_port()}/hooks/T0KEN-down"  # nothing listens there
    devserver.install_automations(local, dead, environments=[])
    before = {r["id"] for r in _failed_production_runs(local)}
    result = _cli_backup(local, inventory)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "acme_gone" in result.stdout + result.stderr  # the operator sees the run's own error, unchanged
    [run] = [r for r in _failed_production_runs(local) if r["id"] not in before]

    def failed_action():
        events = _api(local, "/events/filter", {"filter": {"event": {"name": ["prefect.automation.action.failed"]},
                                                           "resource": {"id_prefix": ["prefect.automation."]}},
                                                "limit": 50})["events"]
        return [e for e in events if e["resource"].get("prefect.resource.name") == "odoops: production run failed"
                and e["payload"].get("action_type") == "call-webhook"]

    [event] = _wait_for(failed_action, 60, "Prefect's action.failed event")[:1]
    assert event["payload"]["reason"].startswith("Webhook call failed")
    assert "T0KEN" not in json.dumps(event)
    time.sleep(1)
    [again] = _api(local, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    assert again["state_type"] == "FAILED" and again["state"]["message"] == run["state"]["message"]
    assert "Action failed" in (local.home / "prefect-server.log").read_text()
    assert not [p for p in receiver.posts if p["path"] == "/hooks/T0KEN-down"]
    assert os.environ.get("ODOOPS_TEST_PG_PASSWORD") is None  # the secret stayed in the CLI's environment
