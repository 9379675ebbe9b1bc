"""Benchmark: an odoops backup of an Odoo.sh build over SSH against what an operator types by hand, in one run.

Why: odoops backs an Odoo.sh branch up by running ``pg_dump`` in the build and streaming it over SSH, and
copying ``~/data/filestore/<db>`` over SFTP, into its content-addressed repository. The issue's target is
that this costs at most 1.1 x the operator's own commands over the same SSH:

    ssh BUILD pg_dump -Fc > db.dump              (the issue's ``ssh build pg_dump -Fc | cat > file``)
    ssh BUILD tar -cf - -C data/filestore DB > filestore.tar

Both run against the Odoo.sh stand-in of the tests (tests/odoosh_standin.py: a real sshd as a build user,
a real PostgreSQL; no Odoo.sh here), on the bundled real Odoo 17 sample, then on the sample grown with a
bulk table and random files (``--rows``, ``--files``) so that moving data, not fixed costs, dominates.
Each backup goes into an empty repository (every file is new, nothing reused), inside one Prefect test
harness started before any timing; runs alternate (baseline, odoops) ``--runs`` times, medians reported.

These are figures, not pass/fail. ``bench/out/odoosh.json`` keeps every run.
Usage: .venv/bin/python bench/bench_odoosh.py [--runs 3] [--rows 1500000] [--files 400]   (as root: the
stand-in creates a system user per build)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

_OWN_PREFECT_HOME = None if "PREFECT_HOME" in os.environ else tempfile.mkdtemp(prefix="odoops-bench-odoosh-prefect-")
if _OWN_PREFECT_HOME:
    os.environ["PREFECT_HOME"] = _OWN_PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from odoops.sandbox import load_sample_database, start_cluster  # noqa: E402
from tests.helpers import write_inventory  # noqa: E402
from tests.odoosh_standin import OdooShStandin  # noqa: E402

DB = "odoosh_bench"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def grow(cluster, rows: int, files: int, filestore: Path) -> None:
    """A bulk table and random attachment-like files: data that compresses like chatter, files that do not."""
    import psycopg

    with psycopg.connect(cluster.dsn(DB), autocommit=True) as conn:
        conn.execute("CREATE TABLE x_bench_bulk AS SELECT g AS id, md5(g::text) || repeat(md5(random()::text), 6) "
                     "AS body FROM generate_series(1, %s) g", (rows,))
    folder = filestore / "zz"
    folder.mkdir(exist_ok=True)
    for i in range(files):
        (folder / f"{i:040x}").write_bytes(os.urandom(256 * 1024))


def ssh_base(standin: OdooShStandin) -> list[str]:
    return ["ssh", "-i", str(standin.key_file), "-o", f"UserKnownHostsFile={standin.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(standin.port),
            f"{standin.user}@127.0.0.1"]


def baseline(standin: OdooShStandin, work: Path, compress: list[str]) -> dict[str, float]:
    """The operator's two commands over the same SSH, output to files on this machine."""
    out = {}
    started = time.monotonic()
    with open(work / "db.dump", "wb") as sink:
        subprocess.run([*ssh_base(standin), "pg_dump", "-Fc", *compress, "--dbname", DB], stdout=sink, check=True)
    out["pg_dump_s"] = time.monotonic() - started
    mid = time.monotonic()
    with open(work / "filestore.tar", "wb") as sink:
        subprocess.run([*ssh_base(standin), "tar", "-cf", "-", "-C", "data/filestore", DB], stdout=sink, check=True)
    out["tar_s"] = time.monotonic() - mid
    out["seconds"] = time.monotonic() - started
    out["bytes"] = (work / "db.dump").stat().st_size + (work / "filestore.tar").stat().st_size
    return out


def odoops_backup(inventory: Path) -> dict[str, float]:
    from flows.backup import backup_flow

    started = time.monotonic()
    result = backup_flow("sh", inventory=str(inventory))
    return {"seconds": time.monotonic() - started, "bytes": result["size"]}


def measure(standin: OdooShStandin, work: Path, runs: int, label: str) -> dict:
    rows = []
    for run in range(runs):
        for folder in ("repo", "base"):
            shutil.rmtree(work / folder, ignore_errors=True)
            (work / folder).mkdir(parents=True)
        inventory = write_inventory(work / "inv.yaml", {
            "sh": {"stage": "production", "platform": "odoosh", "odoosh": standin.odoosh_block(),
                   "backup": {"storage": "local"}}},
            storage={"local": {"type": "local", "path": str(work / "repo")}})
        os.sync()
        base = baseline(standin, work / "base", [])
        os.sync()
        # the same compression as odoops' dump (zlib level 1), so the comparison is of the transport alone
        fast = baseline(standin, work / "base", ["--compress=1"])
        os.sync()
        mine = odoops_backup(inventory)
        rows.append({"baseline": base, "baseline_z1": fast, "odoops": mine, "ratio": mine["seconds"] / base["seconds"],
                     "ratio_z1": mine["seconds"] / fast["seconds"]})
        say(f"{label} run {run + 1}: baseline {base['seconds']:.2f} s (pg_dump {base['pg_dump_s']:.2f} + tar "
            f"{base['tar_s']:.2f}), with -Z1 {fast['seconds']:.2f} s, odoops {mine['seconds']:.2f} s, ratios "
            f"{rows[-1]['ratio']:.2f} / {rows[-1]['ratio_z1']:.2f}")
    return {"runs": rows, "baseline_median_s": statistics.median(r["baseline"]["seconds"] for r in rows),
            "baseline_z1_median_s": statistics.median(r["baseline_z1"]["seconds"] for r in rows),
            "odoops_median_s": statistics.median(r["odoops"]["seconds"] for r in rows),
            "ratio_median": statistics.median(r["ratio"] for r in rows),
            "ratio_z1_median": statistics.median(r["ratio_z1"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_500_000, help="rows of the bulk table (0: the sample only)")
    parser.add_argument("--files", type=int, default=400, help="random 256 KiB files added to the filestore")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the Odoo.sh stand-in creates a system user per build")
    from prefect.testing.utilities import prefect_test_harness

    work = Path(tempfile.mkdtemp(prefix="odoops-bench-odoosh-"))
    work.chmod(0o755)
    cluster = start_cluster(work / "pg")
    standin = None
    report: dict = {"load_before": os.getloadavg()}
    try:
        filestore = load_sample_database(cluster, DB, work / "filestore")
        standin = OdooShStandin(cluster, DB, filestore).start()
        with prefect_test_harness(server_startup_timeout=60):
            odoops_backup(write_inventory(work / "warm.yaml", {"sh": {
                "stage": "production", "platform": "odoosh", "odoosh": standin.odoosh_block()}}))  # imports, caches
            report["sample"] = measure(standin, work, args.runs, "sample")
            if args.rows or args.files:
                say(f"growing the database by {args.rows:,} rows and the filestore by {args.files} files")
                grow(cluster, args.rows, args.files, standin.filestore)
                subprocess.run(["chown", "-R", f"{standin.user}:{standin.user}", str(standin.filestore)], check=True)
                report["grown"] = measure(standin, work, args.runs, "grown")
        report["load_after"] = os.getloadavg()
    finally:
        if standin is not None:
            standin.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
        if _OWN_PREFECT_HOME:
            shutil.rmtree(_OWN_PREFECT_HOME, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "odoosh.json").write_text(json.dumps(report, indent=1))
    print("\n| data | ssh pg_dump -Fc + ssh tar | same, pg_dump -Fc -Z1 | odoops backup over SSH | ratio (target "
          "<= 1.1) | ratio to -Z1 |")
    print("|---|---:|---:|---:|---:|---:|")
    for key in ("sample", "grown"):
        if key in report:
            r = report[key]
            size = r["runs"][0]["baseline"]["bytes"] / 1e6
            print(f"| {key} ({size:.0f} MB moved) | {r['baseline_median_s']:.2f} s | {r['baseline_z1_median_s']:.2f} s | "
                  f"{r['odoops_median_s']:.2f} s | {r['ratio_median']:.2f} | {r['ratio_z1_median']:.2f} |")


if __name__ == "__main__":
    main()
