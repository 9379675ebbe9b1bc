"""Benchmark: what a flow-running ``odoops`` command costs around its flow, as the operator types it.

Why: every CLI call without PREFECT_API_URL used to start and stop Prefect's temporary server (5–12 s),
so an unchanged nightly re-backup cost ~0.4x the first full backup. The issue's targets, measured end to
end, one process per call, with the local server kept running between calls (odoops/localserver.py):

- the fixed overhead of a flow-running command <= 2 s: the command's wall time minus its flow run's own
  duration (start to end, as Prefect's API records it), on the small sample database;
- an unchanged re-backup of the 1 GB benchmark database <= 0.15x the first full backup, both through the CLI.

Each figure is also taken with ``ODOOPS_LOCAL_SERVER=0`` (Prefect's temporary server per call, the old
behaviour). Figures, not pass/fail; bench/out/cli.json keeps every run.

What it does:
1. a throwaway PostgreSQL cluster with the bundled Odoo 17 sample (odoops.sandbox); ``odoops backup`` of it
   N times with the temporary server, then N times with the warm local server (started before timing);
   the flow runs' durations are read from the Prefect API (the same SQLite database for both modes);
2. what part of the overhead is Python importing Prefect and the project: ``python -c "import ..."``;
3. the 1 GB database kept by bench_backup.py (bench/out/backup-bench, built here if missing, ~3 min):
   ``odoops backup bench`` into an empty repository, then again with nothing changed (warm local server),
   twice more (the median of the three is the figure), then once with the temporary server.

Usage: .venv/bin/python bench/bench_cli.py [--runs N] [--small-only] [--shared-bench DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SCRATCH = OUT / "cli-scratch"  # removed at the end: cluster of the sample, repositories, Prefect homes
HOMES = {"temporary": SCRATCH / "home-temporary", "local": SCRATCH / "home-local"}

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("PREFECT_HOME", str(SCRATCH / "home-local"))  # bench_backup sets one at import otherwise
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

import bench_backup as big  # noqa: E402 - the 1 GB data: build, reuse, inventory

from odoops.sandbox import load_sample_database, start_cluster  # noqa: E402

say, settle, load = big.say, big.settle, big.load


def cli_env(mode: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The operator's shell: no PREFECT_API_URL; the temporary mode sets ODOOPS_LOCAL_SERVER=0."""
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", "PREFECT_UI_URL"}}
    env["PREFECT_HOME"] = str(HOMES[mode])
    if mode == "temporary":
        env["ODOOPS_LOCAL_SERVER"] = "0"
    else:
        env.pop("ODOOPS_LOCAL_SERVER", None)
    return {**env, **(extra or {})}


CPU: dict[str, float] = {}  # CPU seconds (user + system) of the last call: the figure a busy machine blurs least


def odoops(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """One CLI process, timed from fork to exit; its CPU time (with the tools it waited for) in CPU["last"]."""
    out, err = SCRATCH / "call.out", SCRATCH / "call.err"
    started = time.monotonic()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "odoops", *args], cwd=ROOT, env=env, stdout=stdout,
                                stderr=stderr, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    CPU["last"] = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"odoops {' '.join(args)} failed: {(out.read_text() + err.read_text())[-2000:]}")
    return seconds, out.read_text()


def python_seconds(code: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env=cli_env("local"))
    return time.monotonic() - started


def server_url(mode: str) -> str:
    """Start (or find) the local server of ``mode``'s home: the temporary runs' records are in its database."""
    odoops(["server", "start"], cli_env(mode))
    state = json.loads((HOMES[mode] / "odoops-server.json").read_text())
    return f"http://127.0.0.1:{state['port']}/api"


def flow_seconds(api_url: str, environment: str) -> list[float]:
    """The backup runs of ``environment``, oldest first: end minus start, as Prefect recorded them."""
    body = json.dumps({"flow_runs": {"tags": {"all_": ["runbook:backup", f"environment:{environment}"]}},
                       "sort": "START_TIME_ASC"}).encode()
    request = urllib.request.Request(f"{api_url}/flow_runs/filter", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback
        runs = json.loads(resp.read())
    return [(datetime.fromisoformat(r["end_time"]) - datetime.fromisoformat(r["start_time"])).total_seconds()
            for r in runs]


def stop_servers() -> None:
    for mode in HOMES:
        if HOMES[mode].exists():
            subprocess.run([sys.executable, "-m", "odoops", "server", "stop"], cwd=ROOT, env=cli_env(mode),
                           capture_output=True)


# ----------------------------------------------------------------------------- 1. the fixed overhead


def fixed_overhead(runs: int) -> dict[str, Any]:
    cluster = start_cluster(SCRATCH / "sample-pg")
    try:
        filestore = load_sample_database(cluster, "acme", SCRATCH / "sample-data")
        inventory = SCRATCH / "inventory-sample.yaml"
        import yaml

        inventory.write_text(yaml.safe_dump({
            "storage": {"local": {"type": "local", "path": str(SCRATCH / "repo-sample")}},
            "environments": {"sample": {"stage": "production", "platform": "host",
                                        "database": {"dsn": cluster.dsn("acme")}, "filestore": str(filestore),
                                        "backup": {"storage": "local"}}}}, sort_keys=False))
        figures: dict[str, Any] = {}
        for mode in ("temporary", "local"):
            env = cli_env(mode)
            if mode == "local":
                first_start, _ = odoops(["server", "start"], env)
                figures["local_server_first_start"] = first_start
                say(f"local server started in {first_start:.1f} s (once)")
            walls, cpus = [], []
            for _ in range(runs):
                settle()
                seconds, _ = odoops(["backup", "sample", "-i", str(inventory), "--json"], env)
                walls.append(seconds)
                cpus.append(CPU["last"])
                say(f"{mode}: odoops backup sample {seconds:.2f} s (CPU {CPU['last']:.2f} s)")
            figures[mode] = {"wall": walls, "cpu": cpus, "load": load()}
        for mode in ("temporary", "local"):  # the temporary runs' database is read by a server on it
            flows = flow_seconds(server_url(mode), "sample")[-runs:]
            walls = figures[mode]["wall"]
            overheads = [w - f for w, f in zip(walls, flows, strict=True)]
            figures[mode].update({"flow": flows, "overhead": overheads, "overhead_mean": statistics.mean(overheads),
                                  "overhead_min": min(overheads), "wall_mean": statistics.mean(walls)})
        stop_servers()
        figures["imports"] = {
            "python -c pass": python_seconds("pass"),
            "import odoops.cli": python_seconds("import odoops.cli"),
            "import prefect": python_seconds("import prefect"),
            "import flows.backup": python_seconds("import flows.backup"),
        }
        return figures
    finally:
        cluster.stop()


# ----------------------------------------------------------------------------- 2. the 1 GB database


def big_rebackup(shared_bench: Path) -> dict[str, Any]:
    make_db = shared_bench / "make-big-odoo-db.sh"
    if not make_db.is_file():
        raise SystemExit(f"{make_db} not found: pass --shared-bench DIR (the folder of make-big-odoo-db.sh)")
    cluster, state = big.prepare_data(make_db, 20000, reuse=True)
    try:
        data = big.describe_data(cluster)[big.DB]
        say(f"{big.DB}: {data['db_bytes'] / 1e9:.2f} GB, filestore {data['filestore_bytes'] / 1e9:.2f} GB "
            f"in {data['filestore_files']} files")
        inventory = big.write_inventory(SCRATCH / "inventory-big.yaml", SCRATCH / "repo-big", cluster)
        backup = ["backup", big.ENV, "-i", str(inventory), "--json"]
        odoops(["server", "start"], cli_env("local"))  # warm, as after any earlier command
        runs: dict[str, Any] = {}
        plan = [("first", "local")] + [(f"unchanged_{i}", "local") for i in (1, 2, 3)] + \
            [("unchanged_temporary", "temporary")]
        for name, mode in plan:
            settle()
            load_before = load()
            seconds, out = odoops(backup, cli_env(mode))
            result = json.loads(out)
            runs[name] = {"seconds": seconds, "cpu": CPU["last"], "mode": mode, "backup_id": result["backup_id"],
                          "tables_reused": result["tables_reused"], "load": [load_before, load()]}
            say(f"{name} ({mode} server): {seconds:.1f} s, CPU {CPU['last']:.1f} s, load {load_before[0]:.1f}, "
                f"tables reused: {', '.join(result['tables_reused']) or '-'}")
        local_flows = flow_seconds(server_url("local"), big.ENV)[-4:]
        for (name, _), flow in zip(plan[:4], local_flows, strict=True):
            runs[name]["flow"] = flow
        runs["unchanged_temporary"]["flow"] = flow_seconds(server_url("temporary"), big.ENV)[-1]
        stop_servers()
        # the median of three unchanged re-backups: one figure, less at the mercy of a neighbour's burst
        runs["unchanged"] = sorted((runs[f"unchanged_{i}"] for i in (1, 2, 3)), key=lambda r: r["seconds"])[1]
        return {"data": data, "build": state, **runs,
                "ratio": runs["unchanged"]["seconds"] / runs["first"]["seconds"],
                "ratio_temporary": runs["unchanged_temporary"]["seconds"] / runs["first"]["seconds"]}
    finally:
        big.stop_cluster(big.WORK)


# ----------------------------------------------------------------------------- report


def table(report: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    small = report["overhead"]
    for mode in ("temporary", "local"):
        m = small[mode]
        rows.append((f"odoops backup (sample), {mode} server", f"{m['wall_mean']:.2f} s",
                     f"flow itself {statistics.mean(m['flow']):.2f} s; overhead mean {m['overhead_mean']:.2f} s, "
                     f"min {m['overhead_min']:.2f} s" + (" (target <= 2 s)" if mode == "local" else "")
                     + f"; CPU of the call {statistics.mean(m['cpu']):.2f} s"))
    rows.append(("local server first start (once)", f"{small['local_server_first_start']:.1f} s", ""))
    rows.append(("load average (1 min) during the runs", " | ".join(f"{small[m]['load'][0]:.1f}" for m in
                                                                    ("temporary", "local")), "2 cores, shared"))
    for name, seconds in small["imports"].items():
        rows.append((f"  python: {name}", f"{seconds:.2f} s", "a process start and its imports, for reference"))
    b = report.get("big")
    if b:
        rows.append(("1 GB: first full backup (CLI)", f"{b['first']['seconds']:.1f} s",
                     f"flow itself {b['first']['flow']:.1f} s; CPU of the call {b['first']['cpu']:.1f} s"))
        rows.append(("1 GB: unchanged re-backup, local server", f"{b['unchanged']['seconds']:.1f} s",
                     f"ratio {b['ratio']:.3f} of the first (target <= 0.15); flow itself {b['unchanged']['flow']:.1f} s;"
                     f" CPU of the call {b['unchanged']['cpu']:.1f} s; load {b['unchanged']['load'][0][0]:.1f}; median of 3: "
                     + ", ".join(f"{b[f'unchanged_{i}']['seconds']:.1f}" for i in (1, 2, 3)) + " s"))
        rows.append(("1 GB: unchanged re-backup, temporary server", f"{b['unchanged_temporary']['seconds']:.1f} s",
                     f"ratio {b['ratio_temporary']:.3f} of the first; flow itself "
                     f"{b['unchanged_temporary']['flow']:.1f} s"))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'measure':<{width}}{'value':>10}  notes"]
    lines += [f"{a:<{width}}{v:>10}  {n}" for a, v, n in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="CLI calls per mode on the sample (default 3)")
    parser.add_argument("--small-only", action="store_true", help="skip the 1 GB database")
    parser.add_argument("--shared-bench", type=Path, default=ROOT.parent / "shared" / "bench",
                        help="folder holding make-big-odoo-db.sh (default: ../shared/bench)")
    args = parser.parse_args()
    shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir(parents=True)
    SCRATCH.chmod(0o755)  # the throwaway PostgreSQL runs as the postgres user
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    say(f"start: {uptime}")
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "started_at": datetime.now(UTC).isoformat(),
        "git_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(), "cpus": os.cpu_count(), "uptime_start": uptime}
    try:
        say("fixed overhead: odoops backup of the sample database")
        report["overhead"] = fixed_overhead(args.runs)
        if not args.small_only:
            say("the 1 GB database: first full backup, then unchanged re-backups")
            report["big"] = big_rebackup(args.shared_bench)
    finally:
        stop_servers()
        shutil.rmtree(SCRATCH, ignore_errors=True)
    report["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    say(f"end: {report['uptime_end']}")
    print()
    print(table(report))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cli.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"details: {OUT / 'cli.json'}")


if __name__ == "__main__":
    main()
