"""Downtime of a container deploy that updates no module, against a bare restart of the same container.

Goal (docs/deploy.md, issue 7): Odoo not answering ``/web/health`` during ``odoops deploy ENV --image TAG
--update none`` ≤ 1.5 × during ``docker restart`` of its container, measured in the same run on the real
Odoo 17 image (scripts/odoo-image.sh) and Podman's Docker API. The deploy replaces the container (a new
one from the other image with the old one's volumes, network and config), verifies health and records the
release; the bare restart only stops and starts the same container.

    .venv/bin/python bench/bench_docker_deploy.py [--rounds 3]

Figures, not pass/fail. Starts its own PostgreSQL and Podman service; removes everything it creates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from bench_upgrade import watch_downtime  # noqa: E402

from odoops.sandbox import SAMPLE_ZIP, load_sample_database, start_cluster  # noqa: E402
from tests.docker_site import create_odoo_container, remove_odoo_container, wait_healthy  # noqa: E402
from tests.helpers import write_inventory  # noqa: E402
from tests.services_docker import built_odoo_image, podman_service  # noqa: E402
from tests.services_odoo import ODOO_DB_USER  # noqa: E402

ENV = "bench-docker"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="odoops-bench-docker-"))
    work.chmod(0o755)
    cluster = start_cluster(work)
    try:
        import psycopg
        from psycopg import sql

        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(ODOO_DB_USER)))
        template = load_sample_database(cluster, "bench_template", work / "template-fs", SAMPLE_ZIP)
        with podman_service() as engine:
            image = built_odoo_image(engine)
            tags = []
            for n in (1, 2):  # two images that differ only by a label: each deploy really replaces the container
                context = work / f"image-{n}"
                context.mkdir()
                (context / "Dockerfile").write_text(f"FROM {image.tag}\nLABEL odoops.bench.release={n}\n")
                tag = f"odoops-bench-release:{n}"
                engine.client.images.build(path=str(context), tag=tag, rm=True, labels=engine.label())
                tags.append(tag)
            site = create_odoo_container(engine, image, cluster, ("bench_template", template), work / "site",
                                         image=tags[0], config_volume=True)
            try:
                site.container.start()
                wait_healthy(site.container, site.url)
                inventory = write_inventory(work / "inv.yaml", {ENV: {
                    "stage": "staging", "platform": "docker", "url": site.url,
                    "docker": {"engine": engine.docker_host, "container": site.name},
                    "database": {"dsn": cluster.dsn(site.dbname)}}})
                from prefect.testing.utilities import prefect_test_harness

                from flows.deploy import deploy_flow

                bare, ours = [], []
                with prefect_test_harness(server_startup_timeout=120):
                    for n in range(1, 2 * args.rounds + 1):
                        if n % 2:
                            current = engine.client.containers.get(site.name)
                            bare.append(watch_downtime(site.url, lambda c=current: c.restart(timeout=30)))
                        else:
                            tag = tags[(n // 2) % 2]
                            ours.append(watch_downtime(site.url, lambda tag=tag: deploy_flow(
                                ENV, image=tag, update="none", inventory=str(inventory))))
                        print(f"round {n}: {'bare restart' if n % 2 else 'odoops deploy'} "
                              f"{(bare if n % 2 else ours)[-1]:.2f} s down", flush=True)
                result = {"bare_restart_s": [round(x, 2) for x in bare], "deploy_s": [round(x, 2) for x in ours],
                          "ratio_of_medians": round(statistics.median(ours) / statistics.median(bare), 3)}
                print(json.dumps(result, indent=1))
            finally:
                remove_odoo_container(engine, site)
                for tag in tags:
                    engine.client.images.remove(tag, force=True)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
