"""Benchmark: ``odoops`` full log analysis versus ``odoo-logs errors`` on a ~1 GB Odoo log.

Why: the analyzer must stream multi-gigabyte logs in flat memory and beat the specialised tool that
only extracts errors. The log is the real fixtures (tests/fixtures/odoo-logs and the Odoo 17 sample)
repeated to the wanted size. Each tool runs as its own child process; wall time is measured around it
and peak RSS read from ``os.wait4``. ``odoo-logs`` (PyPI) lives in a throwaway venv, never in the project:

    uv venv /tmp/odoo-logs-venv && uv pip install --python /tmp/odoo-logs-venv odoo-logs
    .venv/bin/python bench/bench_logs.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*sorted((ROOT / "tests" / "fixtures" / "odoo-logs").glob("*.log")), ROOT / "sample" / "odoo17" / "server.log"]

ODOOPS = """
import json, sys
from tasks.logs import analyze_sources
s = analyze_sources([sys.argv[1]], jobs=int(sys.argv[2]) or None)
print(json.dumps({"records": s["records"], "errors": s["levels"]["ERROR"] + s["levels"]["CRITICAL"],
                  "signatures": s["errors"]["distinct"], "requests": s["requests"]["total"]}))
"""


def build_log(path: Path, size: int) -> int:
    """Write the fixtures again and again until ``size`` bytes; return how many copies were written."""
    block = b"".join(p.read_bytes() for p in SOURCES)
    copies = max(1, size // len(block))
    big = block * max(1, (64 << 20) // len(block))
    per_big = len(big) // len(block)
    with path.open("wb") as f:
        written = 0
        while written + per_big <= copies:
            f.write(big)
            written += per_big
        f.write(block * (copies - written))
    return copies


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc), in KB."""
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def run(argv: list[str]) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds, peak RSS of the whole process tree (MB, sampled) and stdout of one run."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss_kb(proc.pid))
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed with exit code {proc.returncode}")
    return elapsed, cpu, peak / 1024, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--odoo-logs", default="/tmp/odoo-logs-venv/bin/odoo-logs")
    parser.add_argument("--log", help="Reuse this log instead of building one.")
    parser.add_argument("--build", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build_log(Path(args.build), args.size_mb << 20)
        return
    if not Path(args.odoo_logs).exists():
        raise SystemExit(f"odoo-logs not found at {args.odoo_logs}: uv venv /tmp/odoo-logs-venv && "
                         "uv pip install --python /tmp/odoo-logs-venv odoo-logs")
    tmp = None
    if args.log:
        log = Path(args.log)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="odoops-bench-")
        log = Path(tmp.name) / "odoo.log"
        subprocess.run([sys.executable, __file__, "--build", str(log), "--size-mb", str(args.size_mb)], check=True)
        copies = log.stat().st_size // sum(p.stat().st_size for p in SOURCES)
        print(f"built {log} ({log.stat().st_size / 1e6:.0f} MB, {copies} copies of the fixtures)")
    size = log.stat().st_size
    rows = []
    try:
        # children CPU so far (the --build child above included): each row counts only its own run
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0 = usage.ru_utime + usage.ru_stime
        # the fair comparison: one odoops process against one odoo-logs process; then the CLI default (workers)
        for label, jobs in (("odoops 1 process", 1), ("odoops workers", 0)):
            wall, cpu, rss, out = run([sys.executable, "-c", ODOOPS, str(log), str(jobs)])
            rows.append((label, wall, cpu - cpu0, rss, json.loads(out)))
            cpu0 = cpu
        wall, cpu, rss, out = run([args.odoo_logs, "--output-format", "json", "errors", str(log)])
        theirs = json.loads(out)
        their = {"errors": sum(row["count"] for row in theirs), "signatures": len(theirs)}
        rows.append(("odoo-logs errors", wall, cpu - cpu0, rss, their))
    finally:
        if tmp is not None:
            tmp.cleanup()
    mb = size / 1e6
    print(f"{'tool':<18}{'wall s':>8}{'cpu s':>8}{'MB/s':>7}{'MB/cpu-s':>9}{'peak MB':>9}{'errors':>8}{'groups':>8}")
    for label, wall, cpu, rss, res in rows:
        print(f"{label:<18}{wall:>8.1f}{cpu:>8.1f}{mb / wall:>7.0f}{mb / cpu:>9.0f}{rss:>9.0f}"
              f"{res['errors']:>8}{res['signatures']:>8}")
    (_, w1, c1, _, one), (_, wn, _, _, many), (_, wt, ct, _, _) = rows
    print(f"speed-up, 1 process: {wt / w1:.2f}x wall, {ct / c1:.2f}x per CPU second; with workers: {wt / wn:.2f}x "
          f"wall; same error count: {one['errors'] == many['errors'] == their['errors']}; odoops also counted "
          f"{one['records']} records and {one['requests']} requests (every section, one pass); "
          "peak MB is the sum over the process tree; the machine's other load moves these figures")

if __name__ == "__main__":
    main()
