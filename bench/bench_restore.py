"""Benchmark: an odoops restore of a big Odoo database against the administrator's own commands, in one run.

Why: the restore runbook builds the copy beside the target, checks it, neutralizes it and swaps it in
atomically. Administrators will only use it instead of their own two commands if that safety costs
little. The issue's targets, measured on the big database kept by ``bench_backup.py`` (``bigodoo``,
1.1 GB in PostgreSQL, 2.2 GB filestore in ~20,000 files), in the same run:

- restore from the native format (a catalog backup id) <= 1.15 x (``pg_restore -j2 --no-owner`` of the
  same dump into a new database + ``cp -a`` of the same filestore);
- restore from an Odoo zip <= 1.05 x (``psql -f dump.sql`` into a new database + ``unzip`` of the
  filestore); the baseline is reported with and without the ``unzip`` of dump.sql itself.

These are figures, not pass/fail: the table shows each target next to the measurement, and the JSON
(bench/out/restore.json) keeps every detail.

What it does:
1. starts the cluster kept by bench_backup.py (bench/out/backup-bench, never deleted here; stopped at the
   end) and, inside one Prefect test harness started before any timing, makes one odoops backup of
   ``bigodoo`` into a scratch repository and exports it as an Odoo zip (neither is timed as a restore);
2. baselines: createdb + ``pg_restore -j2`` + ``cp -a``; createdb + ``unzip dump.sql`` + ``psql -f`` +
   ``unzip filestore/*``; both again at the end as a noise check;
3. the real ``restore_flow`` into a staging environment whose database does not exist yet: from the
   backup id and from the zip with ``neutralize=False``, then each once more with the default
   (neutralization on); the target, its snapshots and folders are dropped between runs, outside timing;
   the phases inside each restore are timed by wrapping, at run time, the functions the flow calls
   (the project code is not modified);
4. peak memory: the process's VmHWM, reset before each restore (``/proc/self/clear_refs``), and the peak
   of pg_restore / psql sampled from /proc.

Usage: .venv/bin/python bench/bench_restore.py [--half]
Needs ~12 GB free on the disk of bench/out and the cluster kept by ``bench_backup.py`` (``make bench``
runs that one first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SCRATCH = OUT / "restore-scratch"  # removed at the end: repository, zip, baseline outputs, targets, Prefect home
MIN_FREE = 12 * 1024**3
SOURCE_ENV, TARGET_ENV = "bench-source", "staging"
TARGET = "odoops_bench_restore"  # the staging database; it and everything below are created by this script only
BASE_NATIVE, BASE_ZIP = "odoops_bench_restore_pgrestore", "odoops_bench_restore_psql"

# Prefect reads its settings at import: set them before anything imports it (bench_backup included).
os.environ["PREFECT_HOME"] = str(SCRATCH / "prefect-home")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_backup as bb  # noqa: E402 - the sibling benchmark: its kept cluster and its helpers
from bench_backup import Spans, du, load, say, settle, stopwatch, tree_files  # noqa: E402

from odoops.sandbox import Cluster, start_cluster  # noqa: E402

# ----------------------------------------------------------------------------- setup


def start_kept_cluster() -> tuple[Cluster, dict[str, Any]]:
    """The cluster of bench_backup.py, started the way its ``--reuse`` does; never rebuilt or deleted here."""
    state_file = bb.WORK / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if not (state and (bb.WORK / "pg" / "data" / "PG_VERSION").exists() and (bb.FILESTORES / bb.DB).is_dir()):
        raise SystemExit(f"no kept cluster in {bb.WORK}: run bench/bench_backup.py first (make bench does)")
    bb.stop_cluster(bb.WORK)  # left running by an interrupted run
    return start_cluster(bb.WORK), state


def sql_admin(cluster: Cluster, command: str) -> str:
    return bb.psql(cluster, "postgres", command)


def own_databases(cluster: Cluster) -> list[str]:
    """The databases this script creates (exact names or the target's reserved ``__odoops_*`` names)."""
    import psycopg

    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s) OR datname LIKE %s ESCAPE '!'",
                            ([TARGET, BASE_NATIVE, BASE_ZIP], f"{TARGET}!_!_odoops!_%")).fetchall()
    return sorted(r[0] for r in rows)


def drop_database(cluster: Cluster, name: str) -> None:
    import psycopg
    from psycopg import sql

    if name not in own_databases(cluster):  # never anything but our own names
        return
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def target_filestore() -> Path:
    return SCRATCH / "filestores" / TARGET


def reset_target(cluster: Cluster) -> None:
    """Drop the staging database, its ``__odoops_*`` snapshot/scratch databases and their folders."""
    for name in own_databases(cluster):
        if name == TARGET or name.startswith(f"{TARGET}__odoops_"):
            drop_database(cluster, name)
    folder = target_filestore()
    shutil.rmtree(folder, ignore_errors=True)
    for sibling in folder.parent.glob(f".{TARGET}.odoops-*") if folder.parent.exists() else []:
        shutil.rmtree(sibling, ignore_errors=True)


def quiesce(cluster: Cluster) -> None:
    """Nothing left over from the previous step: PostgreSQL's dirty buffers and the OS's written back."""
    sql_admin(cluster, "CHECKPOINT")
    settle()


def write_inventory(path: Path, repository: Path, cluster: Cluster, source_db: str) -> Path:
    import yaml

    data = {"storage": {"local": {"type": "local", "path": str(repository)}},
            "environments": {
                SOURCE_ENV: {"stage": "production", "platform": "host", "database": {"dsn": cluster.dsn(source_db)},
                             "filestore": str(bb.FILESTORES / source_db), "backup": {"storage": "local"}},
                TARGET_ENV: {"stage": "staging", "platform": "host", "database": {"dsn": cluster.dsn(TARGET)},
                             "filestore": str(target_filestore()), "backup": {"storage": "local"}}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- memory sampling


def _kb(status: dict[str, str], field: str) -> int:
    return int(status.get(field, "0 kB").split()[0])


class ToolPeaks:
    """Samples /proc every 50 ms: the highest VmHWM of pg_restore / psql below this process."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ToolPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            stack = bb._children(os.getpid())
            while stack:
                pid = stack.pop()
                status = bb._status(pid)
                name = status.get("Name", "")
                if name in ("pg_restore", "psql"):
                    self.peaks[name] = max(self.peaks.get(name, 0), _kb(status, "VmHWM"))
                if name != "python" and not name.startswith("python"):  # not into the Prefect server
                    stack.extend(bb._children(pid))
            self._stop.wait(0.05)


def own_status() -> dict[str, str]:
    return bb._status(os.getpid())


def reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- 2. baselines


def run(argv: list[str], cluster: Cluster) -> float:
    with stopwatch() as watch:
        subprocess.run(argv, env=bb.pg_env(cluster), check=True, stdout=subprocess.DEVNULL)
    return watch["seconds"]


def createdb(cluster: Cluster, name: str) -> float:
    return run(["psql", "-Atq", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c",
                f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0'], cluster)


def baseline_native(cluster: Cluster, dump: Path, filestore: Path) -> dict[str, Any]:
    """createdb + ``pg_restore -j2 --no-owner -d NEW dump`` + ``cp -a`` of the filestore, one after the other."""
    out = SCRATCH / "baseline"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    figures: dict[str, Any] = {"load": [load()]}
    try:
        quiesce(cluster)
        with ToolPeaks() as peaks:
            figures["createdb"] = createdb(cluster, BASE_NATIVE)
            figures["pg_restore"] = run(["pg_restore", "-j2", "--no-owner", "-d", BASE_NATIVE, str(dump)], cluster)
            figures["cp"] = run(["cp", "-a", str(filestore), str(out / "filestore")], cluster)
        figures["sum"] = figures["createdb"] + figures["pg_restore"] + figures["cp"]
        figures["pg_restore_peak_mb"] = peaks.peaks.get("pg_restore", 0) / 1024
        figures["load"].append(load())
    finally:
        drop_database(cluster, BASE_NATIVE)
        shutil.rmtree(out, ignore_errors=True)
    return figures


def baseline_zip(cluster: Cluster, zip_path: Path) -> dict[str, Any]:
    """createdb + ``unzip dump.sql`` + ``psql -q -v ON_ERROR_STOP=1 -f dump.sql NEW`` + ``unzip filestore/*``."""
    out = SCRATCH / "baseline"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    figures: dict[str, Any] = {"load": [load()]}
    try:
        quiesce(cluster)
        with ToolPeaks() as peaks:
            figures["createdb"] = createdb(cluster, BASE_ZIP)
            figures["unzip_dump"] = run(["unzip", "-q", "-o", str(zip_path), "dump.sql", "-d", str(out)], cluster)
            figures["psql"] = run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(out / "dump.sql"), BASE_ZIP],
                                  cluster)
            figures["unzip_filestore"] = run(["unzip", "-q", "-o", str(zip_path), "filestore/*", "-d", str(out)],
                                             cluster)
        figures["sum_without_unzip_dump"] = figures["createdb"] + figures["psql"] + figures["unzip_filestore"]
        figures["sum"] = figures["sum_without_unzip_dump"] + figures["unzip_dump"]
        figures["psql_peak_mb"] = peaks.peaks.get("psql", 0) / 1024
        figures["load"].append(load())
    finally:
        drop_database(cluster, BASE_ZIP)
        shutil.rmtree(out, ignore_errors=True)
    return figures


# ----------------------------------------------------------------------------- 3. the flow, timed inside


def instrument() -> Spans:
    """Wrap what restore_flow calls, where it looks it up at call time (module globals, not the originals)."""
    import flows.restore as flow_module
    from tasks import odoo, odoo_archive
    from tasks import restore as swap
    from tasks import restore_steps as steps

    spans = Spans()
    for name in ("confirm_production", "target_major_version", "load_database", "load_filestore", "verify_restored",
                 "make_it_a_copy", "post_checks", "record_run", "create_table_artifact", "create_markdown_artifact"):
        spans.wrap(flow_module, name)
    for name in ("prepare_scratch", "swap_in", "expire_snapshots", "discard_scratch"):
        spans.wrap(swap, name)
    # below load_database / load_filestore / verify_restored (looked up in these modules' globals)
    for name in ("check_zip", "load_plain_sql_from_zip", "extract_filestore"):
        spans.wrap(odoo_archive, name)
    for name in ("restore_dump", "materialize", "table_row_counts", "installed_modules", "attachment_files", "check_attachments"):
        spans.wrap(steps, name)
    for name in ("neutralize", "verify_neutralized", "refresh_copy_identity"):
        spans.wrap(odoo, name)
    return spans


PHASES = ("check_zip", "confirm_production", "target_major_version", "prepare_scratch", "load_database",
          "restore_dump", "load_plain_sql_from_zip", "load_filestore", "materialize", "extract_filestore",
          "verify_restored", "table_row_counts", "installed_modules", "attachment_files", "check_attachments",
          "make_it_a_copy", "neutralize", "verify_neutralized", "refresh_copy_identity", "swap_in",
          "expire_snapshots", "post_checks", "create_table_artifact", "create_markdown_artifact", "record_run",
          "discard_scratch")


def timed_restore(spans: Spans, cluster: Cluster, inventory: Path, source: str, neutralize: bool | None,
                  label: str) -> dict[str, Any]:
    """One real restore_flow into a staging target that does not exist yet; wall time, phases, peak RSS."""
    from flows.restore import restore_flow

    reset_target(cluster)
    quiesce(cluster)
    spans.reset()
    load_before = load()
    hwm_reset = reset_peak_rss()
    rss_before = _kb(own_status(), "VmRSS")
    with ToolPeaks() as peaks:
        origin = time.monotonic()
        result = restore_flow(source, TARGET_ENV, neutralize=neutralize, inventory=str(inventory))
        wall = time.monotonic() - origin
    status = own_status()
    p = {name: spans.span(name, origin) for name in PHASES}
    db, fs = p["load_database"], p["load_filestore"]
    verify, copy = p["verify_restored"], p["make_it_a_copy"]
    overlap = max(0.0, min(db["end"], fs["end"]) - max(db["start"], fs["start"]))
    known = sum(p[n]["seconds"] for n in ("table_row_counts", "installed_modules", "attachment_files",
                                          "check_attachments") if p[n])
    last_step = max(v["end"] for v in p.values() if v)
    figures = {
        "label": label, "source": source, "neutralize": neutralize, "seconds": wall, "load": [load_before, load()],
        "result": {k: v for k, v in result.items() if k != "source"}, "phases": p,
        # flow call -> first step: flow run creation, resolve
        "before_steps": p["confirm_production"]["start"],
        # environment slot (Prefect concurrency limit), platform, open_source (check_zip for a zip)
        "slot_and_open": round(p["target_major_version"]["start"] - p["confirm_production"]["end"], 3),
        "parallel_window": round(max(db["end"], fs["end"]) - min(db["start"], fs["start"]), 3),
        "db_fs_overlap": round(overlap, 3),
        # both loads done -> verify_restored starts: Prefect resolving the two futures
        "wait_after_loads": round(verify["start"] - max(db["end"], fs["end"]), 3),
        "verify_count_files": round(verify["seconds"] - known, 3),  # the rglob over the restored folder
        "between_copy_and_swap": round(p["swap_in"]["start"] - copy["end"], 3),
        "after_last_step": round(wall - last_step, 3),
        "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": _kb(status, "VmHWM") / 1024 if hwm_reset else None,
        "tool_peaks_mb": {k: v / 1024 for k, v in peaks.peaks.items()},
    }
    return figures


# ----------------------------------------------------------------------------- report


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def phases_line(r: dict[str, Any]) -> str:
    p = r["phases"]
    load_part = p["restore_dump"] or p["load_plain_sql_from_zip"]
    fs_part = p["materialize"] or p["extract_filestore"]
    parts = [f"before steps {r['before_steps']:.1f}", f"slot+open {r['slot_and_open']:.1f}"
             + (f" (check_zip {p['check_zip']['seconds']:.1f})" if p["check_zip"] else "")]
    parts += [f"prepare {p['prepare_scratch']['seconds']:.1f}",
              f"db {load_part['seconds']:.1f} | files {fs_part['seconds']:.1f} (window {r['parallel_window']:.1f})",
              f"wait {r['wait_after_loads']:.1f}",
              f"checks {p['verify_restored']['seconds']:.1f} (counts {p['table_row_counts']['seconds']:.1f}, "
              f"rglob {r['verify_count_files']:.1f}, attachments {p['check_attachments']['seconds']:.2f})",
              f"copy {p['make_it_a_copy']['seconds']:.2f}"
              + (f" (neutralize {p['neutralize']['seconds']:.2f})" if p["neutralize"] else ""),
              f"swap {p['swap_in']['seconds']:.2f}",
              f"after {r['after_last_step'] + sum(p[n]['seconds'] for n in ('expire_snapshots', 'post_checks', 'create_table_artifact', 'create_markdown_artifact', 'record_run') if p[n]):.1f}"]
    return ", ".join(parts)


def table(r: dict[str, Any]) -> str:
    bn, bz = r["baseline_native"], r["baseline_zip"]
    nat = sum(b["sum"] for b in bn) / len(bn)
    zsum = sum(b["sum"] for b in bz) / len(bz)
    zno = sum(b["sum_without_unzip_dump"] for b in bz) / len(bz)
    runs = r["restores"]
    rows: list[tuple[str, str, str]] = [
        ("odoops backup of the source (setup)", f"{r['backup']['seconds']:.1f} s", f"id {r['backup']['id']}"),
        ("export_odoo_zip (setup)", f"{r['export']['seconds']:.1f} s",
         f"zip {r['export']['zip_bytes'] / 1e9:.2f} GB, dump.sql {r['export']['dump_sql_bytes'] / 1e9:.2f} GB"),
    ]
    for i, b in enumerate(bn, 1):
        rows.append((f"baseline native #{i}", f"{b['sum']:.1f} s",
                     f"createdb {b['createdb']:.1f} + pg_restore -j2 {b['pg_restore']:.1f} + cp -a {b['cp']:.1f}"))
    for i, b in enumerate(bz, 1):
        rows.append((f"baseline zip #{i}", f"{b['sum']:.1f} s",
                     f"unzip dump.sql {b['unzip_dump']:.1f} + createdb {b['createdb']:.1f} + psql -f {b['psql']:.1f} "
                     f"+ unzip filestore {b['unzip_filestore']:.1f}; without the dump.sql unzip "
                     f"{b['sum_without_unzip_dump']:.1f} s"))
    for key, name in (("native", "odoops restore, backup id, neutralize=False"),
                      ("zip", "odoops restore, Odoo zip, neutralize=False"),
                      ("native_neutralize", "odoops restore, backup id, neutralize on"),
                      ("zip_neutralize", "odoops restore, Odoo zip, neutralize on")):
        x = runs.get(key)
        if not x:
            continue
        if key.startswith("native"):
            note = f"ratio {x['seconds'] / nat:.2f} vs the mean baseline (target <= 1.15)"
        else:
            note = (f"ratio {x['seconds'] / zsum:.2f} vs the mean baseline with the dump.sql unzip, "
                    f"{x['seconds'] / zno:.2f} without (target <= 1.05)")
        if key.endswith("_neutralize") and runs.get(key.removesuffix("_neutralize")):
            note += f"; {x['seconds'] - runs[key.removesuffix('_neutralize')]['seconds']:+.1f} s vs off (noise included)"
        rows.append((name, f"{x['seconds']:.1f} s", note))
        rows.append(("  phases (s)", "", phases_line(x)))
        tools = ", ".join(f"{k} {v:.0f} MB" for k, v in x["tool_peaks_mb"].items())
        rows.append(("  peak RSS of the process", f"{_s(x['peak_rss_mb'])} MB",
                     f"{x['rss_before_mb']:.0f} MB before the flow; {tools}"))
    width = max(len(x[0]) for x in rows) + 2
    lines = [f"{'measure':<{width}}{'value':>10}  notes"]
    lines += [f"{a:<{width}}{b:>10}  {c}" for a, b, c in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half", action="store_true",
                        help=f"use {bb.HALF_DB} (0.5 GB, ~10,000 files) instead of {bb.DB}: a quicker trial run")
    parser.add_argument("--no-neutralize-runs", action="store_true",
                        help="skip the two runs with the default neutralization")
    args = parser.parse_args()
    source_db = bb.HALF_DB if args.half else bb.DB
    OUT.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(OUT).free
    if free < MIN_FREE:
        raise SystemExit(f"only {free / 1e9:.1f} GB free on the disk of {OUT}: the benchmark needs ~12 GB")

    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    say(f"start: {uptime}")
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "started_at": datetime.now(UTC).isoformat(),
        "git_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
        "cpus": os.cpu_count(), "uptime_start": uptime, "load_start": load(), "free_bytes_start": free,
        "baseline_native": [], "baseline_zip": [], "restores": {}}
    shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir(parents=True)
    cluster: Cluster | None = None
    try:
        cluster, state = start_kept_cluster()
        report["kept_cluster_state"] = state
        say(f"reusing the cluster in {bb.WORK} (built {state.get('built_at')})")
        reset_target(cluster)
        for name in own_databases(cluster):  # baselines interrupted last time
            drop_database(cluster, name)
        size = int(bb.psql(cluster, source_db, "SELECT pg_database_size(current_database())"))
        files, fs_bytes = tree_files(bb.FILESTORES / source_db)
        report["data"] = {"database": source_db, "db_bytes": size, "filestore_files": files,
                          "filestore_bytes": fs_bytes}
        say(f"{source_db}: {size / 1e9:.2f} GB, filestore {fs_bytes / 1e9:.2f} GB in {files} files")

        repo_dir = SCRATCH / "repository"
        inventory = write_inventory(SCRATCH / "inventory.yaml", repo_dir, cluster, source_db)
        from prefect.testing.utilities import prefect_test_harness

        import flows.backup  # noqa: F401 - imported before timing
        import flows.restore  # noqa: F401
        from odoops.runtime import repository_for, resolve

        spans = instrument()
        with prefect_test_harness(server_startup_timeout=60):
            say("setup: one odoops backup of the source into a scratch repository")
            with stopwatch() as watch:
                backup_id = flows.backup.backup_flow(SOURCE_ENV, inventory=str(inventory))["backup_id"]
            report["backup"] = {"id": backup_id, "seconds": watch["seconds"]}
            inv, _ = resolve(TARGET_ENV, str(inventory))
            repo = repository_for(inv, "local")
            zip_path = SCRATCH / f"{source_db}.zip"
            say("setup: export_odoo_zip (not timed as a restore; minutes: ~2 GB of deflate)")
            with stopwatch() as watch, open(zip_path, "wb") as out:
                repo.export_odoo_zip(backup_id, out)
            import zipfile

            with zipfile.ZipFile(zip_path) as zf:
                dump_sql = zf.getinfo("dump.sql").file_size
            with repo.database_dumps(backup_id) as dumps:
                dump = dumps.main
                if dumps.tables:  # the backup is in parts: the baseline restores one full dump of the same data
                    dump = SCRATCH / f"{source_db}-full.dump"
                    run(["pg_dump", "-Fc", "-Z1", "--no-owner", "-f", str(dump), "-d", source_db], cluster)
            report["export"] = {"seconds": watch["seconds"], "zip_bytes": zip_path.stat().st_size,
                                "dump_sql_bytes": dump_sql, "dump_bytes": dump.stat().st_size}
            say(f"zip {zip_path.stat().st_size / 1e9:.2f} GB in {watch['seconds']:.0f} s")

            def restore(key: str, source: str, neutralize: bool | None) -> None:
                say(f"odoops restore: {key}")
                figures = timed_restore(spans, cluster, inventory, source, neutralize, key)
                report["restores"][key] = figures
                say(f"  {figures['seconds']:.1f} s: {phases_line(figures)}")

            say("baseline native: createdb + pg_restore -j2 + cp -a")
            report["baseline_native"].append(baseline_native(cluster, dump, bb.FILESTORES / source_db))
            say(f"  {report['baseline_native'][-1]['sum']:.1f} s")
            say("baseline zip: unzip dump.sql + createdb + psql -f + unzip filestore")
            report["baseline_zip"].append(baseline_zip(cluster, zip_path))
            say(f"  {report['baseline_zip'][-1]['sum']:.1f} s")
            restore("native", backup_id, False)
            restore("zip", str(zip_path), False)
            if not args.no_neutralize_runs:
                restore("native_neutralize", backup_id, None)
                restore("zip_neutralize", str(zip_path), None)
            reset_target(cluster)
            say("baselines again (noise check)")
            report["baseline_native"].append(baseline_native(cluster, dump, bb.FILESTORES / source_db))
            report["baseline_zip"].append(baseline_zip(cluster, zip_path))
            say(f"  native {report['baseline_native'][-1]['sum']:.1f} s, zip {report['baseline_zip'][-1]['sum']:.1f} s")
        report["repository_bytes"] = du(repo_dir)
    except BaseException as exc:
        report["failed"] = f"{type(exc).__name__}: {exc}"
        (OUT / "restore.json").write_text(json.dumps(report, indent=1, default=str))
        raise
    finally:
        if cluster is not None:
            try:
                reset_target(cluster)
                for name in own_databases(cluster):
                    drop_database(cluster, name)
            finally:
                bb.stop_cluster(bb.WORK)
        shutil.rmtree(SCRATCH, ignore_errors=True)

    report["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report["load_end"] = load()
    say(f"end: {report['uptime_end']}")
    print()
    print(table(report))
    (OUT / "restore.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nkept (stopped): {bb.WORK}; details: {OUT / 'restore.json'}")


if __name__ == "__main__":
    main()
