"""Benchmark: anonymizing ~1,000,000 res_partner rows against one bare md5 UPDATE of the same table.

Why: anonymization runs on every production-to-staging restore; it must cost about what PostgreSQL
needs anyway to rewrite the table. The goal is partner anonymization <= 2 x
``UPDATE res_partner SET name = md5(name), email = md5(email), phone = md5(phone)``, both measured in
the same run on copies (CREATE DATABASE ... TEMPLATE) of one big database built by
shared/bench/make-big-odoo-db.sh (beside the checkout).

Usage: .venv/bin/python bench/bench_anonymize.py [--files 200] [--no-full]
Starts its own throwaway cluster (odoops.sandbox), prints the figures, removes the cluster.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from odoops.sandbox import start_cluster  # noqa: E402
from tasks.anonymize import ResidueFound, anonymize, load_rules  # noqa: E402

MAKE_DB = Path(__file__).resolve().parent.parent.parent / "shared" / "bench" / "make-big-odoo-db.sh"
KEY = "bench-key-not-a-secret"


def copy_db(admin: psycopg.Connection, source: str, target: str) -> float:
    t = time.monotonic()
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(target), sql.Identifier(source)))
    return time.monotonic() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200, help="extra filestore files for the big database")
    parser.add_argument("--no-full", action="store_true", help="skip the full default rule set run")
    args = parser.parse_args()

    cluster = start_cluster()
    work = Path(tempfile.mkdtemp(prefix="odoops-bench-"))
    try:
        env = {**os.environ, **cluster.env()}
        t = time.monotonic()
        subprocess.run(["bash", str(MAKE_DB), "bench_src", str(work / "fs" / "bench_src"), str(args.files)],
                       env=env, check=True)
        print(f"big database built in {time.monotonic() - t:.0f} s")
        admin = psycopg.connect(cluster.dsn(), autocommit=True)
        with psycopg.connect(cluster.dsn("bench_src")) as c:
            partners = c.execute("SELECT count(*) FROM res_partner").fetchone()[0]
            messages = c.execute("SELECT count(*) FROM mail_message").fetchone()[0]
        print(f"res_partner: {partners} rows, mail_message: {messages} rows")

        # 1. the yardstick: one bare UPDATE (and the VACUUM FULL it would need too)
        copy_db(admin, "bench_src", "bench_bare")
        with psycopg.connect(cluster.dsn("bench_bare"), autocommit=True) as c:
            c.execute("CHECKPOINT")
            t = time.monotonic()
            c.execute("UPDATE res_partner SET name = md5(name), email = md5(email), phone = md5(phone)")
            bare = time.monotonic() - t
            t = time.monotonic()
            c.execute("VACUUM FULL res_partner")
            bare_vacuum = time.monotonic() - t
        admin.execute("DROP DATABASE bench_bare")

        # 2. partner rules only (one UPDATE of all partner columns, derived fields included)
        copy_db(admin, "bench_src", "bench_partner")
        with psycopg.connect(cluster.dsn("bench_partner"), autocommit=True) as c:
            c.execute("CHECKPOINT")
            try:
                partner = anonymize(c, load_rules().only("res_partner"), KEY, verify=True)
            except ResidueFound as exc:  # expected: messages quote partner names and are not in this rule set
                partner = exc.report
        admin.execute("DROP DATABASE bench_partner")
        s = partner.seconds

        print()
        print(f"bare UPDATE (3 columns, md5)             {bare:8.2f} s   (+ VACUUM FULL {bare_vacuum:.2f} s)")
        print(f"partner anonymization UPDATE ({len([u for u in partner.updated if u[0] == 'res_partner'])} columns)"
              f"    {s['update']:8.2f} s   ratio {s['update'] / bare:.2f}")
        print(f"  + VACUUM (FULL, ANALYZE)                {s['vacuum']:8.2f} s   ratio with it "
              f"{(s['update'] + s['vacuum']) / bare:.2f}  (vs bare + its VACUUM FULL: "
              f"{(s['update'] + s['vacuum']) / (bare + bare_vacuum):.2f})")
        print(f"  sampling {s['sample']:.2f} s, residue scan of every text column {s['scan']:.2f} s, "
              f"total {s['total']:.2f} s; {partner.needles} needles; residue outside res_partner (expected, not "
              f"in this rule set): {partner.residue or 'none'}")

        if not args.no_full:
            copy_db(admin, "bench_src", "bench_full")
            fs = work / "fs" / "bench_full"
            subprocess.run(["cp", "-al", str(work / "fs" / "bench_src"), str(fs)], check=True)
            with psycopg.connect(cluster.dsn("bench_full"), autocommit=True) as c:
                c.execute("CHECKPOINT")
                try:
                    full = anonymize(c, load_rules(), KEY, fs, user_password="bench")
                except ResidueFound as exc:
                    full = exc.report
            f = full.seconds
            print()
            print("full default rule set: " + ", ".join(f"{k} {v:.2f} s" for k, v in f.items()))
            print("  rows: " + ", ".join(f"{k} {v}" for k, v in full.rows.items() if v))
            print(f"  needles {full.needles}, residue {full.residue or 'none'}; "
                  f"update+vacuum / bare = {(f['update'] + f['vacuum']) / bare:.2f}")
        admin.close()
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
