"""The fleet: schedules from the inventory, selection, and one night's run on a Prefect server whose database
is PostgreSQL, with workers on two sites' pools — and a worker killed in the middle of a night.

One server and its workers serve the module (starting them costs ~30 s); each test selects its own
environments, so their nights never see each other's."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml
from typer.testing import CliRunner

from odoops import devserver, fleet
from odoops.cli import app
from odoops.errors import ConfigError
from odoops.inventory import load_inventory
from odoops.runtime import repository_for
from odoops.sandbox import free_port
from tests.fleet_site import drop_databases, kill_host, make_databases
from tests.helpers import drop_database

SITES = {"a": 10, "b": 10, "c": 6}


def _inventory(path, cluster, dbs: dict, fleet_limits: dict, schedule: str, extra: dict | None = None):
    envs = {}
    for name, (dbname, filestore) in dbs.items():
        envs[name] = {"stage": "production" if name.endswith("1") else "staging", "platform": "host",
                      "database": {"dsn": cluster.dsn(dbname)}, "filestore": str(filestore),
                      "site": name[0], "labels": ["fleet", f"site-{name[0]}"],
                      "backup": {"storage": "local", "schedule": schedule, "timezone": "Europe/Brussels"}}
    envs.update(extra or {})
    path.write_text(yaml.safe_dump({"storage": {"local": {"type": "local", "path": str(path.parent / "backups")}},
                                    "fleet": fleet_limits, "environments": envs}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def served_fleet(tmp_path_factory, pg_cluster):
    root = tmp_path_factory.mktemp("fleet")
    dbs = make_databases(pg_cluster, [f"{site}{i:02d}" for site, n in SITES.items() for i in range(1, n + 1)], root)
    # Every environment's daily backup came due a minute ago (Brussels time), so the first tick backs each
    # up once and the next finds nothing; one environment's comes twelve hours later: never due here.
    brussels = datetime.now(ZoneInfo("Europe/Brussels")) - timedelta(minutes=1)
    daily = f"{brussels.minute} {brussels.hour} * * *"
    later = (datetime.now(UTC).hour + 12) % 24
    quiet = {"quiet": {"stage": "development", "platform": "host", "database": {"dsn": pg_cluster.dsn("nowhere")},
                       "filestore": str(root / "nowhere"), "site": "a",
                       "backup": {"schedule": f"0 {later} * * *", "timezone": "UTC"}},
             # due like the others, but its database does not exist: its failure must stop nothing else
             "broken": {"stage": "staging", "platform": "host", "database": {"dsn": pg_cluster.dsn("nowhere")},
                        "filestore": str(root / "nowhere"), "site": "b",
                        "backup": {"schedule": daily, "timezone": "Europe/Brussels"}}}
    night = _inventory(root / "night.yaml", pg_cluster, dbs, {"max_backups_per_storage": 7,
                                                              "max_backups_per_db_server": 6}, daily, quiet)
    # The crash night: caps wide enough that slots held by the killed runs (given back when their 60 s
    # leases expire) do not slow the survivors.
    crash = _inventory(root / "crash.yaml", pg_cluster, dbs, {"max_backups_per_storage": 16,
                                                              "max_backups_per_db_server": 16}, daily)
    server_db = f"prefect_{uuid.uuid4().hex[:8]}"
    import psycopg

    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{server_db}"')  # a fixed-pattern name: nothing to quote
    local = devserver.start(
        root / "prefect", free_port(),
        {"ODOOPS_INVENTORY": str(night), **pg_cluster.env(), "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
         # no scheduler: the nightly deployment's own 15-minute schedule would start nights of its own
         "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"},
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{pg_cluster.port}/{server_db}",
        # each flow run is a process: four at a time per worker keeps 2 cores from thrashing
        workers=[devserver.WorkerSpec("odoops", "worker-main"), devserver.WorkerSpec("odoops-a", "worker-a", 4),
                 devserver.WorkerSpec("odoops-b", "worker-b", 4), devserver.WorkerSpec("odoops-c", "worker-c1", 4),
                 devserver.WorkerSpec("odoops-c", "worker-c2", 4)])
    yield local, night, crash
    local.stop(timeout=3)  # then SIGKILL: nothing of theirs is kept
    drop_databases(pg_cluster, [dbname for dbname, _ in dbs.values()])
    drop_database(pg_cluster, server_db)


def _api(local, coroutine_fn):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: local.api_url}):
        return asyncio.run(coroutine_fn())


def _logs(local) -> str:
    return "".join(p.read_text(errors="replace")[-1500:] for p in sorted(local.home.glob("prefect-worker*.log")))


async def _final(client, run_id, seconds: float = 240):
    deadline = time.monotonic() + seconds
    while True:
        run = await client.read_flow_run(run_id)
        if run.state.is_final() or time.monotonic() > deadline:
            return run
        await asyncio.sleep(1)


def _scheduled_backups(inventory, names) -> dict[str, list]:
    repo = repository_for(load_inventory(inventory), "local")
    return {name: [b for b in repo.list_backups(name) if b.kind == "scheduled"] for name in names}


def test_one_night_backs_up_each_due_environment_once_on_its_sites_worker(served_fleet, pg_cluster):
    local, night, _ = served_fleet
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    names = [n for n in load_inventory(night).environments if n[0] in "ab" and n not in ("quiet", "broken")]

    async def scenario():
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("nightly/nightly")
            assert [s.schedule.interval.total_seconds() for s in deployment.schedules] == [900]
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters={"select": "site=a,site=b", "inventory": str(night)})
            run = await _final(client, run.id)
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
                any_=["nightly-summary"])))
            tick = await client.read_variable_by_name(fleet.tick_variable("site=a,site=b"))
            runs = {}
            for record in _audit(night):
                runs[record["environment"]] = await client.read_flow_run(uuid.UUID(record["flow_run_id"]))
            limits = {name: (await client.read_global_concurrency_limit_by_name(name)).limit
                      for name in ("odoops-storage-local", f"odoops-dbserver-127.0.0.1:{pg_cluster.port}")}
            return run, artifacts, tick, runs, limits

    run, artifacts, tick, runs, limits = _api(local, scenario)
    # the night fails, naming the one environment that failed, after every other one was backed up
    assert run.state.is_failed(), (run.state, _logs(local))
    assert "1 of 21 backups of the night did not succeed: broken; the others are done" in run.state.message
    backups = _scheduled_backups(night, names + ["quiet", "broken"])
    assert {n: len(b) for n, b in backups.items()} == {**{n: 1 for n in names}, "quiet": 0, "broken": 0}
    for name in names:  # each backup ran on the pool and worker of its site
        assert runs[name].work_pool_name == f"odoops-{name[0]}", name
        assert runs[name].labels["prefect.worker.name"] == f"worker-{name[0]}", name
        assert runs[name].state.is_completed()
    [summary] = [a for a in artifacts if a.flow_run_id == run.id]
    rows = json.loads(summary.data) if isinstance(summary.data, str) else summary.data
    assert sorted(r["environment"] for r in rows) == sorted([*names, "broken"])
    by_env = {r["environment"]: r for r in rows}
    assert by_env["broken"]["outcome"].startswith("failed: ") and by_env["broken"]["backup_id"] == ""
    for name in names:
        assert by_env[name]["outcome"] == "success" and by_env[name]["size"] > 0
        assert by_env[name]["backup_id"] == backups[name][0].id and by_env[name]["duration_s"] > 0
    assert limits == {"odoops-storage-local": 7, f"odoops-dbserver-127.0.0.1:{pg_cluster.port}": 6}
    # The next tick starts from this one: the occurrences of this night are behind it, never due twice.
    assert run.start_time <= datetime.fromisoformat(tick.value) <= run.end_time
    occurrence = fleet.last_occurrence(load_inventory(night).environment("a01"), run.start_time - timedelta(hours=1),
                                       run.start_time)
    assert occurrence is not None and fleet.due(list(load_inventory(night).environments.values()),
                                                datetime.fromisoformat(tick.value), run.end_time) == []


def _audit(inventory):
    from odoops.audit import read_audit

    inv = load_inventory(inventory)
    return [r for r in read_audit(repository_for(inv, "local").store)
            if r["runbook"] == "backup" and r["outcome"] == "success" and r["flow_run_id"]]


def test_a_worker_killed_mid_night_its_environments_are_backed_up_once_by_the_other(served_fleet):
    local, night, crash = served_fleet
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )

    names = [f"c{i:02d}" for i in range(1, SITES["c"] + 1)]

    async def scenario():
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("nightly/nightly")
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters={"select": "site=c", "inventory": str(crash), "everything": True})
            deadline = time.monotonic() + 120
            victim = None
            while victim is None:  # the first worker of site c seen running a backup dies with its runs
                assert time.monotonic() < deadline, _logs(local)
                running = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=["nightly"]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["RUNNING"]))))
                workers = {r.labels.get("prefect.worker.name") for r in running if r.work_pool_name == "odoops-c"}
                victim = next((w for w in sorted(workers) if w), None)
                await asyncio.sleep(0.2)
            kill_host(local.workers[victim])
            run = await _final(client, run.id)
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
                any_=["nightly-summary"])))
            return victim, run, artifacts

    victim, run, artifacts = _api(local, scenario)
    assert run.state.is_completed(), (run.state, _logs(local))
    backups = _scheduled_backups(crash, names)
    assert {n: len(b) for n, b in backups.items()} == {n: 1 for n in names}  # none twice, none forgotten
    [summary] = [a for a in artifacts if a.flow_run_id == run.id]
    rows = {r["environment"]: r for r in (json.loads(summary.data) if isinstance(summary.data, str) else summary.data)}
    assert sorted(rows) == names
    retried = [r for r in rows.values() if r["outcome"] == "success (after a crash)"]
    assert retried, rows  # the killed worker's runs were submitted again…
    survivor = "worker-c2" if victim == "worker-c1" else "worker-c1"
    for row in rows.values():
        assert row["backup_id"] == backups[row["environment"]][0].id
        assert row["worker"] == (survivor if row in retried else row["worker"])
    assert all(r["worker"] == survivor for r in retried)  # …and run by the worker still alive


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"schedule": "0 25 * * *"}, "environments.shop.backup.schedule: '0 25 * * *' is not a valid cron expression"),
        ({"schedule": "nightly"}, "environments.shop.backup.schedule: 'nightly' is not a 5-field cron expression"),
        ({"timezone": "Europe/Atlantis"}, "environments.shop.backup.timezone: unknown time zone 'Europe/Atlantis'"),
    ],
)
def test_a_bad_schedule_in_the_inventory_is_one_line_naming_the_field(tmp_path, change, expected):
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump({"environments": {"shop": {
        "stage": "production", "platform": "host", "database": {"dsn": "postgresql://odoo@127.0.0.1:5432/shop"},
        "filestore": "/srv/shop", "backup": {"schedule": "0 2 * * *", "timezone": "UTC", **change}}}}))
    # `schedules list` exits 2 like every command; `health` keeps its own 4 for an error (2 means critical)
    for args, code in ((["schedules", "list"], 2), (["health", "--select", "stage=production", "--no-prefect"], 4)):
        result = CliRunner().invoke(app, [*args, "--inventory", str(inv)])
        assert result.exit_code == code, result.output
        line = result.stderr.strip()
        assert expected in line and "\n" not in line
        assert "write" in line or "use" in line  # …and the fix


def test_selection_and_due_schedules(tmp_path):
    inv_path = tmp_path / "inv.yaml"
    envs = {name: {"stage": stage, "platform": "host", "database": {"dsn": f"postgresql://o@127.0.0.1:5432/{name}"},
                   "filestore": f"/srv/{name}", "labels": labels, **({"site": site} if site else {}),
                   "backup": {"schedule": cron, "timezone": tz}}
            for name, stage, labels, site, cron, tz in [
                ("shop-eu", "production", ["retail", "eu"], "eu", "0 2 * * *", "Europe/Brussels"),
                ("shop-us", "production", ["retail"], "us", "0 2 * * *", "America/New_York"),
                ("shop-eu-staging", "staging", ["eu"], "eu", "30 3 * * 1-5", "Europe/Brussels"),
                ("lab", "development", [], None, "0 2 * * *", "UTC")]}
    inv_path.write_text(yaml.safe_dump({"environments": envs}, sort_keys=False))
    inv = load_inventory(inv_path)

    def names(text):
        return [e.name for e in fleet.select(inv, text)]

    assert names("stage=production") == ["shop-eu", "shop-us"]
    assert names("label=eu,stage=production") == ["shop-eu"]
    assert names("label=eu,label=retail") == ["shop-eu", "shop-us", "shop-eu-staging"]
    assert names("shop-*,site=eu") == ["shop-eu", "shop-eu-staging"]
    assert fleet.pool_for(inv.environment("shop-eu")) == "odoops-eu" and fleet.pool_for(inv.environment("lab")) == "odoops"
    for bad, message in (("colour=red", "unknown key 'colour'"), ("stage=prod", "stage 'prod' is not one of"),
                         ("name=nothing-*", "matches no environment")):
        with pytest.raises(ConfigError, match=message):
            fleet.select(inv, bad)
    # 02:00 in Brussels is 01:00 UTC in winter, 02:00 in New York is 07:00 UTC
    since, until = datetime(2026, 12, 1, 0, 50, tzinfo=UTC), datetime(2026, 12, 1, 1, 5, tzinfo=UTC)
    assert [(e.name, w.isoformat()) for e, w in fleet.due(list(inv.environments.values()), since, until)] == \
        [("shop-eu", "2026-12-01T01:00:00+00:00")]
    # a tick missed for a day catches up once per environment (the newest occurrence), none twice
    late = fleet.due(list(inv.environments.values()), datetime(2026, 11, 30, 0, 50, tzinfo=UTC),
                     datetime(2026, 12, 1, 8, 0, tzinfo=UTC))
    assert [(e.name, w.isoformat()) for e, w in late] == [
        ("shop-eu", "2026-12-01T01:00:00+00:00"), ("shop-us", "2026-12-01T07:00:00+00:00"),
        ("shop-eu-staging", "2026-12-01T02:30:00+00:00"), ("lab", "2026-12-01T02:00:00+00:00")]
    # the spring-forward night: 02:30 does not exist in Brussels on 2026-03-29, cron runs it at 03:00 local
    staging = inv.environment("shop-eu-staging")
    assert fleet.next_occurrence(inv.environment("shop-eu"), datetime(2026, 3, 28, 23, 0, tzinfo=UTC)).isoformat() \
        == "2026-03-29T01:00:00+00:00"
    assert fleet.next_occurrence(staging, datetime(2026, 12, 4, 3, 0, tzinfo=UTC)).isoformat() == \
        "2026-12-07T02:30:00+00:00"  # Friday 04:00 local → Monday
    listed = CliRunner().invoke(app, ["schedules", "list", "--select", "site=eu", "--json", "--inventory", str(inv_path)])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["environment"], r["pool"], r["schedule"]) for r in rows] == [
        ("shop-eu", "odoops-eu", "0 2 * * *"), ("shop-eu-staging", "odoops-eu", "30 3 * * 1-5")]
    assert rows[0]["next_run"].endswith(("+01:00", "+02:00")) and rows[0]["next_run_utc"].endswith("+00:00")


def test_fleet_commands_take_select_and_one_failure_never_stops_the_others(tmp_path, pg_cluster, prefect_harness):
    dbs = make_databases(pg_cluster, ["shop1", "shop2"], tmp_path)
    try:
        inv = _inventory(tmp_path / "inv.yaml", pg_cluster, dbs, {}, "0 2 * * *", {"broken": {
            "stage": "production", "platform": "host", "database": {"dsn": pg_cluster.dsn("no_such_db")},
            "filestore": str(tmp_path / "nowhere"), "labels": ["fleet"], "backup": {"storage": "local"}}})

        def odoops(*args):
            return CliRunner().invoke(app, [*args, "--inventory", str(inv)])

        made = odoops("backup", "--select", "label=fleet,stage=production", "--json")
        assert made.exit_code == 2 and "1 of 2 backups failed (broken)" in made.stderr, made.output
        rows = {r["environment"]: r for r in json.loads(made.stdout)}
        assert set(rows) == {"shop1", "broken"}  # shop2 is staging
        assert rows["shop1"]["outcome"] == "success" and rows["shop1"]["size"] > 0
        assert rows["broken"]["outcome"].startswith("failed: ") and "\n" not in rows["broken"]["outcome"]
        assert odoops("backup", "shop2").exit_code == 0
        verified = odoops("backups", "verify", "--select", "shop*", "--json")
        assert verified.exit_code == 0, verified.output
        assert [(r["environment"], r["outcome"]) for r in json.loads(verified.stdout)] == [
            ("shop1", "intact"), ("shop2", "intact")]
        health = odoops("health", "--select", "shop*", "--no-prefect", "--json")
        assert health.exit_code in (0, 1), health.output
        assert [r["environment"] for r in json.loads(health.stdout)] == ["shop1", "shop2"]
        both = odoops("backup", "shop1", "--select", "stage=production")
        assert both.exit_code == 2 and "not both" in both.stderr
    finally:
        drop_databases(pg_cluster, [dbname for dbname, _ in dbs.values()])
