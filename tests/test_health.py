"""Health checks and incident runbooks against a real PostgreSQL with real sessions, and a stand-in Odoo.

The sessions are real: an idle one, one idle in transaction, one running ``pg_sleep(300)`` (cancelled
at teardown), and a lock holder plus a session blocked behind it on ``res_partner`` of the real Odoo
17 sample database. Thresholds are 1 s so nothing waits long.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import xmlrpc.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
import typer
import yaml
from psycopg import sql
from typer.testing import CliRunner

from flows.incident import run_incident
from odoops.audit import read_audit
from odoops.cli_health import register
from odoops.errors import ConfigError, RefusedError
from odoops.inventory import load_inventory
from odoops.platforms import platform_for
from odoops.sandbox import free_port
from tasks import health
from tasks.storage import LocalStore
from tests.odoo_standin import OdooStandin

ROOT = Path(__file__).resolve().parent.parent
FAST = {"idle_in_transaction_seconds": 1, "long_query_seconds": 1, "lock_wait_seconds": 1}
OPTIONS = {"older_than": 1.0, "min_dead_ratio": 0.2, "min_dead_tuples": 1000, "slow_log": "on", "ms": 500,
           "wait_seconds": 5}


def write_inventory(tmp_path: Path, **envs: dict) -> Path:
    path = tmp_path / "environments.yaml"
    path.write_text(yaml.safe_dump({"environments": envs}))
    return path


def env_spec(pg_cluster, dbname: str, filestore: Path, stage: str = "development", url: str | None = None,
             **extra) -> dict:
    spec = {"stage": stage, "platform": "host", "database": {"dsn": pg_cluster.dsn(dbname)},
            "filestore": str(filestore), "health": dict(FAST)}
    if url:
        spec["url"] = url
    spec.update(extra)
    return spec


def by_name(report: health.HealthReport) -> dict[str, health.CheckResult]:
    return {c.name: c for c in report.checks}


def pids(items: list[dict], role: str | None = None) -> set[int]:
    return {i["pid"] for i in items if role is None or i.get("role") == role}


def alive(pg_cluster, pid: int) -> bool:
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is not None


def audit_records(tmp_path: Path) -> list[dict]:
    return read_audit(LocalStore(tmp_path / "backups"))


@pytest.fixture
def standin():
    with OdooStandin() as odoo:
        yield odoo


@pytest.fixture
def sessions(pg_cluster, odoo_db):
    """Real idle, idle-in-transaction, long-running, lock-holding and blocked sessions on ``odoo_db``."""
    dbname, _ = odoo_db
    dsn = pg_cluster.dsn(dbname)
    conns: list[psycopg.Connection] = []

    def connect(autocommit: bool = True, db: str = dsn) -> psycopg.Connection:
        conn = psycopg.connect(db, autocommit=autocommit, application_name="test-session")
        conns.append(conn)
        return conn

    idle = connect()
    idle.execute("SELECT 1")
    idle_tx = connect(autocommit=False)
    idle_tx.execute("SELECT 1")
    other_db_tx = connect(autocommit=False, db=pg_cluster.dsn("postgres"))  # another database: never touched
    other_db_tx.execute("SELECT 1")
    holder = connect(autocommit=False)
    holder.execute("UPDATE res_partner SET write_date = now() WHERE id = 1")
    sleeper, blocked = connect(), connect()
    errors: list[BaseException] = []

    def run(conn: psycopg.Connection, query: str) -> None:
        try:
            conn.execute(query)
        except psycopg.Error as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(sleeper, "SELECT pg_sleep(300)"), daemon=True),  # cancelled below
               threading.Thread(target=run, args=(blocked, "UPDATE res_partner SET write_date = now() WHERE id = 1"),
                                daemon=True)]
    for t in threads:
        t.start()
    watcher = psycopg.connect(dsn, autocommit=True)
    deadline = time.monotonic() + 30
    while True:
        row = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND state = 'active'",
                              ([sleeper.info.backend_pid, blocked.info.backend_pid],)).fetchone()
        if row[0] == 2:
            break
        assert time.monotonic() < deadline, f"the sleeping and the blocked session never both ran: {errors}"
        time.sleep(0.02)
    watcher.close()
    time.sleep(1.3)  # every session now older than the 1-s thresholds
    yield SimpleNamespace(idle=idle.info.backend_pid, idle_tx=idle_tx.info.backend_pid, idle_tx_conn=idle_tx,
                          other_db_tx=other_db_tx.info.backend_pid, holder=holder.info.backend_pid,
                          sleeper=sleeper.info.backend_pid, blocked=blocked.info.backend_pid, blocked_thread=threads[1])
    for conn in (sleeper, blocked):
        try:
            conn.cancel()
        except psycopg.Error:
            pass
    for conn in (holder, idle_tx, other_db_tx):
        try:
            conn.rollback()
        except psycopg.Error:
            pass
    for t in threads:
        t.join(timeout=5)
    for conn in conns:
        conn.close()


# ---------------------------------------------------------------- checks against real sessions


def test_postgres_checks_see_exactly_the_real_sessions(tmp_path, pg_cluster, odoo_db, sessions):
    dbname, filestore = odoo_db
    inv = load_inventory(write_inventory(tmp_path, dev=env_spec(pg_cluster, dbname, filestore)))
    report = health.run_health_checks(inv.environment("dev"), platform_for(inv.environment("dev")))
    checks = by_name(report)

    assert checks["pg.connection"].status == "ok"
    idle_tx = checks["pg.idle_in_transaction"]
    assert idle_tx.status == "warn" and pids(idle_tx.items) == {sessions.idle_tx, sessions.holder}
    long_q = checks["pg.long_queries"]
    assert long_q.status == "warn" and pids(long_q.items) == {sessions.sleeper, sessions.blocked}
    assert any("pg_sleep(300)" in i["query"] for i in long_q.items)
    locks = checks["pg.locks"]
    assert locks.status == "warn" and locks.value == 1
    assert pids(locks.items, "blocked") == {sessions.blocked}
    assert pids(locks.items, "blocking") == {sessions.holder}
    assert [i["blocked_by"] for i in locks.items if i["role"] == "blocked"] == [[sessions.holder]]
    states = {i["state"]: i["this_database"] for i in checks["pg.connections"].items}
    # idle; idle_tx + holder; sleeper + blocked + the checker's own session
    assert states == {"idle": 1, "idle in transaction": 2, "active": 3}
    assert checks["pg.connections"].status == "ok" and "/100 connections" in checks["pg.connections"].detail
    assert checks["pg.database_size"].value > 1_000_000
    assert checks["filestore.size"].status == "ok" and checks["filestore.size"].value > 0
    assert checks["container.resources"].status == "skipped" and "n/a" in checks["container.resources"].detail
    assert checks["http.health"].status == "skipped"  # no url in this inventory
    assert report.status == "warn" and report.exit_code == 1


def test_terminate_idle_dry_run_then_apply(tmp_path, pg_cluster, odoo_db, sessions):
    dbname, filestore = odoo_db
    inv = load_inventory(write_inventory(tmp_path, dev=env_spec(pg_cluster, dbname, filestore)))
    env = inv.environment("dev")

    dry = run_incident(inv, env, "terminate-idle", False, None, OPTIONS)
    assert not dry.applied and pids(dry.targets) == {sessions.idle_tx, sessions.holder}
    assert all(line.startswith("would run pg_terminate_backend(") for line in dry.actions)
    assert alive(pg_cluster, sessions.idle_tx) and alive(pg_cluster, sessions.holder)

    done = run_incident(inv, env, "terminate-idle", True, None, OPTIONS)
    assert {t["pid"]: t["outcome"] for t in done.targets} == {sessions.idle_tx: "terminated",
                                                              sessions.holder: "terminated"}
    assert not alive(pg_cluster, sessions.idle_tx) and not alive(pg_cluster, sessions.holder)
    with pytest.raises(psycopg.OperationalError):
        sessions.idle_tx_conn.execute("SELECT 1")
    sessions.blocked_thread.join(timeout=5)  # the lock holder died, so the blocked update went through
    assert not sessions.blocked_thread.is_alive()
    for pid in (sessions.other_db_tx, sessions.idle, sessions.sleeper, sessions.blocked):
        assert alive(pg_cluster, pid)  # other database, idle, active: all left alone
    outcomes = [r["outcome"] for r in audit_records(tmp_path) if r["runbook"] == "incident"]
    assert outcomes == ["dry-run", "applied"]


def test_production_needs_confirmation(tmp_path, pg_cluster, odoo_db, sessions):
    dbname, filestore = odoo_db
    path = write_inventory(tmp_path, prod=env_spec(pg_cluster, dbname, filestore, stage="production"))
    inv = load_inventory(path)
    env = inv.environment("prod")

    for confirm in (None, "dev", "PROD"):
        with pytest.raises(RefusedError, match="prod is production: repeat its name"):
            run_incident(inv, env, "terminate-idle", True, confirm, OPTIONS)
    assert alive(pg_cluster, sessions.idle_tx)
    assert run_incident(inv, env, "terminate-idle", False, None, OPTIONS).targets  # dry run needs no confirmation

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    res = CliRunner().invoke(app, ["incident", "terminate-idle", "prod", "--older-than", "1", "--apply",
                                   "--inventory", str(path), "--no-prefect"])
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error: prod is production")
    assert alive(pg_cluster, sessions.idle_tx)

    done = run_incident(inv, env, "terminate-idle", True, "prod", OPTIONS)
    assert sessions.idle_tx in {t["pid"] for t in done.targets if t["outcome"] == "terminated"}
    assert not alive(pg_cluster, sessions.idle_tx)
    outcomes = [r["outcome"] for r in audit_records(tmp_path)]
    assert outcomes.count("refused") == 4 and outcomes[-1] == "applied"


# ---------------------------------------------------------------- vacuum, slow-log, restart


def _dead_tuples(conn: psycopg.Connection, table: str) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s", (table,)).fetchone()
    return row[0] if row else 0


def test_vacuum_removes_dead_tuples(tmp_path, pg_cluster, odoo_db):
    dbname, filestore = odoo_db
    table = 'odoops "bloat" table'  # quotes and spaces: identifiers must be quoted by psycopg
    with psycopg.connect(pg_cluster.dsn(dbname), autocommit=True) as conn:
        ident = sql.Identifier(table)
        conn.execute(sql.SQL("CREATE TABLE {} (id int, v text) WITH (autovacuum_enabled = false)").format(ident))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, repeat('x', 50) FROM generate_series(1, 5000) g").format(ident))
        conn.execute(sql.SQL("DELETE FROM {} WHERE id > 1000").format(ident))
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
        deadline = time.monotonic() + 5
        while _dead_tuples(conn, table) < 4000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _dead_tuples(conn, table) == 4000

        inv = load_inventory(write_inventory(tmp_path, dev=env_spec(pg_cluster, dbname, filestore)))
        env = inv.environment("dev")
        check = by_name(health.run_health_checks(env, platform_for(env)))["pg.dead_tuples"]
        assert check.status == "warn" and check.items[0]["table"] == table and check.items[0]["ratio"] == 0.8

        dry = run_incident(inv, env, "vacuum", False, None, OPTIONS)
        assert [t["table"] for t in dry.targets] == [table]
        assert dry.actions == ['would run VACUUM (ANALYZE) "public"."odoops ""bloat"" table" '
                               "(4000 dead tuples, ratio 0.8)"]
        assert _dead_tuples(conn, table) == 4000

        done = run_incident(inv, env, "vacuum", True, None, OPTIONS)
        assert done.targets[0]["dead_after"] == 0 and _dead_tuples(conn, table) == 0
        assert by_name(health.run_health_checks(env, platform_for(env)))["pg.dead_tuples"].status == "ok"


def test_slow_log_on_and_off(tmp_path, pg_cluster, odoo_db):
    dbname, filestore = odoo_db
    inv = load_inventory(write_inventory(tmp_path, dev=env_spec(pg_cluster, dbname, filestore)))
    env = inv.environment("dev")

    def db_settings() -> list[str]:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            row = conn.execute("""SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d
                                  ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0""",
                               (dbname,)).fetchone()
        return row[0] if row else []

    dry = run_incident(inv, env, "slow-log", False, None, {**OPTIONS, "ms": 250})
    assert dry.actions[0].startswith(f'would run ALTER DATABASE "{dbname}" SET log_min_duration_statement = 250')
    assert db_settings() == []
    run_incident(inv, env, "slow-log", True, None, {**OPTIONS, "ms": 250})
    assert db_settings() == ["log_min_duration_statement=250"]
    with psycopg.connect(pg_cluster.dsn(dbname)) as conn:  # a new session sees it
        assert conn.execute("SHOW log_min_duration_statement").fetchone()[0] == "250ms"
    off = run_incident(inv, env, "slow-log", True, None, {**OPTIONS, "slow_log": "off"})
    assert "250 -> not set" in off.actions[0]
    assert db_settings() == []


def test_restart_through_the_platform(tmp_path, pg_cluster, odoo_db, standin):
    dbname, filestore = odoo_db
    marker = tmp_path / "restart.log"

    def cmd(word: str) -> list[str]:
        return [sys.executable, "-c", f"open({str(marker)!r}, 'a').write({word!r} + '\\n')"]

    inv = load_inventory(write_inventory(
        tmp_path, dev=env_spec(pg_cluster, dbname, filestore, url=standin.url, stop_command=cmd("stop"),
                               start_command=cmd("start")),
        bare=env_spec(pg_cluster, dbname, filestore)))
    env = inv.environment("dev")
    dry = run_incident(inv, env, "restart", False, None, OPTIONS)
    assert len(dry.actions) == 3 and dry.actions[0].startswith("would stop Odoo: ") and not marker.exists()
    done = run_incident(inv, env, "restart", True, None, OPTIONS)
    assert marker.read_text() == "stop\nstart\n"
    assert done.detail == "restarted and healthy"
    with pytest.raises(ConfigError, match="has no stop_command and start_command"):
        run_incident(inv, inv.environment("bare"), "restart", False, None, OPTIONS)


# ---------------------------------------------------------------- HTTP probes, unreachable things


def test_standin_odoo_all_ok(tmp_path, pg_cluster, odoo_db, monkeypatch):
    dbname, filestore = odoo_db
    monkeypatch.setenv("ODOO_HEALTH_PASSWORD", "s3cret-pw")
    with OdooStandin(databases={dbname: {"admin": ("s3cret-pw", 2)}}) as odoo:
        spec = env_spec(pg_cluster, dbname, filestore, url=odoo.url)
        spec["health"].update(login="admin", login_password_env="ODOO_HEALTH_PASSWORD", expected_version="17.0",
                              response_time_warn=30, response_time_critical=60)  # a busy machine is no slow Odoo
        inv = load_inventory(write_inventory(tmp_path, dev=spec))
        report = health.run_health_checks(inv.environment("dev"), platform_for(inv.environment("dev")))
        assert ("POST", "/web/webclient/version_info") in odoo.requests
        assert xmlrpc.client.ServerProxy(f"{odoo.url}/xmlrpc/2/common").version()["server_serie"] == "17.0"
    checks = by_name(report)
    assert checks["http.health"].status == "ok" and checks["http.health"].value == "pass"
    assert checks["http.version"].value == "17.0"
    assert checks["http.login"].status == "ok" and checks["http.login"].value == 2
    assert checks["http.response_time"].status == "ok" and checks["http.response_time"].value < 30
    assert report.status == "ok" and report.exit_code == 0
    assert "s3cret-pw" not in json.dumps(report.to_dict())


def test_slow_and_failing_odoo(tmp_path, pg_cluster, odoo_db):
    dbname, filestore = odoo_db
    with OdooStandin(delay=0.3) as slow, OdooStandin(health_status=503) as down:
        slow_spec = env_spec(pg_cluster, dbname, filestore, url=slow.url)
        slow_spec["health"].update(response_time_warn=0.2, response_time_critical=60)
        inv = load_inventory(write_inventory(tmp_path, slow=slow_spec,
                                             down=env_spec(pg_cluster, dbname, filestore, url=down.url)))
        t = health.thresholds_for(inv.environment("slow"))
        slow_checks = {c.name: c for c in health.http_checks(inv.environment("slow"), t)}
        down_checks = {c.name: c for c in health.http_checks(inv.environment("down"), t)}
    assert slow_checks["http.response_time"].status == "warn"
    assert slow_checks["http.health"].status == "ok"
    assert down_checks["http.health"].status == "critical" and down_checks["http.health"].value == 503


def test_unreachable_database_and_url_are_critical_not_crashes(tmp_path, pg_cluster, odoo_db):
    dbname, filestore = odoo_db
    closed = free_port()
    spec = env_spec(pg_cluster, dbname, filestore, url=f"http://user:hunter2@127.0.0.1:{free_port()}")
    spec["database"]["dsn"] = f"postgresql://postgres@127.0.0.1:{closed}/{dbname}"
    inv = load_inventory(write_inventory(tmp_path, gone=spec))
    report = health.run_health_checks(inv.environment("gone"), platform_for(inv.environment("gone")))
    checks = by_name(report)
    assert checks["pg.connection"].status == "critical" and "unreachable" in checks["pg.connection"].detail
    assert all(checks[n].status == "skipped" for n in health.PG_CHECK_NAMES)
    assert checks["http.health"].status == "critical" and "unreachable" in checks["http.health"].detail
    assert "hunter2" not in json.dumps(report.to_dict())
    assert checks["filestore.size"].status == "ok"
    assert report.status == "critical" and report.exit_code == 2


def test_thresholds_are_validated(tmp_path, pg_cluster, odoo_db):
    assert health.Thresholds.from_mapping({}).connections_warn == 0.7
    with pytest.raises(ConfigError, match="unknown health threshold"):
        health.Thresholds.from_mapping({"conections_warn": 0.5})
    with pytest.raises(ConfigError, match="is a ratio and must be <= 1"):
        health.Thresholds.from_mapping({"connections_critical": 90})
    with pytest.raises(ConfigError, match="rows_shrink_tolerance: 5 is a ratio and must be <= 1"):
        health.Thresholds.from_mapping({"rows_shrink_tolerance": 5})  # 5 %, written as a number of percent
    with pytest.raises(ConfigError, match="swap them"):
        health.Thresholds.from_mapping({"connections_warn": 0.95})
    dbname, filestore = odoo_db
    spec = env_spec(pg_cluster, dbname, filestore)
    spec["health"]["long_query_seconds"] = "a minute"
    path = write_inventory(tmp_path, dev=spec)
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    res = CliRunner().invoke(app, ["health", "dev", "--inventory", str(path), "--no-prefect"])
    assert res.exit_code == health.EXIT_ERROR and "long_query_seconds" in res.stderr
    assert CliRunner().invoke(app, ["health"]).exit_code == health.EXIT_ERROR  # usage error is not "critical"


# ---------------------------------------------------------------- the flows and the CLI through Prefect


class WebhookReceiver:
    """Records the bodies POSTed to it: the receiving end of the example automation's webhook."""

    def __init__(self) -> None:
        calls: list[bytes] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                calls.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.calls = calls
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def create_example_automation(webhook: WebhookReceiver):
    """deployments/automation-health-webhook.yaml with a real Webhook block, created on the test server."""
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore
    from pydantic import SecretStr

    block_id = Webhook(method="POST", url=SecretStr(webhook.url), allow_private_urls=True).save(
        "health-alerts-test", overwrite=True)
    data = yaml.safe_load((ROOT / "deployments" / "automation-health-webhook.yaml").read_text())
    data["actions"][0]["block_document_id"] = str(block_id)
    with get_client(sync_client=True) as client:
        return client.create_automation(AutomationCore.model_validate(data))


def test_health_flow_artifacts_and_failure(tmp_path, pg_cluster, odoo_db, standin, webhook, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.health import artifact_key, health_flow
    from flows.incident import incident_flow

    dbname, filestore = odoo_db
    gone = env_spec(pg_cluster, dbname, filestore, url=f"http://127.0.0.1:{free_port()}")
    path = write_inventory(tmp_path, acme_dev=env_spec(pg_cluster, dbname, filestore, url=standin.url),
                           gone=gone, prod=env_spec(pg_cluster, dbname, filestore, stage="production"))

    data = health_flow(environment="acme_dev", inventory=str(path))
    assert data["status"] == "ok" and data["exit_code"] == 0
    with get_client(sync_client=True) as client:
        table = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[artifact_key("health", "acme_dev")])))
        markdown = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["health-report-acme-dev"])))
    rows = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
    assert {r["check"]: r["status"] for r in rows}["http.health"] == "ok"
    assert "# Health of acme_dev" in markdown[0].data and "pg.connections" in markdown[0].data

    automation_id = create_example_automation(webhook)
    try:
        state = health_flow(environment="gone", inventory=str(path), return_state=True)
        assert state.is_failed() and "http.health" in state.message
        deadline = time.monotonic() + 90  # event -> trigger -> action -> webhook, on a busy machine
        while not webhook.calls and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_automation(automation_id)
    assert len(webhook.calls) == 1  # the example automation fired for the failed run
    text = json.loads(webhook.calls[0])["text"]
    assert text.startswith("odoops health of gone failed: ") and "health of gone is critical: http.health" in text

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    res = CliRunner().invoke(app, ["health", "gone", "--inventory", str(path), "--json"])
    assert res.exit_code == 2 and json.loads(res.stdout)["status"] == "critical"

    refused = incident_flow(environment="prod", action="vacuum", apply=True, inventory=str(path), return_state=True)
    assert refused.is_failed() and "repeat its name" in refused.message
    shown = incident_flow(environment="prod", action="slow-log", ms=100, inventory=str(path))
    assert not shown["applied"] and shown["actions"][0].startswith("would run ALTER DATABASE")
    outcomes = [(r["runbook"], r["environment"], r["outcome"]) for r in audit_records(tmp_path)]
    assert outcomes == [("health", "acme_dev", "ok"), ("health", "gone", "critical"), ("health", "gone", "critical"),
                        ("incident", "prod", "refused"), ("incident", "prod", "dry-run")]
    assert all(r["flow_run_id"] for r in audit_records(tmp_path))
    assert platform_for(load_inventory(path).environment("prod")).filestore_exists()
