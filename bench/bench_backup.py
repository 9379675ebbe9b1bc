"""Benchmark: an odoops backup of a big Odoo database against ``pg_dump -Fc`` + ``tar``, in one run.

Why: a backup runbook is only adopted if it costs about what the administrator's own two commands
cost, if the nightly backup after a quiet day is cheap, and if it runs in flat memory whatever the
size of the database and filestore. The issue's targets, measured on the database built by
``make-big-odoo-db.sh`` (>= 1 GB in PostgreSQL, ~2.1 GB filestore in ~20,000 files):

- full backup wall time <= 1.0 x (``pg_dump -Fc`` then ``tar`` of the filestore, same disk, same run);
- second backup after 1% of the files changed <= 0.15 x the first;
- peak memory of the backup process <= 300 MB, the same at half and at full size.

These are figures, not pass/fail: the table shows each target next to the measurement, and the
JSON (bench/out/backup.json) keeps every detail, including where the time goes inside the flow.

What it does (each step is described where it is implemented):
1. a throwaway PostgreSQL cluster kept in bench/out/backup-bench (``--reuse`` keeps it between runs)
   with the big database and a half-size copy;
2. the baseline: ``pg_dump -Fc`` and ``tar -cf`` of the filestore to the same disk;
3. the real ``backup_flow`` inside one Prefect test harness started before any timing: a first backup
   into an empty repository, a second one after 1% of the attachments changed the way Odoo changes
   them, a third with nothing changed; the flow's steps are timed in-process by wrapping the
   functions of ``tasks.backup`` (the project code is not modified);
4. the same steps called alone, outside Prefect, on the same data, to show contention and overheads;
5. peak memory: a child Python process (own harness, own empty repository) per size, its own
   ``VmHWM`` read at the end, and pg_dump's peak sampled from /proc.

Usage: .venv/bin/python bench/bench_backup.py [--reuse] [--shared-bench DIR] [--quick] [--files N]
Needs ~10 GB free on the disk of bench/out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
WORK = OUT / "backup-bench"  # kept between runs: pg/ (the cluster), data/filestore/<db>, state.json
SCRATCH = OUT / "backup-scratch"  # removed at the end: repositories, baseline outputs, Prefect home
FILESTORES = WORK / "data" / "filestore"
DB, HALF_DB = "bigodoo", "bigodoo_half"
ENV, HALF_ENV = "bench", "bench-half"
MIN_FREE = 10 * 1024**3

sys.path.insert(0, str(ROOT))

# Prefect reads its settings at import: set them before anything imports it.
os.environ.setdefault("PREFECT_HOME", str(SCRATCH / "prefect-home"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from odoops.sandbox import Cluster, start_cluster  # noqa: E402

# A backup in its own process, for its peak memory: own harness (started before the flow, so the
# server's startup is outside the figure), then one flow run, then its own high-water mark.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from prefect.testing.utilities import prefect_test_harness
from flows.backup import backup_flow

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

with prefect_test_harness(server_startup_timeout=60):
    before = {"rss_kb": status("VmRSS"), "hwm_kb": status("VmHWM")}
    t = time.monotonic()
    backup_flow(sys.argv[2], inventory=sys.argv[3])
    wall = time.monotonic() - t
    result = {"seconds": wall, "before": before, "hwm_kb": status("VmHWM")}
print("BENCH-RESULT " + json.dumps(result), flush=True)
"""


# ----------------------------------------------------------------------------- small helpers


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def settle() -> None:
    """Flush dirty pages of the previous step so its write-back does not land in the next timing."""
    os.sync()
    time.sleep(1)


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    started = time.monotonic()
    try:
        yield box
    finally:
        box["seconds"] = time.monotonic() - started


def du(path: Path) -> int:
    result = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True)
    return int(result.stdout.split()[0]) if result.returncode == 0 and result.stdout else 0


def tree_files(path: Path) -> tuple[int, int]:
    count = size = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            count += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return count, size


def pg_env(cluster: Cluster) -> dict[str, str]:
    return {**os.environ, **cluster.env()}


def psql(cluster: Cluster, db: str, *commands: str) -> str:
    args = ["psql", "-Atq", "-v", "ON_ERROR_STOP=1", "-d", db]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, env=pg_env(cluster), check=True, capture_output=True, text=True).stdout.strip()


# ----------------------------------------------------------------------------- 1. the data


def stop_cluster(root: Path) -> None:
    """Clean shutdown (``Cluster.stop`` uses immediate mode, which makes the next --reuse start recover)."""
    data = root / "pg" / "data"
    if not (data / "postmaster.pid").exists():
        return
    bindir = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
                   if (p / "pg_ctl").exists()), None)
    pg_ctl = str(bindir / "pg_ctl") if bindir else "pg_ctl"
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)


def build_half(cluster: Cluster) -> None:
    """The half-size database and filestore, from the full one before anything changed it.

    CREATE DATABASE ... TEMPLATE, then the generated partners 600001.. (whole company blocks), their
    chatter messages and their attachments are deleted (FK triggers off, as the generator does), and
    VACUUM FULL returns the space; the half filestore hard-links the files of the attachments kept.
    """
    psql(cluster, "postgres", f"CREATE DATABASE {HALF_DB} TEMPLATE {DB}")
    gone = psql(cluster, HALF_DB,
                "SET session_replication_role = replica",
                "SELECT string_agg(store_fname, ' ') FROM ir_attachment WHERE res_model = 'res.partner' "
                "AND res_id >= 600001 AND store_fname IS NOT NULL")
    gone_files = set(gone.split()) if gone else set()
    psql(cluster, HALF_DB,
         "SET session_replication_role = replica",
         "DELETE FROM ir_attachment WHERE res_model = 'res.partner' AND res_id >= 600001",
         "DELETE FROM mail_message WHERE model = 'res.partner' AND res_id >= 600001",
         "DELETE FROM res_partner WHERE id >= 600001",
         "VACUUM FULL ANALYZE", "CHECKPOINT")
    source, target = FILESTORES / DB, FILESTORES / HALF_DB
    shutil.rmtree(target, ignore_errors=True)
    for dirpath, _dirs, files in os.walk(source):
        rel_dir = os.path.relpath(dirpath, source)
        for name in files:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel in gone_files:
                continue
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(os.path.join(dirpath, name), dest)


def prepare_data(make_db: Path, nfiles: int, reuse: bool) -> tuple[Cluster, dict[str, Any]]:
    """Start the kept cluster (--reuse) or build everything from scratch in bench/out/backup-bench."""
    state_file = WORK / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if reuse and state.get("files") == nfiles and state.get("half") and (WORK / "pg" / "data" / "PG_VERSION").exists():
        stop_cluster(WORK)  # left running by an interrupted run
        cluster = start_cluster(WORK)
        say(f"reusing the cluster in {WORK} (built {state['built_at']}, {nfiles} extra files)")
        return cluster, state
    if reuse:
        say(f"--reuse: no usable cluster for {nfiles} files in {WORK}, building one")
    stop_cluster(WORK)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    FILESTORES.mkdir(parents=True)
    WORK.chmod(0o755)
    cluster = start_cluster(WORK)
    say(f"building {DB} with {make_db} ({nfiles} files; takes minutes)")
    with stopwatch() as build:
        subprocess.run(["bash", str(make_db), DB, str(FILESTORES / DB), str(nfiles)], env=pg_env(cluster),
                       check=True, stdout=subprocess.DEVNULL)
    with stopwatch() as half:
        build_half(cluster)
    state = {"files": nfiles, "half": True, "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
             "build_seconds": round(build["seconds"], 1), "half_build_seconds": round(half["seconds"], 1)}
    state_file.write_text(json.dumps(state, indent=1))
    say(f"built in {build['seconds']:.0f} s, half copy in {half['seconds']:.0f} s")
    return cluster, state


def describe_data(cluster: Cluster) -> dict[str, Any]:
    data = {}
    for db in (DB, HALF_DB):
        size, partners, messages, attachments = psql(
            cluster, db, "SELECT pg_database_size(current_database()) || ' ' || (SELECT count(*) FROM res_partner) "
            "|| ' ' || (SELECT count(*) FROM mail_message) || ' ' || (SELECT count(*) FROM ir_attachment)").split()
        files, size_fs = tree_files(FILESTORES / db)
        data[db] = {"db_bytes": int(size), "partners": int(partners), "messages": int(messages),
                    "attachments": int(attachments), "filestore_files": files, "filestore_bytes": size_fs}
    return data


def write_inventory(path: Path, repository: Path, cluster: Cluster) -> Path:
    import yaml

    def env(db: str) -> dict[str, Any]:
        return {"stage": "production", "platform": "host", "database": {"dsn": cluster.dsn(db)},
                "filestore": str(FILESTORES / db), "backup": {"storage": "local"}}

    data = {"storage": {"local": {"type": "local", "path": str(repository)}},
            "environments": {ENV: env(DB), HALF_ENV: env(HALF_DB)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- 2. the baseline


def baseline(cluster: Cluster) -> dict[str, Any]:
    """``pg_dump -Fc -f X`` then ``tar -cf Y -C <filestore parent> <db>``, on the disk of the repository.

    Neither command fsyncs its output; the time of an fsync of each output afterwards is reported
    apart (``*_fsync``) since odoops makes every file it writes durable. ``pg_dump -Fc`` compresses
    at zlib's default level while odoops dumps with ``--compress=1``: ``pg_dump_z1`` (not part of the
    sum) is that same dump at level 1, for a like-for-like reading of the dump step.
    """
    out = SCRATCH / "baseline"
    out.mkdir(parents=True, exist_ok=True)
    dump, tar = out / "bigodoo.dump", out / "filestore.tar"
    figures: dict[str, Any] = {}
    try:
        settle()
        for name, argv, target in (
                ("pg_dump", ["pg_dump", "-Fc", "-f", str(dump), DB], dump),
                ("tar", ["tar", "-cf", str(tar), "-C", str(FILESTORES), DB], tar)):
            with stopwatch() as watch:
                subprocess.run(argv, env=pg_env(cluster), check=True)
            figures[name] = watch["seconds"]
            with stopwatch() as watch:
                fd = os.open(target, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            figures[f"{name}_fsync"] = watch["seconds"]
            figures[f"{name}_bytes"] = target.stat().st_size
        figures["sum"] = figures["pg_dump"] + figures["tar"]
        settle()
        with stopwatch() as watch:
            subprocess.run(["pg_dump", "-Fc", "--compress=1", "-f", str(dump), DB], env=pg_env(cluster), check=True)
        figures["pg_dump_z1"] = watch["seconds"]
        figures["pg_dump_z1_bytes"] = dump.stat().st_size
        figures["load"] = load()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return figures


# ----------------------------------------------------------------------------- 3. the flow, timed inside


class Spans:
    """Start and end (monotonic) of each call of the wrapped functions, from any thread."""

    def __init__(self) -> None:
        self.items: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()

    def wrap(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                with self.lock:
                    self.items.append((name, started, time.monotonic()))

        setattr(owner, name, timed)

    def reset(self) -> None:
        with self.lock:
            self.items.clear()

    def span(self, name: str, origin: float) -> dict[str, float] | None:
        found = [(s, e) for n, s, e in self.items if n == name]
        if not found:
            return None
        start, end = min(s for s, _ in found), max(e for _, e in found)
        return {"start": round(start - origin, 3), "end": round(end - origin, 3), "seconds": round(end - start, 3)}


def instrument() -> Spans:
    """Wrap the steps the backup flow calls (looked up at call time, so wrapping the module suffices)."""
    from tasks import backup as steps
    from tasks.archive import Repository

    spans = Spans()
    for name in ("read_facts", "apart_tables", "dump_database_parts", "dump_to_repository",
                 "store_environment_filestore", "previous_index", "store_filestore", "store_config", "build_manifest"):
        spans.wrap(steps, name)
    for name in ("known_objects", "write_index", "commit"):
        spans.wrap(Repository, name)
    return spans


def timed_backup(spans: Spans, inventory: Path) -> dict[str, Any]:
    """One real backup_flow run; its wall time and where the time went."""
    from flows.backup import backup_flow

    settle()
    spans.reset()
    load_before = load()
    origin = time.monotonic()
    result = backup_flow(ENV, inventory=str(inventory))
    wall = time.monotonic() - origin
    parts = {name: spans.span(name, origin) for name in (
        "read_facts", "apart_tables", "dump_database_parts", "dump_to_repository", "store_environment_filestore",
        "known_objects", "previous_index", "store_filestore", "write_index", "commit")}
    dump, files = parts["dump_database_parts"], parts["store_environment_filestore"]
    overlap = max(0.0, min(dump["end"], files["end"]) - max(dump["start"], files["start"]))
    steps_total = parts["commit"]["end"] - parts["read_facts"]["start"]
    return {"seconds": wall, "load": [load_before, load()], "backup_id": result["backup_id"],
            "size": result["size"], "tables_reused": result["tables_reused"], "steps": parts, "dump_filestore_overlap": round(overlap, 3),
            "outside_steps": round(wall - steps_total, 3),
            # flow start -> first step: flow run creation, repository, locks, concurrency slot
            "before_steps": parts["read_facts"]["start"],
            # both parts done -> the commit task's first line: Prefect preparing the commit task's inputs
            "commit_wait": round(parts["write_index"]["start"] - max(dump["end"], files["end"]), 3),
            # manifest written -> flow returned: artifacts, audit record, flow run end
            "after_commit": round(wall - parts["commit"]["end"], 3)}


# ----------------------------------------------------------------------------- 4. 1% of the files changed


def change_files(cluster: Cluster, fraction: float, seed: int) -> dict[str, Any]:
    """What Odoo does when an attachment's content changes: a new file named by the new SHA-1, the row
    pointing at it (store_fname, checksum, file_size), the old file removed; never a rewrite in place.
    """
    import psycopg

    filestore = FILESTORES / DB
    files, _ = tree_files(filestore)
    count = round(files * fraction)
    rng = random.Random(seed)
    with psycopg.connect(cluster.dsn(DB)) as conn:
        rows = conn.execute("SELECT id, store_fname FROM ir_attachment WHERE res_model = 'res.partner' "
                            "AND store_fname IS NOT NULL AND name LIKE 'document!_%' ESCAPE '!'").fetchall()
        chosen = rng.sample(rows, count)
        written = 0
        old_files = []
        for attachment_id, old in chosen:
            data = os.urandom(rng.randint(10 * 1024, 200 * 1024))
            sha1 = hashlib.sha1(data).hexdigest()  # noqa: S324 - Odoo's own file naming
            fname = f"{sha1[:2]}/{sha1}"
            (filestore / sha1[:2]).mkdir(exist_ok=True)
            (filestore / fname).write_bytes(data)
            conn.execute("UPDATE ir_attachment SET store_fname = %s, checksum = %s, file_size = %s, "
                         "write_date = now() AT TIME ZONE 'UTC' WHERE id = %s",
                         (fname, sha1, len(data), attachment_id))
            written += len(data)
            old_files.append(old)
        conn.commit()
    for old in old_files:
        (filestore / old).unlink(missing_ok=True)
    return {"files": count, "of": files, "bytes": written, "seed": seed}


# ----------------------------------------------------------------------------- 5. the steps alone


def steps_alone(inventory: Path, label: str) -> dict[str, float]:
    """The flow's steps called directly, one after the other (no Prefect, no concurrency)."""
    from odoops.platforms import platform_for
    from odoops.runtime import repository_for, resolve
    from tasks import backup as steps

    inv, env = resolve(ENV, str(inventory))
    repo = repository_for(inv, "local")
    figures: dict[str, float] = {}
    settle()
    with platform_for(env) as platform, platform.database() as conninfo:
        with stopwatch() as watch, steps.database_snapshot(conninfo) as (conn, _snapshot):
            steps.read_facts(conn)
        figures["read_facts"] = watch["seconds"]
        settle()
        with stopwatch() as watch:
            dump = steps.dump_to_repository(conninfo, repo, f"{ENV}-alone-{label}", None)
        figures["dump"] = watch["seconds"]
        figures["dump_bytes"] = dump["size"]
        settle()
        with stopwatch() as watch:
            files = steps.store_environment_filestore(platform, repo, ENV)
        figures["filestore"] = watch["seconds"]
        figures["filestore_read_bytes"] = files.read_bytes
        figures["filestore_new_objects"] = files.new_objects
        with stopwatch() as watch:
            list(platform.list_filestore())
        figures["list_filestore"] = watch["seconds"]
        with stopwatch() as watch:
            repo.known_objects()
        figures["known_objects"] = watch["seconds"]
    return figures


# ----------------------------------------------------------------------------- 6. peak memory


def _status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (pg_dump is started from a task-runner thread, not the main one)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return found


def peak_memory(inventory: Path, environment: str) -> dict[str, Any]:
    """A full backup into an empty repository in a child process; peaks of the process and of pg_dump.

    The child reports its own VmHWM (peak RSS of the backup process, threads included, children not);
    /proc is sampled every 50 ms for pg_dump's VmHWM and for the whole tree (Prefect server included).
    """
    env = {**os.environ, "PREFECT_HOME": str(SCRATCH / f"prefect-home-{environment}")}
    settle()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), environment, str(inventory)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[str, float] = {"pg_dump_kb": 0, "tree_rss_kb": 0}
    output: dict[str, str] = {}

    def drain(name: str, stream: Any) -> None:
        output[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    while proc.poll() is None:
        stack, total = [proc.pid], 0
        while stack:
            pid = stack.pop()
            status = _status(pid)
            if not status:
                continue
            total += int(status.get("VmRSS", "0 kB").split()[0])
            if status.get("Name") == "pg_dump":
                peaks["pg_dump_kb"] = max(peaks["pg_dump_kb"], int(status.get("VmHWM", "0 kB").split()[0]))
            stack.extend(_children(pid))
        peaks["tree_rss_kb"] = max(peaks["tree_rss_kb"], total)
        time.sleep(0.05)
    for reader in readers:
        reader.join()
    line = next((x for x in output.get("out", "").splitlines() if x.startswith("BENCH-RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"memory run of {environment} failed (exit {proc.returncode}): "
                         f"{output.get('err', '').strip().splitlines()[-1:]}")
    child = json.loads(line.split(" ", 1)[1])
    return {"seconds": child["seconds"], "process_peak_mb": child["hwm_kb"] / 1024,
            "process_before_flow_mb": child["before"]["rss_kb"] / 1024,
            "pg_dump_peak_mb": peaks["pg_dump_kb"] / 1024, "tree_peak_mb": peaks["tree_rss_kb"] / 1024}


# ----------------------------------------------------------------------------- report


def table(r: dict[str, Any]) -> str:
    b, first, second, third = r["baseline"], r["first"], r["second"], r["unchanged"]
    best = min(b["sum"], r.get("baseline_again", b)["sum"])
    rows: list[tuple[str, str, str]] = [
        ("baseline pg_dump -Fc", f"{b['pg_dump']:.1f} s", f"{b['pg_dump_bytes'] / 1e6:.0f} MB; with --compress=1 "
         f"(odoops' level) {b['pg_dump_z1']:.1f} s, {b['pg_dump_z1_bytes'] / 1e6:.0f} MB"),
        ("baseline tar of the filestore", f"{b['tar']:.1f} s", f"{b['tar_bytes'] / 1e6:.0f} MB"),
        ("baseline sum (denominator)", f"{b['sum']:.1f} s",
         f"+ fsync of both outputs {b['pg_dump_fsync'] + b['tar_fsync']:.1f} s"),
    ]
    if "baseline_again" in r:
        again = r["baseline_again"]
        rows.append(("baseline sum, again at the end", f"{again['sum']:.1f} s",
                     f"noise check: pg_dump {again['pg_dump']:.1f} s, tar {again['tar']:.1f} s"))
    rows += [
        ("odoops first backup", f"{first['seconds']:.1f} s",
         f"ratio {first['seconds'] / b['sum']:.2f} (target <= 1.00); {first['seconds'] / best:.2f} vs the "
         "faster baseline"),
        (f"odoops after {r['change']['files']} files changed", f"{second['seconds']:.1f} s",
         f"ratio {second['seconds'] / first['seconds']:.2f} of first (target <= 0.15)"),
        ("odoops with nothing changed", f"{third['seconds']:.1f} s",
         f"ratio {third['seconds'] / first['seconds']:.2f} of first"),
    ]
    for name, run in (("first", first), ("second", second), ("unchanged", third)):
        s = run["steps"]
        reused = run.get("tables_reused", [])
        rows.append((f"  {name}: dump | filestore task", f"{s['dump_database_parts']['seconds']:.1f} | "
                     f"{s['store_environment_filestore']['seconds']:.1f} s",
                     f"tables reused {len(reused)} ({', '.join(reused) or '-'}); fingerprints "
                     f"{(s.get('apart_tables') or {}).get('seconds', 0):.1f} s; "
                     f"overlap {run['dump_filestore_overlap']:.1f} s; flow start to read_facts "
                     f"{run['before_steps']:.1f} s, read_facts {s['read_facts']['seconds']:.1f} s, commit task waits "
                     f"{run['commit_wait']:.1f} s, after the manifest {run['after_commit']:.1f} s"))
    for name in ("first", "second"):
        a = r["alone"].get(name)
        if a:
            rows.append((f"  alone ({name} state): dump | filestore", f"{a['dump']:.1f} | {a['filestore']:.1f} s",
                         f"read_facts {a['read_facts']:.1f} s, known_objects {a['known_objects']:.2f} s, "
                         f"listing {a['list_filestore']:.2f} s"))
    for size in ("half", "full"):
        m = r["memory"].get(size)
        if m:
            rows.append((f"peak RSS, backup process ({size})", f"{m['process_peak_mb']:.0f} MB",
                         f"{m['process_before_flow_mb']:.0f} MB before the flow; pg_dump {m['pg_dump_peak_mb']:.0f} MB;"
                         f" tree {m['tree_peak_mb']:.0f} MB; backup {m['seconds']:.1f} s"))
    if r["memory"].get("half") and r["memory"].get("full"):
        half, full = r["memory"]["half"], r["memory"]["full"]
        rows.append(("peak RSS growth by the flow, half | full",
                     f"{half['process_peak_mb'] - half['process_before_flow_mb']:.0f} | "
                     f"{full['process_peak_mb'] - full['process_before_flow_mb']:.0f} MB",
                     f"full / half peak {full['process_peak_mb'] / half['process_peak_mb']:.2f} (target <= 300 MB, "
                     "same at both sizes)"))
    width = max(len(x[0]) for x in rows) + 2
    lines = [f"{'measure':<{width}}{'value':>14}  notes"]
    lines += [f"{a:<{width}}{b_:>14}  {c}" for a, b_, c in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true",
                        help="keep/start the cluster in bench/out/backup-bench instead of rebuilding it")
    parser.add_argument("--shared-bench", type=Path, default=ROOT.parent / "shared" / "bench",
                        help="folder holding make-big-odoo-db.sh (default: ../shared/bench)")
    parser.add_argument("--files", type=int, default=20000, help="extra filestore files (make-big-odoo-db.sh)")
    parser.add_argument("--quick", action="store_true",
                        help="2,000 files, no half-size memory run, no second baseline (the database is "
                             "still >= 1 GB: make-big-odoo-db.sh always tops it up)")
    parser.add_argument("--change", type=float, default=0.01, help="fraction of the files changed (default 1%%)")
    args = parser.parse_args()
    make_db = args.shared_bench / "make-big-odoo-db.sh"
    if not make_db.is_file():
        raise SystemExit(f"{make_db} not found: pass --shared-bench DIR (the folder of make-big-odoo-db.sh)")
    nfiles = 2000 if args.quick else args.files
    OUT.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(OUT).free
    if free < MIN_FREE and not (args.reuse and WORK.exists()):
        raise SystemExit(f"only {free / 1e9:.1f} GB free on the disk of {OUT}: the benchmark needs ~10 GB")

    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    say(f"start: {uptime}")
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "started_at": datetime.now(UTC).isoformat(),
        "git_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
        "cpus": os.cpu_count(), "uptime_start": uptime, "load_start": load(), "alone": {}, "memory": {}}
    shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir(parents=True)
    cluster: Cluster | None = None
    try:
        cluster, state = prepare_data(make_db, nfiles, args.reuse)
        report["build"] = state
        report["data"] = describe_data(cluster)
        full = report["data"][DB]
        say(f"{DB}: {full['db_bytes'] / 1e9:.2f} GB, filestore {full['filestore_bytes'] / 1e9:.2f} GB "
            f"in {full['filestore_files']} files")

        say("baseline: pg_dump -Fc, then tar")
        report["baseline"] = baseline(cluster)
        say(f"baseline {report['baseline']['sum']:.1f} s")

        repos = SCRATCH / "repos"
        inventory = write_inventory(SCRATCH / "inventory.yaml", repos / "main", cluster)
        from prefect.testing.utilities import prefect_test_harness

        import flows.backup  # noqa: F401 - imported before timing

        spans = instrument()
        with prefect_test_harness(server_startup_timeout=60):
            say("first backup (empty repository)")
            report["first"] = timed_backup(spans, inventory)
            say(f"first backup {report['first']['seconds']:.1f} s")
            report["change"] = change_files(cluster, args.change, seed=int(time.time()))
            say(f"changed {report['change']['files']} files; copying the repository for the steps-alone run")
            before_second = SCRATCH / "repos" / "before-second"
            subprocess.run(["cp", "-al", str(repos / "main"), str(before_second)], check=True)
            report["second"] = timed_backup(spans, inventory)
            say(f"second backup {report['second']['seconds']:.1f} s")
            report["unchanged"] = timed_backup(spans, inventory)
            say(f"unchanged backup {report['unchanged']['seconds']:.1f} s")

        say("the steps alone, outside Prefect")
        alone_inv = write_inventory(SCRATCH / "inventory-alone.yaml", before_second, cluster)
        report["alone"]["second"] = steps_alone(alone_inv, "second")
        shutil.rmtree(before_second)
        if not args.quick:
            empty_inv = write_inventory(SCRATCH / "inventory-empty.yaml", repos / "empty", cluster)
            report["alone"]["first"] = steps_alone(empty_inv, "first")
            shutil.rmtree(repos / "empty")
        report["repository_bytes"] = du(repos / "main")
        shutil.rmtree(repos)

        for size, environment in (("half", HALF_ENV), ("full", ENV)):
            if size == "half" and args.quick:
                continue
            say(f"peak memory, {size} size (child process)")
            mem_inv = write_inventory(SCRATCH / f"inventory-mem-{size}.yaml", SCRATCH / f"mem-{size}", cluster)
            report["memory"][size] = peak_memory(mem_inv, environment)
            shutil.rmtree(SCRATCH / f"mem-{size}", ignore_errors=True)

        if not args.quick:
            say("baseline again (noise check)")
            report["baseline_again"] = baseline(cluster)
    finally:
        if cluster is not None:
            stop_cluster(WORK)
        shutil.rmtree(SCRATCH, ignore_errors=True)

    report["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report["load_end"] = load()
    report["kept_cluster"] = {"path": str(WORK), "bytes": du(WORK)}
    say(f"end: {report['uptime_end']}")
    print()
    print(table(report))
    print(f"\nkept for --reuse: {WORK} ({report['kept_cluster']['bytes'] / 1e9:.1f} GB)")
    (OUT / "backup.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"details: {OUT / 'backup.json'}")


if __name__ == "__main__":
    main()
