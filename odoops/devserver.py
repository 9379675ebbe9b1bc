"""A Prefect server on this machine with the odoops deployments and a worker: ``make serve`` and the
end-to-end test use it exactly as an operator would (server on SQLite, ``prefect deploy --all``,
a process worker)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from odoops.errors import ToolFailed, tool_error_line

PROJECT_DIR = Path(__file__).resolve().parent.parent
WORK_POOL = "odoops"


@dataclass
class LocalPrefect:
    home: Path
    port: int
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def prefect(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run([sys.executable, "-m", "prefect", *args], env=self.env, cwd=PROJECT_DIR,
                                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise ToolFailed(f"prefect {' '.join(args[:2])} failed: {tool_error_line(result.stdout + result.stderr)}")
        return result.stdout

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.terminate()
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.processes.clear()


def prefect_env(home: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
        "ODOOPS_PROJECT_DIR": str(PROJECT_DIR), "PREFECT_WORKER_QUERY_SECONDS": "2",
        # Leases on disk: a restarted server still knows, and revokes, the slot of a run that died meanwhile.
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": os.environ.get(
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem"),
    })
    env.update(extra or {})
    return env


def start(home: Path, port: int, extra_env: dict[str, str] | None = None, log_dir: Path | None = None,
          worker: bool = True, deploy: bool = True) -> LocalPrefect:
    """Server, work pool, deployments from prefect.yaml, worker; returns when the server answers."""
    home.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir or home
    local = LocalPrefect(home=home, port=port, env=prefect_env(home, port, extra_env))
    server_log = open(log_dir / "prefect-server.log", "ab")
    local.processes.append(subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=local.env, cwd=PROJECT_DIR, stdout=server_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{local.api_url}/health", timeout=2) as resp:  # noqa: S310 - loopback
                if resp.status == 200:
                    break
        except OSError:
            pass
        if local.processes[0].poll() is not None or time.monotonic() > deadline:
            local.stop()
            raise ToolFailed(f"the Prefect server did not start: see {log_dir / 'prefect-server.log'}")
        time.sleep(0.5)
    if not deploy:
        return local
    try:
        local.prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
        local.prefect("--no-prompt", "deploy", "--all", timeout=300)
        if worker:
            worker_log = open(log_dir / "prefect-worker.log", "ab")
            local.processes.append(subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process"],
                env=local.env, cwd=PROJECT_DIR, stdout=worker_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    except BaseException:
        local.stop()
        raise
    return local
