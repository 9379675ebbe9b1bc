"""Benchmark: one fleet night — N small environments (100 by default) on one PostgreSQL, backed up by one run
of the ``nightly`` deployment on a Prefect server whose database is PostgreSQL, with process workers.

Why: the fleet's promise is that one scheduled flow backs up every due environment, in parallel up to the
caps, without the orchestration costing more than the backups. The issue asks for:

- the night's wall time against the sum of the single backups' durations (each backup run's own start to
  end, read from Prefect), and against a few backups run one at a time (the sequential baseline);
- the peak memory of the Prefect server and of the worker (their own processes: ``VmHWM``), and of the
  whole tree each one started (sampled every 0.5 s from /proc: the flow-run processes are the worker's).

These are figures, not pass/fail. The data are small Odoo-shaped databases (tests/fleet_site.py): the
fleet's cost is in its orchestration, not in the size of one database (bench_backup.py measures that).

Usage: .venv/bin/python bench/bench_fleet.py [--environments 100] [--workers 1] [--limit 4]
       [--per-db-server 4] [--per-storage 8] [--singles 5]
Results: bench/out/fleet.json. Everything it starts (a throwaway cluster, the server, the workers) is
stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
OUT = ROOT / "bench" / "out"
WORK = OUT / "fleet-bench"


def say(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {text}", flush=True)


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Peak of the summed RSS of each watched process and its descendants, every 0.5 s."""

    def __init__(self, roots: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.roots, self.peaks, self.stop = roots, dict.fromkeys(roots, 0), threading.Event()
        self.peak_processes = dict.fromkeys(roots, 0)

    def run(self) -> None:
        from tests.fleet_site import descendants

        while not self.stop.wait(0.5):
            for name, pid in self.roots.items():
                tree = [pid, *descendants(pid)]
                self.peaks[name] = max(self.peaks[name], sum(status_kb(p, "VmRSS") for p in tree))
                self.peak_processes[name] = max(self.peak_processes[name], len(tree))


async def _run_and_wait(client, deployment: str, parameters: dict) -> object:
    d = await client.read_deployment_by_name(deployment)
    run = await client.create_flow_run_from_deployment(d.id, parameters=parameters)
    while True:
        run = await client.read_flow_run(run.id)
        if run.state.is_final():
            return run
        await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--environments", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1, help="process workers on pool odoops")
    parser.add_argument("--limit", type=int, default=5, help="flow runs at once per worker (worker --limit; "
                        "the nightly run itself takes one)")
    parser.add_argument("--per-db-server", type=int, default=4, help="fleet.max_backups_per_db_server")
    parser.add_argument("--per-storage", type=int, default=8, help="fleet.max_backups_per_storage")
    parser.add_argument("--singles", type=int, default=5, help="backups run one at a time, for the baseline")
    args = parser.parse_args()

    import psycopg
    import yaml

    from odoops import devserver
    from odoops.sandbox import free_port, start_cluster
    from tests.fleet_site import make_databases

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    cluster = start_cluster(WORK / "pg")
    os.environ.update(cluster.env())
    local = None
    try:
        say(f"making {args.environments} small databases")
        dbs = make_databases(cluster, [f"env{i:03d}" for i in range(args.environments)], WORK)
        envs = {name: {"stage": "production", "platform": "host", "database": {"dsn": cluster.dsn(db)},
                       "filestore": str(fs), "backup": {"storage": "local", "schedule": "0 2 * * *"}}
                for name, (db, fs) in dbs.items()}
        inventory = WORK / "environments.yaml"
        inventory.write_text(yaml.safe_dump({
            "storage": {"local": {"type": "local", "path": str(WORK / "backups")}},
            "fleet": {"max_backups_per_storage": args.per_storage, "max_backups_per_db_server": args.per_db_server},
            "environments": envs}, sort_keys=False))
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute('CREATE DATABASE "prefect_bench"')
        say("starting the Prefect server (on PostgreSQL), deployments and workers")
        started = time.monotonic()
        local = devserver.start(
            WORK / "prefect", free_port(),
            {"ODOOPS_INVENTORY": str(inventory), **cluster.env(), "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"},
            database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{cluster.port}/prefect_bench",
            workers=[devserver.WorkerSpec("odoops", f"bench-worker-{i + 1}", args.limit) for i in range(args.workers)])
        startup = time.monotonic() - started
        roots = {"server": local.processes[0].pid, **{name: p.pid for name, p in local.workers.items()}}
        sampler = TreeSampler(roots)
        sampler.start()

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        async def scenario():
            async with get_client() as client:
                singles = []
                names = list(envs)
                for name in names[:args.singles]:  # the sequential baseline: one backup at a time
                    run = await _run_and_wait(client, "backup/backup", {"environment": name, "kind": "manual"})
                    assert run.state.is_completed(), run.state
                    singles.append(((run.end_time - run.start_time).total_seconds(),
                                    (run.end_time - run.expected_start_time).total_seconds()))
                say(f"{len(singles)} single backups done; the night starts")
                t = time.monotonic()
                night = await _run_and_wait(client, "nightly/nightly", {"everything": True})
                wall = time.monotonic() - t
                from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

                children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=["nightly"])), limit=args.environments * 2)
                return singles, night, wall, children

        with temporary_settings({PREFECT_API_URL: local.api_url}):
            singles, night, wall, children = asyncio.run(scenario())
        sampler.stop.set()
        sampler.join()
        own = {name: status_kb(pid, "VmHWM") for name, pid in roots.items()}
        completed = [c for c in children if c.state.is_completed()]
        runs = [(c.end_time - c.start_time).total_seconds() for c in completed]
        result = {
            "environments": args.environments, "workers": args.workers, "worker_limit": args.limit,
            "caps": {"per_db_server": args.per_db_server, "per_storage": args.per_storage},
            "server_and_workers_startup_s": round(startup, 1),
            "night_state": night.state.name, "night_wall_s": round(wall, 1),
            "night_run_s": round((night.end_time - night.start_time).total_seconds(), 1),
            "backups_completed": len(completed), "backups_total": len(children),
            "sum_of_backup_runs_s": round(sum(runs), 1),
            "backup_run_s": {"mean": round(statistics.mean(runs), 2), "median": round(statistics.median(runs), 2),
                             "max": round(max(runs), 2)} if runs else None,
            "single_backup_s": {"run_mean": round(statistics.mean(s[0] for s in singles), 2),
                                "from_creation_mean": round(statistics.mean(s[1] for s in singles), 2)}
            if singles else None,
            "peak_rss_mb": {name: round(kb / 1024, 1) for name, kb in own.items()},
            "peak_tree_rss_mb": {name: round(kb / 1024, 1) for name, kb in sampler.peaks.items()},
            "peak_tree_processes": sampler.peak_processes,
            "load_average": os.getloadavg(),
            # each backup run: seconds from the night's start to its creation, its start and its end
            "timeline": sorted([round((c.created - night.start_time).total_seconds(), 1),
                                round((c.start_time - night.start_time).total_seconds(), 1),
                                round((c.end_time - night.start_time).total_seconds(), 1)] for c in completed),
        }
        if singles:
            result["sequential_estimate_s"] = round(result["single_backup_s"]["from_creation_mean"] * len(children), 1)
            result["night_vs_sequential"] = round(wall / result["sequential_estimate_s"], 3)
        if runs:
            result["night_vs_sum_of_runs"] = round(wall / sum(runs), 3)
        OUT.mkdir(exist_ok=True)
        (OUT / "fleet.json").write_text(json.dumps(result, indent=1))
        say("results (bench/out/fleet.json):")
        for key, value in result.items():
            print(f"  {key}: {value}")
    finally:
        if local is not None:
            local.stop()
        cluster.stop()
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
