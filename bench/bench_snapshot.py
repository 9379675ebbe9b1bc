"""Snapshot and rollback of an environment against a dump/restore round trip of the same database.

The upgrade runbook (docs/upgrade.md) takes a snapshot before it changes anything and puts it back on
failure. Its goal: snapshot and rollback each ≤ 0.1 × a ``pg_dump -Fc`` + ``pg_restore -j2`` round trip of
the same database, measured in the same run, on the shared benchmark database
(``../shared/bench/make-big-odoo-db.sh``: ~1,000,000 partners, ~1.1 GB in PostgreSQL, ~2 GB of filestore).

    .venv/bin/python bench/bench_snapshot.py            # builds its cluster (~1-3 min), then ~1 min of measuring
    .venv/bin/python bench/bench_snapshot.py --reuse    # reuses the cluster kept in bench/out/snapshot-bench

Figures, not pass/fail. The cluster is kept in ``bench/out/snapshot-bench`` for --reuse (delete it to get
the space back, ~5 GB); everything else it writes is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from odoops.sandbox import Cluster, start_cluster  # noqa: E402
from tasks import snapshot  # noqa: E402
from tasks.postgres import ConnInfo  # noqa: E402

WORK = ROOT / "bench" / "out" / "snapshot-bench"
DB = "bigodoo"
ROUND_TRIP_DB = "bigodoo_roundtrip"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def timed(fn, *args):
    started = time.monotonic()
    value = fn(*args)
    return time.monotonic() - started, value


def run(argv: list[str], cluster: Cluster) -> None:
    subprocess.run(argv, env={**os.environ, **cluster.env()}, check=True, stdout=subprocess.DEVNULL)


def prepare(reuse: bool, make_db: Path) -> Cluster:
    ready = WORK / "ready.json"
    if reuse and ready.exists():
        return start_cluster(WORK)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    WORK.chmod(0o755)
    cluster = start_cluster(WORK)
    say(f"building {DB} with {make_db}")
    run(["bash", str(make_db), DB, str(WORK / "filestore" / DB)], cluster)
    ready.write_text(json.dumps({"built": time.time()}))
    return cluster


def snapshot_and_rollback(server: ConnInfo, filestore: Path) -> tuple[float, float]:
    t_snap, snap = timed(snapshot.take_snapshot, server, "bench", DB, str(filestore), "bench")
    say(f"snapshot: {t_snap:.2f} s ({snap.files} files linked)")
    t_back, _ = timed(snapshot.put_back, server, snap)
    say(f"rollback (swap back by renames, drop the changed copy): {t_back:.2f} s")
    return t_snap, t_back


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--shared-bench", type=Path, default=ROOT.parent / "shared" / "bench")
    args = parser.parse_args()
    cluster = prepare(args.reuse, args.shared_bench / "make-big-odoo-db.sh")
    try:
        server = ConnInfo.from_dsn(cluster.dsn())
        filestore = WORK / "filestore" / DB
        size = int(subprocess.run(["psql", "-Atc", f"SELECT pg_database_size('{DB}')", "-d", "postgres"],
                                  env={**os.environ, **cluster.env()}, capture_output=True, text=True,
                                  check=True).stdout)
        files = sum(1 for p in filestore.rglob("*") if p.is_file())
        say(f"{DB}: {size / 1e9:.2f} GB in PostgreSQL, {files} filestore files")
        t_snap, t_back = snapshot_and_rollback(server, filestore)  # a steady cluster: little to checkpoint
        dump = WORK / "roundtrip.dump"
        run(["psql", "-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {ROUND_TRIP_DB}"], cluster)
        t_dump, _ = timed(run, ["pg_dump", "-Fc", "-f", str(dump), DB], cluster)
        run(["createdb", ROUND_TRIP_DB], cluster)
        t_restore, _ = timed(run, ["pg_restore", "-j2", "--no-owner", "-d", ROUND_TRIP_DB, str(dump)], cluster)
        dump.unlink()
        round_trip = t_dump + t_restore
        say(f"round trip: pg_dump -Fc {t_dump:.1f} s + pg_restore -j2 {t_restore:.1f} s = {round_trip:.1f} s")
        # right after 1 GB was written: FILE_COPY's checkpoint must flush it first (the worst case)
        t_snap_dirty, t_back_dirty = snapshot_and_rollback(server, filestore)
        run(["psql", "-d", "postgres", "-c", f"DROP DATABASE {ROUND_TRIP_DB}"], cluster)
        result = {"database_bytes": size, "filestore_files": files, "pg_dump_s": round(t_dump, 2),
                  "pg_restore_s": round(t_restore, 2), "round_trip_s": round(round_trip, 2),
                  "snapshot_s": round(t_snap, 2), "rollback_s": round(t_back, 2),
                  "snapshot_ratio": round(t_snap / round_trip, 3), "rollback_ratio": round(t_back / round_trip, 3),
                  "after_1gb_written": {"snapshot_s": round(t_snap_dirty, 2), "rollback_s": round(t_back_dirty, 2),
                                        "snapshot_ratio": round(t_snap_dirty / round_trip, 3),
                                        "rollback_ratio": round(t_back_dirty / round_trip, 3)}}
        print(json.dumps(result, indent=1))
        (WORK.parent / "bench_snapshot.json").write_text(json.dumps(result, indent=1))
    finally:
        cluster.stop(remove=False)


if __name__ == "__main__":
    main()
