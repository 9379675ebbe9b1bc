"""How CLI runs reach a Prefect server, as an operator's shell runs them (one process per call).

Without PREFECT_API_URL the first flow-running command starts one local server for PREFECT_HOME and later
calls reuse it (odoops/localserver.py); ``odoops server stop`` stops it; a killed one is replaced; two
first calls at once start one; a PREFECT_API_URL that does not answer is one red line and exit 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from odoops import localserver
from odoops.sandbox import free_port
from tests.helpers import host_env, write_inventory

ROOT = Path(__file__).resolve().parent.parent


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """An operator's shell without PREFECT_API_URL, with its own Prefect home."""
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", "PREFECT_UI_URL"}}
    return {**env, "PREFECT_HOME": str(home), **extra}


def odoops(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "odoops", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


def servers(home: Path) -> list[int]:
    """Pids of the live local servers of ``home``, found by their command line (as a clean-up by path does)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError):
            continue
        if "odoops.localserver" in argv and "serve" in argv and str(home) in argv and state != "Z":
            found.append(int(proc.name))
    return found


def recorded(home: Path) -> dict:
    return json.loads((home / localserver.STATE_FILE).read_text())


def flow_runs(api_url: str, tags: list[str]) -> list[dict]:
    """The flow runs carrying ``tags``, read from the server's REST API as the UI reads them."""
    body = json.dumps({"flow_runs": {"tags": {"all_": tags}}, "sort": "START_TIME_ASC"}).encode()
    request = urllib.request.Request(f"{api_url}/flow_runs/filter", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def home(tmp_path):
    """A Prefect home of its own; its local server is stopped afterwards, whatever the test did."""
    path = tmp_path / "prefect-home"
    yield path
    localserver.stop_local(path)
    assert servers(path) == [], "a local server outlived its test"


@pytest.fixture
def inventory(tmp_path, pg_cluster, odoo_db) -> str:
    dbname, filestore = odoo_db
    return str(write_inventory(tmp_path / "inv.yaml", {"production": host_env(pg_cluster, dbname, filestore)}))


def test_backups_share_one_local_server_until_it_is_stopped_and_their_runs_are_in_its_api(home, inventory):
    secret = "pg-password-that-must-stay-out-of-the-server"
    env = cli_env(home, PGPASSWORD=secret)
    backup = ["backup", "production", "-i", inventory, "--json"]

    first = json.loads(ok(odoops(backup, env)).stdout)
    server = recorded(home)
    assert servers(home) == [server["pid"]] and server["ready"] is True
    environ = Path(f"/proc/{server['pid']}/environ").read_bytes()
    assert secret.encode() not in environ, "the long-lived server kept the caller's database password"

    second = json.loads(ok(odoops(backup, env)).stdout)
    assert second["backup_id"] != first["backup_id"]
    assert recorded(home) == server and servers(home) == [server["pid"]], "the second call started no server"

    status = json.loads(ok(odoops(["server", "status", "--json"], env)).stdout)
    api = f"http://127.0.0.1:{server['port']}/api"
    assert status["running"] is True and status["pid"] == server["pid"] and status["url"] == api
    assert status["home"] == str(home) and status["uptime_seconds"] > 0
    runs = flow_runs(api, ["runbook:backup", "environment:production"])
    assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"]
    assert all(r["name"].startswith("backup/production/") and "stage:production" in r["tags"] for r in runs)

    stopped = ok(odoops(["server", "stop"], env))
    assert f"pid {server['pid']}" in stopped.stdout and gone(server["pid"]) and servers(home) == []
    assert json.loads(ok(odoops(["server", "status", "--json"], env)).stdout)["running"] is False

    ok(odoops(backup, env))  # the next flow-running call starts a new one, on the same Prefect database
    again = recorded(home)
    assert again["pid"] != server["pid"] and servers(home) == [again["pid"]]
    runs = flow_runs(f"http://127.0.0.1:{again['port']}/api", ["runbook:backup", "environment:production"])
    assert [r["state_type"] for r in runs] == ["COMPLETED"] * 3


def test_two_first_calls_at_once_start_one_server_and_a_killed_one_is_replaced(home, inventory):
    dead = subprocess.Popen(["true"])
    dead.wait()
    home.mkdir(parents=True)
    stale = {"home": str(home), "port": free_port(), "pid": dead.pid, "pid_start": "1", "host": os.uname().nodename,
             "boot_id": "", "started_at": time.time() - 3600, "ready": True}
    (home / localserver.STATE_FILE).write_text(json.dumps(stale))  # a record left by a server long gone
    env = cli_env(home)

    unlock = [sys.executable, "-m", "odoops", "envs", "unlock", "production", "-i", inventory, "--json"]
    calls = [subprocess.Popen(unlock, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for _ in range(2)]
    for call in calls:
        out, errors = call.communicate(timeout=300)
        assert call.returncode == 0, errors[-3000:]
        assert json.loads(out)["busy"] is False
    server = recorded(home)
    assert server["pid"] != dead.pid and servers(home) == [server["pid"]], "two first calls, one server"

    os.kill(server["pid"], signal.SIGKILL)  # an OOM kill, a kill -9
    assert gone(server["pid"])
    result = json.loads(ok(odoops(["backup", "production", "-i", inventory, "--json"], env)).stdout)
    assert result["backup_id"].startswith("production-")
    replaced = recorded(home)
    assert replaced["pid"] != server["pid"] and servers(home) == [replaced["pid"]]


def test_a_prefect_api_url_that_does_not_answer_is_one_line_and_exit_2(home, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/api"
    result = odoops(["backup", "production", "-i", str(tmp_path / "never-read.yaml")],
                    {**cli_env(home), "PREFECT_API_URL": closed})
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: the Prefect server at {closed} does not answer"), lines
    assert "unset PREFECT_API_URL to use the local one" in lines[0]
    assert not (home / localserver.STATE_FILE).exists() and servers(home) == [], "no local server instead"
