"""Benchmark: the anonymization runbook as the operator types it, against a bare md5 UPDATE of the partners.

Why: anonymization runs on every production-to-staging restore; the whole of it (rewrite, VACUUM FULL,
residue proof) must cost a small multiple of what PostgreSQL needs anyway to rewrite the partners once.
Both sides run in the same run on copies (CREATE DATABASE ... TEMPLATE) of one big database built by
shared/bench/make-big-odoo-db.sh (beside the checkout):

* baseline: ``UPDATE res_partner SET name = md5(name), email = md5(email), phone = md5(phone)`` then
  ``VACUUM FULL res_partner``, each timed;
* the runbook: ``odoops anonymize staging --report FILE`` as a subprocess (its own Prefect ephemeral
  server, the default rules, the residue proof), on a copy registered in a temporary inventory; the
  report file gives the split (sample, update, vacuum, proof). Goal: wall time <= 3 x the baseline.

The baseline runs again at the end as a noise check (the machine has 2 cores and is shared); the ratios
use the mean of the two.

Usage: .venv/bin/python bench/bench_anonymize.py [--files 200] [--cluster DIR] [--partner]
Without --cluster it starts a throwaway cluster, builds the data and removes both at the end; with
--cluster DIR it keeps the cluster (and the built database ``bench_src``) in DIR and reuses it next time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from odoops.sandbox import start_cluster  # noqa: E402
from tasks.anonymize import ResidueFound, anonymize, load_rules  # noqa: E402

MAKE_DB = ROOT.parent / "shared" / "bench" / "make-big-odoo-db.sh"
KEY = "bench-key-not-a-secret"


def copy_db(admin: psycopg.Connection, source: str, target: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target)))
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(target), sql.Identifier(source)))


def baseline(admin: psycopg.Connection, dsn: str) -> tuple[float, float]:
    """The bare 3-column md5 UPDATE of every partner and the VACUUM FULL it needs, on a fresh copy."""
    copy_db(admin, "bench_src", "bench_bare")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CHECKPOINT")
        t = time.monotonic()
        c.execute("UPDATE res_partner SET name = md5(name), email = md5(email), phone = md5(phone)")
        update = time.monotonic() - t
        t = time.monotonic()
        c.execute("VACUUM FULL res_partner")
        vacuum = time.monotonic() - t
    admin.execute("DROP DATABASE bench_bare")
    return update, vacuum


def runbook(admin: psycopg.Connection, cluster, work: Path) -> tuple[float, dict]:
    """``odoops anonymize staging`` end to end, as a subprocess, on a copy registered as staging."""
    copy_db(admin, "bench_src", "bench_staging")
    fs = work / "fs" / "bench_staging"
    subprocess.run(["rm", "-rf", str(fs)], check=True)
    subprocess.run(["cp", "-al", str(work / "fs" / "bench_src"), str(fs)], check=True)
    inventory = work / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({
        "storage": {"local": {"type": "local", "path": str(work / "backups")}},
        "environments": {"staging": {"stage": "staging", "platform": "host",
                                     "database": {"dsn": cluster.dsn("bench_staging")}, "filestore": str(fs),
                                     "backup": {"storage": "local"}}}}, sort_keys=False))
    report_file = work / "anonymize-report.json"
    report_file.unlink(missing_ok=True)
    env = {**os.environ, **cluster.env(), "ODOOPS_ANONYMIZE_KEY": KEY, "ODOOPS_ANONYMIZED_PASSWORD": "bench",
           "PREFECT_HOME": str(work / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    with psycopg.connect(cluster.dsn("bench_staging"), autocommit=True) as c:
        c.execute("CHECKPOINT")
    t = time.monotonic()
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "odoops"), "anonymize", "staging", "--inventory", str(inventory),
                           "--report", str(report_file)], env=env, capture_output=True, text=True)
    wall = time.monotonic() - t
    print(f"  odoops anonymize staging: exit {done.returncode}; {(done.stdout + done.stderr).strip()[-400:]}")
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    with psycopg.connect(cluster.dsn("bench_staging")) as c:
        report["marker"] = c.execute("SELECT value FROM ir_config_parameter WHERE key = 'odoops.anonymization'") \
            .fetchone()
    admin.execute("DROP DATABASE bench_staging WITH (FORCE)")
    subprocess.run(["rm", "-rf", str(fs)], check=False)
    return wall, report


def partner_only(admin: psycopg.Connection, cluster) -> None:
    """The partner rules alone, in-process (the earlier goal: UPDATE <= 2 x the bare UPDATE)."""
    copy_db(admin, "bench_src", "bench_partner")
    with psycopg.connect(cluster.dsn("bench_partner"), autocommit=True) as c:
        c.execute("CHECKPOINT")
        try:
            partner = anonymize(c, load_rules().only("res_partner"), KEY, verify=True)
        except ResidueFound as exc:  # expected: messages quote partner names and are not in this rule set
            partner = exc.report
    admin.execute("DROP DATABASE bench_partner")
    print("partner rules only: " + ", ".join(f"{k} {v:.2f} s" for k, v in partner.seconds.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200, help="extra filestore files for the big database")
    parser.add_argument("--cluster", type=Path, help="keep the cluster and its bench_src here, reuse it next time")
    parser.add_argument("--partner", action="store_true", help="also time the partner rules alone, in-process")
    args = parser.parse_args()

    cluster = start_cluster(root=args.cluster.resolve() if args.cluster else None)
    work = (args.cluster.resolve() / "work") if args.cluster else Path(tempfile.mkdtemp(prefix="odoops-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        admin = psycopg.connect(cluster.dsn(), autocommit=True)
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = 'bench_src'").fetchone():
            t = time.monotonic()
            subprocess.run(["rm", "-rf", str(work / "fs" / "bench_src")], check=True)
            subprocess.run(["bash", str(MAKE_DB), "bench_src", str(work / "fs" / "bench_src"), str(args.files)],
                           env={**os.environ, **cluster.env()}, check=True)
            print(f"big database built in {time.monotonic() - t:.0f} s")
        with psycopg.connect(cluster.dsn("bench_src")) as c:
            partners = c.execute("SELECT count(*) FROM res_partner").fetchone()[0]
            messages = c.execute("SELECT count(*) FROM mail_message").fetchone()[0]
            size = c.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
        print(f"res_partner: {partners} rows, mail_message: {messages} rows, {size}; "
              f"load average {os.getloadavg()[0]:.1f}")

        bare1 = baseline(admin, cluster.dsn("bench_bare"))
        print(f"baseline 1: UPDATE {bare1[0]:.2f} s + VACUUM FULL {bare1[1]:.2f} s")
        wall, report = runbook(admin, cluster, work)
        bare2 = baseline(admin, cluster.dsn("bench_bare"))
        print(f"baseline 2: UPDATE {bare2[0]:.2f} s + VACUUM FULL {bare2[1]:.2f} s")
        if args.partner:
            partner_only(admin, cluster)
        admin.close()

        upd = (bare1[0] + bare2[0]) / 2
        vac = (bare1[1] + bare2[1]) / 2
        s = report.get("seconds", {})
        other = wall - s.get("total", 0.0)
        print()
        print(f"baseline (mean of 2): UPDATE {upd:.2f} s + VACUUM FULL res_partner {vac:.2f} s = {upd + vac:.2f} s")
        print(f"odoops anonymize staging, wall {wall:.2f} s = {wall / (upd + vac):.2f} x the baseline "
              f"(goal <= 3.00); clean: {report.get('clean')}, marker {report.get('marker')}")
        for phase in ("plan", "sample", "update", "attachments", "vacuum", "scan"):
            if phase in s:
                print(f"  {phase:<12} {s[phase]:8.2f} s")
        print(f"  {'cli+prefect':<12} {other:8.2f} s   (process start, flow engine, inventory, audit record)")
        print(f"  update / bare UPDATE = {s.get('update', 0) / upd:.2f}; vacuum / bare VACUUM FULL = "
              f"{s.get('vacuum', 0) / vac:.2f}; proof (sample + scan) / baseline = "
              f"{(s.get('sample', 0) + s.get('scan', 0)) / (upd + vac):.2f}")
        print(f"  needles {report.get('needles')} (left out: kept {report.get('needles_kept')}, public "
              f"{report.get('needles_public')}, generated {report.get('needles_generated')}); "
              f"residue {report.get('residue') or 'none'}")
    finally:
        cluster.stop(remove=args.cluster is None)
        if args.cluster is None:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
