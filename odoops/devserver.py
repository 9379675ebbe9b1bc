"""A Prefect server on this machine with the odoops deployments and workers: ``make serve`` and the
end-to-end tests use it exactly as an operator would (``prefect server start``, ``prefect deploy --all``,
process workers).

The server keeps its database in SQLite under its home by default; ``database_url`` puts it on
PostgreSQL instead (``postgresql+asyncpg://user@host:port/db``, passed to the server as
``PREFECT_API_DATABASE_CONNECTION_URL``), the setup for many environments or several machines. Workers
are one per (pool, name): the default is one worker on pool ``odoops``; a scaled-out site runs one or more
on ``odoops-<site>`` (docs/fleet.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from odoops.errors import ConfigError, ToolFailed, tool_error_line

PROJECT_DIR = Path(__file__).resolve().parent.parent
WORK_POOL = "odoops"
DEFAULT_WORKER = "odoops-worker"


@dataclass(frozen=True)
class WorkerSpec:
    """One process worker: the work pool it polls and its name (unique per pool, shown on each run)."""

    pool: str = WORK_POOL
    name: str | None = None
    limit: int | None = None  # flow runs at once (each is a process); None: Prefect's default, unlimited


@dataclass
class LocalPrefect:
    home: Path
    port: int
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)  # worker name -> its process
    log_dir: Path | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def prefect(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run([sys.executable, "-m", "prefect", *args], env=self.env, cwd=PROJECT_DIR,
                                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise ToolFailed(f"prefect {' '.join(args[:2])} failed: {tool_error_line(result.stdout + result.stderr)}")
        return result.stdout

    def start_worker(self, spec: WorkerSpec) -> subprocess.Popen:
        """A process worker on ``spec.pool`` (created by the worker when missing), in its own session
        so that it can be stopped, or killed with what it started, alone."""
        name = spec.name or f"odoops-worker-{spec.pool}-{len(self.workers) + 1}"
        file = "prefect-worker.log" if name == DEFAULT_WORKER else f"prefect-worker-{name}.log"
        log = open((self.log_dir or self.home) / file, "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", spec.pool, "--type", "process",
             "--name", name, *(["--limit", str(spec.limit)] if spec.limit else [])], env=self.env, cwd=PROJECT_DIR,
            stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes.append(proc)
        self.workers[name] = proc
        return proc

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to every process, SIGKILL to those still running ``timeout`` seconds later."""
        for proc in reversed(self.processes):
            proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self.processes.clear()
        self.workers.clear()


def prefect_env(home: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
        "ODOOPS_PROJECT_DIR": str(PROJECT_DIR), "PREFECT_WORKER_QUERY_SECONDS": "2",
        # Leases on disk: a restarted server still knows, and revokes, the slot of a run that died meanwhile.
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": os.environ.get(
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem"),
        # A run is tagged environment:/stage: once it started (odoops/runtime.py tag_run); Prefect caches a
        # run's related resources (its tags) for 5 min from its first state change, so its Failed/Completed
        # event would lack them and the automations (deployments/automation-*.yaml) would not see it.
        "PREFECT_SERVER_EVENTS_RELATED_RESOURCE_CACHE_TTL": os.environ.get(
            "PREFECT_SERVER_EVENTS_RELATED_RESOURCE_CACHE_TTL", "PT0S"),
    })
    env.update(extra or {})
    return env


def start(home: Path, port: int, extra_env: dict[str, str] | None = None, log_dir: Path | None = None,
          worker: bool = True, deploy: bool = True, database_url: str | None = None,
          workers: list[WorkerSpec] | None = None) -> LocalPrefect:
    """Server, work pool, deployments from prefect.yaml, workers; returns when the server answers.

    ``database_url``: the server's database on PostgreSQL (``postgresql+asyncpg://…``; the database must
    exist, Prefect creates its tables). ``workers``: the workers to start (default one on pool odoops when
    ``worker``); each creates its pool when missing."""
    home.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir or home
    extra = dict(extra_env or {})
    if database_url:
        if not database_url.startswith("postgresql+asyncpg://"):
            raise ToolFailed(f"database_url {database_url.split('@')[-1]!r} is not a PostgreSQL URL for Prefect: "
                             "write postgresql+asyncpg://user@host:port/dbname")
        extra["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    local = LocalPrefect(home=home, port=port, env=prefect_env(home, port, extra), log_dir=log_dir)
    server_log = open(log_dir / "prefect-server.log", "ab")
    local.processes.append(subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=local.env, cwd=PROJECT_DIR, stdout=server_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    deadline = time.monotonic() + 180  # a first start on PostgreSQL creates the tables
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
    specs = workers if workers is not None else ([WorkerSpec(WORK_POOL, DEFAULT_WORKER)] if worker else [])
    try:
        # the deployments' pool; a worker creates its own pool when missing (and the nightly flow a site's)
        local.prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
        local.prefect("--no-prompt", "deploy", "--all", timeout=300)
        for spec in specs:
            local.start_worker(spec)
    except BaseException:
        local.stop()
        raise
    return local


# --- Access control and notifications (docs/operating.md) -------------------------------------------------

ALERT_BLOCK = "odoops-alerts"
AUTOMATION_PREFIX = "odoops: "
AUTOMATION_FILES = ("automation-failed-production.yaml", "automation-missed-backup.yaml")
MISSED_BACKUP_HOURS = 26.0


def auth_env(auth_string: str | None) -> dict[str, str]:
    """The settings that turn on Prefect's basic auth: the server checks ``user:password`` on every API call
    (``PREFECT_SERVER_API_AUTH_STRING``), its clients (workers, the CLI, ``prefect deploy``) send it
    (``PREFECT_API_AUTH_STRING``). Pass the result in ``start(extra_env=...)``."""
    if not auth_string:
        return {}
    if ":" not in auth_string:
        raise ConfigError("the Prefect auth string must be user:password (PREFECT_SERVER_API_AUTH_STRING): "
                         "set it as e.g. admin:<a long random password>")
    return {"PREFECT_SERVER_API_AUTH_STRING": auth_string, "PREFECT_API_AUTH_STRING": auth_string}


def _client_settings(local: LocalPrefect) -> dict:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    settings = {PREFECT_API_URL: local.api_url}
    if local.env.get("PREFECT_API_AUTH_STRING"):
        settings[PREFECT_API_AUTH_STRING] = local.env["PREFECT_API_AUTH_STRING"]
    return settings


def check_webhook_url(url: str) -> None:
    """A webhook URL must be http(s): said without repeating it (its path is the secret token)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # the URL itself is a secret (its path is the token): never repeat it
        raise ConfigError("ODOOPS_ALERT_WEBHOOK_URL is not an http(s) URL: set it to the incoming-webhook URL "
                         "of your chat or alerting tool (https://…)")


def automation_definitions(environments: list[str], missed_backup_hours: float = MISSED_BACKUP_HOURS,
                           webhook_block: str | None = None, email_block: str | None = None) -> list[dict]:
    """The automations of ``deployments/automation-*.yaml`` filled in: the failed-production one, and one
    missed-backup automation per environment in ``environments``. Actions whose block is None are left out."""
    from string import Template

    import yaml

    blocks = {"$ODOOPS_WEBHOOK_BLOCK": webhook_block, "$ODOOPS_EMAIL_BLOCK": email_block}
    hours = f"{missed_backup_hours:g}"
    out = []
    for file in AUTOMATION_FILES:
        text = (PROJECT_DIR / "deployments" / file).read_text()
        for environment in (environments if "$ODOOPS_ENVIRONMENT" in text else [None]):
            filled = Template(text).safe_substitute(
                ODOOPS_ENVIRONMENT=environment or "", ODOOPS_MISSED_BACKUP_HOURS=hours,
                ODOOPS_MISSED_BACKUP_SECONDS=f"{missed_backup_hours * 3600:g}")
            definition = yaml.safe_load(filled)
            actions = []
            for action in definition["actions"]:
                block = blocks.get(str(action.get("block_document_id")), action.get("block_document_id"))
                if block:
                    actions.append({**action, "block_document_id": block})
            out.append({**definition, "actions": actions})
    return out


def install_automations(local: LocalPrefect, webhook_url: str | None, email_block: str | None = None,
                        environments: list[str] | None = None,
                        missed_backup_hours: float = MISSED_BACKUP_HOURS) -> list[str]:
    """Create the ``odoops-alerts`` Webhook block from ``webhook_url`` and the odoops automations that call it
    (and the notification block named ``email_block``, ``<block-type-slug>/<name>``, e.g. an e-mail one).

    Idempotent: the block is overwritten and every automation named ``odoops: …`` is replaced. Missed-backup
    automations go to ``environments`` (default: the inventory's environments with a backup schedule).
    Nothing to notify (neither a URL nor a block): nothing is installed. Returns the automations' names."""
    from prefect.settings import temporary_settings

    if not webhook_url and not email_block:
        return []
    if webhook_url:
        check_webhook_url(webhook_url)
    if environments is None:
        from odoops.inventory import load_inventory

        inventory = load_inventory(local.env.get("ODOOPS_INVENTORY"))
        environments = [e.name for e in inventory.environments.values() if e.backup.schedule]
    with temporary_settings(_client_settings(local)):
        return _install(webhook_url, email_block, environments, missed_backup_hours)


def _install(webhook_url: str | None, email_block: str | None, environments: list[str],
             missed_backup_hours: float) -> list[str]:
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore
    from pydantic import SecretStr

    webhook_id = email_id = None
    if webhook_url:
        webhook = Webhook(method="POST", url=SecretStr(webhook_url), headers={"Content-Type": "application/json"})
        webhook_id = str(webhook.save(ALERT_BLOCK, overwrite=True))
    with get_client(sync_client=True) as client:
        if email_block:
            slug, _, name = email_block.partition("/")
            try:
                email_id = str(client.read_block_document_by_name(name, slug).id)
            except Exception as exc:  # noqa: BLE001 - Prefect raises ObjectNotFound or an HTTP error
                raise ConfigError(f"notification block {email_block!r} not found ({type(exc).__name__}): create it "
                                 "in the UI (Blocks > +) or name it as <block-type-slug>/<name>") from exc
        for existing in client.read_automations():
            if existing.name.startswith(AUTOMATION_PREFIX):
                client.delete_automation(existing.id)
        names = []
        for definition in automation_definitions(environments, missed_backup_hours, webhook_id, email_id):
            client.create_automation(AutomationCore.model_validate(definition))
            names.append(definition["name"])
    return names
