"""Downtime of a change: odoops' runbook against the bare commands it wraps, in the same run.

``--mode update`` (docs/upgrade.md, goal ≤ 1.2×): a module update run — odoops' upgrade runbook against
the bare sequence (stop Odoo, ``odoo-bin -u``, start Odoo, wait for ``/web/health``), on the real Odoo 17
sample database with a custom addon whose update adds a column. odoops adds the snapshot (database
FILE_COPY + filestore hard links), the log analysis and its verification.

``--mode restart`` (docs/deploy.md, goal ≤ 1.5×): a deploy of a git commit that updates no module —
``odoops deploy`` (fetch, export, plan, link switched, restart, verify) against the bare restart (stop,
link switched, start, wait for ``/web/health``). Only Odoo-not-answering time counts.

    .venv/bin/python bench/bench_upgrade.py [--mode update|restart] [--rounds 3]

Figures, not pass/fail. Uses a throwaway PostgreSQL and the real Odoo from scripts/odoo.sh; removes all.
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
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from odoops.sandbox import SAMPLE_ZIP, free_port, load_sample_database, start_cluster  # noqa: E402
from tests.odoo_site import Site, healthy, write_addon  # noqa: E402
from tests.services_odoo import OdooInstall, read_env_file, write_odoo_config  # noqa: E402


def wait(predicate, seconds: float = 120) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > seconds:
            raise SystemExit("Odoo did not come back")
        time.sleep(0.02)
    return time.monotonic()


def watch_downtime(url: str, action) -> float:
    """Seconds from the first failed health probe to the first passing one after ``action()``."""
    import threading

    marks: dict[str, float] = {}
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            ok = healthy(url)
            now = time.monotonic()
            if not ok and "down" not in marks:
                marks["down"] = now
            if ok and "down" in marks and "up" not in marks:
                marks["up"] = now
            time.sleep(0.02)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    action()
    wait(lambda: "up" in marks)
    stop.set()
    thread.join()
    return marks["up"] - marks["down"]


def _addons_repo(remote: Path, work: Path, count: int) -> list[str]:
    """A bare repository of acme_custom with ``count`` commits that change code but no manifest version."""
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout.strip()

    run("init", "--bare", "--quiet", "-b", "main", str(remote))
    run("clone", "--quiet", str(remote), str(work))
    run("-C", str(work), "config", "user.email", "bench@example.com")
    run("-C", str(work), "config", "user.name", "bench")
    commits = []
    for n in range(count):
        write_addon(work, "17.0.1.0.0", note=f"revision {n}")
        run("-C", str(work), "add", "-A")
        run("-C", str(work), "commit", "--quiet", "-m", f"revision {n}")
        commits.append(run("-C", str(work), "rev-parse", "HEAD"))
    run("-C", str(work), "push", "--quiet", "origin", "HEAD:main")
    return commits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=("update", "restart"), default="update")
    args = parser.parse_args()
    env_file = subprocess.run(["bash", str(ROOT / "scripts" / "odoo.sh")], capture_output=True, text=True,
                              check=True).stdout.strip().splitlines()[-1]
    v = read_env_file(Path(env_file))
    install = OdooInstall(Path(env_file), Path(v["ODOO_VENV"]), Path(v["ODOO_PYTHON"]), Path(v["ODOO_BIN"]),
                          Path(v["ODOO_ROOT"]), v["ODOO_ADDONS_PATH"], v["ODOO_VERSION"])
    work = Path(tempfile.mkdtemp(prefix="odoops-bench-upgrade-"))
    work.chmod(0o755)
    cluster = start_cluster(work)
    try:
        import psycopg

        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE ROLE odoo LOGIN SUPERUSER")
        dbname = "acme"
        filestore = load_sample_database(cluster, dbname, work / "data" / "filestore" / dbname, SAMPLE_ZIP)
        releases, current = work / "releases", work / "addons-current"
        write_addon(releases / "v0", "17.0.1.0.0")
        current.symlink_to(releases / "v0")
        port = free_port()
        config = write_odoo_config(work / "odoo.conf", cluster, install, data_dir=work / "data", http_port=port,
                                   addons_path=f"{install.addons_path},{current}", logfile=work / "odoo.log",
                                   dbfilter=f"^{dbname}$")
        subprocess.run(install.command("-c", str(config), "-d", dbname, "-i", "acme_custom", "--stop-after-init"),
                       check=True, capture_output=True)
        site = Site(work, cluster, dbname, filestore, config, f"http://127.0.0.1:{port}", install.odoo_bin)
        from tests.helpers import host_env, write_inventory

        repo = work / "addons.git"
        commits = _addons_repo(repo, work / "addons-work", 2 * args.rounds) if args.mode == "restart" else []
        inventory = write_inventory(work / "inv.yaml", {"staging": host_env(
            cluster, dbname, filestore, stage="staging", url=site.url, addons_link=str(current),
            odoo_bin=[str(install.odoo_bin), "-c", str(config)], stop_command=[str(site.ctl), "stop"],
            start_command=[str(site.ctl), "start"], git={"repository": str(repo)}, releases_dir=str(releases))})
        os.environ["ODOOPS_CACHE"] = str(work / "cache")
        from prefect.testing.utilities import prefect_test_harness

        from flows.deploy import deploy_flow
        from flows.upgrade import upgrade_flow
        from tasks import git

        bare, ours = [], []
        with prefect_test_harness(server_startup_timeout=120):
            site.service("start")
            wait(lambda: healthy(site.url))
            for n in range(1, 2 * args.rounds + 1):
                if args.mode == "restart":
                    commit = commits[n - 1]
                    if n % 2:  # the bare restart: the release folder made beforehand, as an operator would
                        folder = git.export(git.mirror(str(repo)), commit, releases / commit)

                        def restart(folder=folder) -> None:
                            site.service("stop")
                            os.unlink(current)
                            current.symlink_to(folder)
                            site.service("start")

                        bare.append(watch_downtime(site.url, restart))
                    else:
                        ours.append(watch_downtime(site.url, lambda commit=commit: deploy_flow(
                            "staging", ref=commit, inventory=str(inventory))))
                    print(f"round {n}: {'bare' if n % 2 else 'odoops'} {(bare if n % 2 else ours)[-1]:.2f} s down",
                          flush=True)
                    continue
                release = releases / f"v{n}"
                write_addon(release, f"17.0.1.{n}.0", tier=n % 2 == 1)
                if n % 2:  # the bare sequence an operator would type
                    def by_hand(release=release) -> None:
                        site.service("stop")
                        os.unlink(current)
                        current.symlink_to(release)
                        subprocess.run(install.command("-c", str(config), "-d", dbname, "-u", "acme_custom",
                                                       "--stop-after-init", "--no-http"), check=True,
                                       capture_output=True)
                        site.service("start")

                    bare.append(watch_downtime(site.url, by_hand))
                else:
                    ours.append(watch_downtime(site.url, lambda release=release: upgrade_flow(
                        "staging", modules=["acme_custom"], code=str(release), inventory=str(inventory))))
                print(f"round {n}: {'bare' if n % 2 else 'odoops'} {(bare if n % 2 else ours)[-1]:.2f} s down",
                      flush=True)
            site.service("stop")
        result = {"mode": args.mode, "bare_s": [round(x, 2) for x in bare], "odoops_s": [round(x, 2) for x in ours],
                  "ratio_of_medians": round(statistics.median(ours) / statistics.median(bare), 3)}
        print(json.dumps(result, indent=1))
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
