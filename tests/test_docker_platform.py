"""The ``docker`` platform on the real engine (Podman's Docker-API service) and the real Odoo 17.0 image: the
existing backup, verify, logs and health runbooks drive an Odoo that runs in a container, unchanged.

One Odoo container serves the module (a named volume at /var/lib/odoo holding the sample's filestore, owned by
the image's ``odoo`` user; its config put in with ``put_archive``; ``network_mode="host"`` since the tests'
PostgreSQL listens on 127.0.0.1 only; its own HTTP port; compose labels so it can also be found as a compose
service). Everything created carries the session's labels, so the engine fixture removes it at teardown.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time

import psycopg
import pytest
from typer.testing import CliRunner

from odoops.errors import ConfigError, ConnectionFailed, TimedOut, ToolFailed
from odoops.inventory import load_inventory
from odoops.platforms import platform_for
from odoops.platforms.docker import DockerPlatform
from tests.docker_site import create_odoo_container, remove_odoo_container
from tests.docker_site import get as _get
from tests.docker_site import volume_files as _volume_files
from tests.docker_site import wait_healthy as _wait_healthy
from tests.helpers import drop_database, drop_database_and_copies, write_inventory

ENV = "acme-docker"


# ---------------------------------------------------------------- the Odoo container


@pytest.fixture(scope="module")
def odoo_container(docker_engine, odoo_image, pg_cluster, odoo_db_role, sample_template, tmp_path_factory):
    folder = tmp_path_factory.mktemp("docker-env")
    # the config in a volume, as a one-off beside the server (odoo-bin neutralize in a restore) must read it too
    site = create_odoo_container(docker_engine, odoo_image, pg_cluster, sample_template, folder, config_volume=True)
    site.container.start()
    _wait_healthy(site.container, site.url)
    site.inventory = write_inventory(folder / "environments.yaml", {ENV: docker_entry(
        docker_engine, site, pg_cluster, odoo_bin=[odoo_image.odoo_bin, "-c", odoo_image.config])})
    yield site
    remove_odoo_container(docker_engine, site)
    drop_database(pg_cluster, site.dbname)


def docker_entry(docker_engine, site, pg_cluster, **extra) -> dict:
    """The inventory entry of a test container, as an operator writes it."""
    return {"stage": "staging", "platform": "docker", "docker": {"engine": docker_engine.docker_host,
                                                                  "container": site.name},
            "database": {"dsn": pg_cluster.dsn(site.dbname)}, "url": site.url, "backup": {"storage": "local"},
            **extra}


@pytest.fixture
def platform(odoo_container):
    env = load_inventory(odoo_container.inventory).environment(ENV)
    with platform_for(env) as p:
        yield p


# ---------------------------------------------------------------- inventory


def test_the_inventory_entry_derives_the_filestore_and_config(odoo_container):
    env = load_inventory(odoo_container.inventory).environment(ENV)
    assert env.platform == "docker" and env.docker.container == odoo_container.name
    assert env.filestore == f"/var/lib/odoo/filestore/{odoo_container.dbname}"
    assert env.odoo_config == env.docker.config == "/etc/odoo/odoo.conf"


BAD_DOCKER = [
    ({"container": "a", "compose": {"project": "p", "service": "s"}}, "names both a container and a compose service"),
    ({"engine": "unix:///x.sock"}, "docker: names no container; add container: NAME"),
    ({"container": "a", "engine": "/var/run/docker.sock"}, "docker.engine: '/var/run/docker.sock' is not a Docker "
                                                            "engine URL"),
    ({"container": "a", "data_dir": "var/lib/odoo"}, "docker.data_dir: 'var/lib/odoo' is not an absolute path"),
    ({"container": "a b"}, "docker.container: 'a b' is not a container name"),
    ({"compose": {"project": "p"}}, "docker.compose.service: missing"),
    ({"container": "a", "volume": "x"}, "docker.volume: unknown key"),
    ({"container": "a", "dockerfile": "../Dockerfile"}, "docker.dockerfile: '../Dockerfile' is not a path inside the "
                                                        "repository"),
    ({"container": "a", "build_args": {"PIP_INDEX": 3}}, "docker.build_args.PIP_INDEX: expected a string, got int"),
    ({"container": "a", "build_args": ["X=1"]}, "docker.build_args: expected a mapping"),
    ({"container": "a", "image_repository": "Acme/Odoo:17"}, "docker.image_repository: 'Acme/Odoo:17' is not an "
                                                             "image repository name"),
    ({"container": "a", "database_through_engine": "yes"}, "docker.database_through_engine: expected true or false"),
    ("acme-odoo", "docker: expected a mapping"),
    (None, "docker: missing; add docker: {container: NAME}"),
]


@pytest.mark.parametrize(("docker", "expected"), BAD_DOCKER, ids=[e for _, e in BAD_DOCKER])
def test_a_bad_docker_block_is_one_line_naming_the_key(tmp_path, docker, expected):
    env = {"stage": "staging", "platform": "docker", "database": {"dsn": "postgresql://odoo@127.0.0.1/acme"}}
    if docker is not None:
        env["docker"] = docker
    with pytest.raises(ConfigError) as info:
        load_inventory(write_inventory(tmp_path / "environments.yaml", {"acme": env}))
    message = str(info.value)
    assert expected in message and "\n" not in message, message
    assert message.startswith("inventory: environments.acme.docker")


@pytest.mark.parametrize(("extra", "expected"), [
    ({"ssh": {"host": "x"}}, "environments.acme.ssh: does not apply to platform docker"),
    ({"stop_command": ["systemctl", "stop", "odoo"]}, "stop_command: does not apply to platform docker"),
    ({"database": {"dsn": "postgresql://odoo@127.0.0.1:5432"}}, "database.dsn: names no database"),
])
def test_host_keys_do_not_apply_to_docker(tmp_path, extra, expected):
    env = {"stage": "staging", "platform": "docker", "database": {"dsn": "postgresql://odoo@127.0.0.1/acme"},
           "docker": {"container": "acme-odoo"}, **extra}
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_inventory(write_inventory(tmp_path / "environments.yaml", {"acme": env}))
    host = {"stage": "staging", "platform": "host", "database": {"dsn": "postgresql://odoo@127.0.0.1/acme"},
            "docker": {"container": "acme-odoo"}}
    with pytest.raises(ConfigError, match="filestore: missing|docker: a docker block on platform host"):
        load_inventory(write_inventory(tmp_path / "environments.yaml", {"acme": host}))


# ---------------------------------------------------------------- runbooks through the platform


@pytest.mark.usefixtures("prefect_harness")
def test_backup_of_a_container_lands_in_the_catalog_and_verifies(odoo_container, tmp_path):
    from flows.backup import backup_flow
    from flows.verify import verify_flow
    from odoops.runtime import repository_for
    from tasks.archive import backup_key
    from tasks.filestore import materialize

    inventory = str(odoo_container.inventory)
    started = time.monotonic()
    first = backup_flow(ENV, inventory=inventory)
    first_seconds = time.monotonic() - started
    inv = load_inventory(inventory)
    repo = repository_for(inv, "local")
    manifest = repo.manifest(first["backup_id"])
    assert manifest["db_name"] == odoo_container.dbname and manifest["odoops"]["environment"] == ENV

    # The catalog's filestore is the volume's, file for file and SHA-1 for SHA-1 (read from the engine directly).
    in_volume = _volume_files(odoo_container.container, f"/var/lib/odoo/filestore/{odoo_container.dbname}")
    assert set(in_volume) >= set(odoo_container.files) and len(in_volume) > 50
    sha1s = materialize(repo.store, repo.filestore_index(first["backup_id"]), tmp_path / "restored")
    assert sha1s == {rel: hashlib.sha1(data).hexdigest() for rel, data in in_volume.items()}  # noqa: S324
    assert manifest["odoops"]["filestore"]["files"] == len(in_volume)
    assert not manifest["odoops"]["missing_files"]

    # The container's config is stored, its secrets masked.
    stored = repo.store.get_bytes(backup_key(first["backup_id"], "odoo.conf")).decode()
    assert f"dbfilter = ^{re.escape(odoo_container.dbname)}$" in stored
    assert "admin_passwd = ***" in stored and odoo_container.admin_passwd not in stored

    assert verify_flow(first["backup_id"], inventory=inventory)["ok"] is True

    # A second backup reads no unchanged file again: no new object, no new byte.
    started = time.monotonic()
    second = backup_flow(ENV, inventory=inventory, kind="pre-deploy")
    second_seconds = time.monotonic() - started
    files = repo.manifest(second["backup_id"])["odoops"]["filestore"]
    assert (files["files"], files["new_objects"], files["new_bytes"]) == (len(in_volume), 0, 0)
    print(f"backup of the container: first {first_seconds:.1f} s, second {second_seconds:.1f} s")


@pytest.mark.usefixtures("prefect_harness")
def test_a_database_only_the_container_reaches_is_backed_up_through_the_engine(docker_engine, odoo_image, pg_cluster,
                                                                               odoo_db_role, sample_template,
                                                                               tmp_path):
    """The dsn names the database host as the container sees it (``pgdb``, resolvable only in the container,
    as a compose service name is): odoops reaches it by a relay through the engine, pg_dump included."""
    import socket

    from flows.backup import backup_flow
    from flows.health import health_flow
    from odoops.errors import ConnectionFailed

    with pytest.raises(OSError):
        socket.getaddrinfo("pgdb", pg_cluster.port)  # this machine cannot resolve it: only the relay can work
    site = create_odoo_container(docker_engine, odoo_image, pg_cluster, sample_template, tmp_path,
                                 config_volume=True, db_host="pgdb", extra_hosts={"pgdb": "127.0.0.1"})
    try:
        site.container.start()
        _wait_healthy(site.container, site.url)
        dsn = f"postgresql://postgres@pgdb:{pg_cluster.port}/{site.dbname}"
        entry = {"stage": "staging", "platform": "docker", "url": site.url, "database": {"dsn": dsn},
                 "docker": {"engine": docker_engine.docker_host, "container": site.name,
                            "database_through_engine": True}}
        inventory = write_inventory(tmp_path / "through.yaml", {ENV: entry})
        result = backup_flow(ENV, inventory=str(inventory))
        manifest = load_inventory(inventory)
        from odoops.runtime import repository_for

        stored = repository_for(manifest, "local").manifest(result["backup_id"])
        assert stored["db_name"] == site.dbname and stored["odoops"]["database"]["row_counts"]["res_partner"] > 0
        checks = {c["name"]: c for c in health_flow(ENV, inventory=str(inventory))["checks"]}
        assert checks["pg.connections"]["status"] in ("ok", "warn") and checks["pg.connections"]["value"] is not None
        assert docker_engine.client.containers.list(all=True, filters={"label": "odoops.relay"}) == [], \
            "the relay is gone with the run"
        entry["docker"]["database_through_engine"] = False
        write_inventory(tmp_path / "direct.yaml", {ENV: entry})
        with pytest.raises(ConnectionFailed):
            backup_flow(ENV, inventory=str(tmp_path / "direct.yaml"))
    finally:
        remove_odoo_container(docker_engine, site)
        drop_database(pg_cluster, site.dbname)


@pytest.fixture
def own_container(docker_engine, odoo_image, pg_cluster, odoo_db_role, sample_template, tmp_path):
    """A container of its own, for a test that changes its database and volume (the module's stays as it is)."""
    site = create_odoo_container(docker_engine, odoo_image, pg_cluster, sample_template, tmp_path, config_volume=True)
    site.container.start()
    _wait_healthy(site.container, site.url)
    site.inventory = write_inventory(tmp_path / "environments.yaml", {ENV: docker_entry(docker_engine, site,
                                                                                         pg_cluster)})
    yield site
    remove_odoo_container(docker_engine, site)
    drop_database_and_copies(pg_cluster, site.dbname)


@pytest.mark.usefixtures("prefect_harness")
def test_restore_into_a_container_puts_the_backup_back_in_its_volume_and_undo_reverses_it(own_container,
                                                                                          pg_cluster):
    """The restore runbook, unchanged, on a container: the files are loaded here, put in the volume beside
    the live filestore in one archive, swapped in by renames with the container stopped; undo swaps back."""
    from flows.backup import backup_flow
    from flows.restore import restore_flow, restore_undo_flow

    inventory, site = str(own_container.inventory), own_container
    folder = f"/var/lib/odoo/filestore/{site.dbname}"
    backup_id = backup_flow(ENV, inventory=inventory)["backup_id"]
    good = _volume_files(site.container, folder)
    victim = sorted(good)[0]
    assert site.container.exec_run(["rm", "-f", f"{folder}/{victim}"]).exit_code == 0  # an accident
    with psycopg.connect(pg_cluster.dsn(site.dbname), autocommit=True) as conn:
        conn.execute("UPDATE res_partner SET name = 'damaged' WHERE id = 3")

    result = restore_flow(backup_id, ENV, inventory=inventory)
    assert result["snapshot"], "the replaced state is kept for undo"
    assert _volume_files(site.container, folder) == good, "every file back, byte for byte, in the volume"
    uid = site.container.exec_run(["stat", "-c", "%U", f"{folder}/{victim}"]).output.decode().strip()
    assert uid == "odoo", "restored files belong to Odoo's user in the container"
    with psycopg.connect(pg_cluster.dsn(site.dbname)) as conn:
        assert conn.execute("SELECT name FROM res_partner WHERE id = 3").fetchone()[0] != "damaged"
    _wait_healthy(site.container, site.url)
    hidden = site.container.exec_run(["ls", "-a", "/var/lib/odoo/filestore"]).output.decode().split()
    assert not [n for n in hidden if "odoops-restore" in n], "no scratch folder left in the volume"

    restore_undo_flow(ENV, inventory=inventory)  # the damaged state, as it was before the restore
    assert victim not in _volume_files(site.container, folder)
    with psycopg.connect(pg_cluster.dsn(site.dbname)) as conn:
        assert conn.execute("SELECT name FROM res_partner WHERE id = 3").fetchone()[0] == "damaged"


def test_filestore_reads_one_archive_not_one_call_per_file(platform, odoo_container):
    """Listing (a find in the running container) agrees with the archive's headers; the bulk reader streams one
    archive; per-file reads give the same bytes."""
    from tasks import containers

    platform.filestore_exists()  # connected: the timings below are the calls themselves
    started = time.monotonic()
    entries = list(platform.list_filestore())
    list_seconds = time.monotonic() - started
    assert {e.relpath for e in entries} >= set(odoo_container.files)
    archived = containers.iter_tree(platform.container, platform.filestore_path, wanted=lambda _: False)
    assert {(e.relpath, e.size, e.mtime_ns) for e in entries} == {(i.relpath, i.size, i.mtime_ns) for i, _ in archived}
    sample = sorted(e.relpath for e in entries)[:10]
    started = time.monotonic()
    one_by_one = {rel: platform.open_filestore_file(rel).read() for rel in sample}
    per_file = (time.monotonic() - started) / len(sample)
    started = time.monotonic()
    bulk = {rel: reader.read() for rel, reader in platform.read_filestore_files(e.relpath for e in entries)}
    bulk_seconds = time.monotonic() - started
    assert len(bulk) == len(entries) and all(bulk[rel] == data for rel, data in one_by_one.items())
    for rel in sample:
        if rel in odoo_container.files:
            assert one_by_one[rel] == odoo_container.files[rel]
    print(f"{len(entries)} files: list {list_seconds * 1000:.0f} ms, one file {per_file * 1000:.1f} ms, "
          f"all in one archive {bulk_seconds * 1000:.0f} ms")
    with pytest.raises(Exception, match="leaves the filestore folder"):
        platform.open_filestore_file("../../../etc/odoo/odoo.conf")


def test_logs_of_the_environment_are_the_containers_log(odoo_container):
    from odoops.cli import app

    _get(f"{odoo_container.url}/web/health")
    result = CliRunner().invoke(app, ["logs", f"env:{ENV}", "--json", "--inventory", str(odoo_container.inventory)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sources"][0]["source"] == f"{ENV}:container {odoo_container.name}"
    assert summary["records"] > 5 and summary["levels"].get("INFO", 0) > 5
    assert summary["requests"]["total"] >= 1  # the werkzeug line of GET /web/health
    assert odoo_container.dbname in summary["databases"] or "?" in summary["databases"]


def test_follow_sees_a_new_request_in_the_container_log(odoo_container):
    from odoops.cli import app

    made: list[float] = []
    done = threading.Event()

    def requests() -> None:  # until the follow ends: whenever it attaches (a loaded machine), requests arrive
        while not done.is_set():
            _get(f"{odoo_container.url}/web/health")
            made.append(time.monotonic())
            done.wait(0.3)

    poller = threading.Thread(target=requests)
    poller.start()
    started = time.monotonic()
    try:
        result = CliRunner(env={"ODOOPS_INVENTORY": str(odoo_container.inventory)}).invoke(
            app, ["logs", f"env:{ENV}", "--follow", "--duration", "5", "--json"])
    finally:
        done.set()
        poller.join()
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # New requests are seen; the log written before the follow started (the fixture's own health polls, the
    # server's startup lines) is not read again.
    assert 1 <= summary["requests"]["total"] <= len(made), (summary["requests"], len(made))
    assert summary["alerts"] == [] and 4.5 < elapsed < 30


@pytest.mark.usefixtures("prefect_harness")
def test_health_reports_the_containers_resources(odoo_container):
    from flows.health import health_flow

    report = health_flow(ENV, inventory=str(odoo_container.inventory))
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["http.health"]["status"] == "ok" and checks["http.health"]["value"] == "pass"
    resources = checks["container.resources"]
    assert resources["status"] == "ok", resources
    figures = resources["items"][0]
    assert 20 * 2**20 < figures["memory_used"] < figures["memory_limit"] and 0 < figures["memory"] < 1
    assert 0 <= figures["cpu"] < 1 and figures["cpu_limit"] >= 1
    assert checks["filestore.size"]["status"] == "ok" and checks["filestore.size"]["value"] > 0


def test_run_a_one_off_command_beside_odoo(platform, odoo_container, docker_engine):
    result = platform.run_odoo(["--version"])
    assert result.returncode == 0 and b"Odoo Server 17.0" in result.stdout, result
    # Same volumes and user as the server: the filestore is there, readable.
    listing = platform.run(["ls", f"/var/lib/odoo/filestore/{odoo_container.dbname}"])
    assert len(listing.stdout.split()) > 10

    failed = platform.run(["odoo-bin", "nosuch"], check=False)
    assert failed.returncode == 1 and b"Unknown command 'nosuch'" in failed.stderr
    with pytest.raises(ToolFailed, match=r"ls exited 2 in a one-off container beside \S+: .*No such file or directory"):
        platform.run(["ls", "/var/lib/odoo/no-such-folder"])

    started = time.monotonic()
    with pytest.raises(TimedOut, match="sleep did not finish within 2 s"):
        platform.run(["sleep", "60"], timeout=2)
    assert time.monotonic() - started < 20

    pids: list[int] = []

    def kill(pid: int) -> None:  # a one-off killed from outside (OOM killer, an operator's kill -9)
        pids.append(pid)
        os.kill(pid, signal.SIGKILL)

    with pytest.raises(ToolFailed, match="sleep killed in a one-off container"):
        platform.run(["sleep", "60"], on_start=kill)
    assert pids and pids[0] > 1
    left = docker_engine.client.containers.list(all=True, filters={"label": f"odoops.one-off={odoo_container.name}"})
    assert left == []


def test_compose_labels_find_the_container(odoo_container, docker_engine, tmp_path):
    project, service = odoo_container.compose
    inventory = write_inventory(tmp_path / "environments.yaml", {
        "composed": {"stage": "development", "platform": "docker",
                     "docker": {"engine": docker_engine.docker_host, "compose": {"project": project, "service": service}},
                     "database": {"dsn": "postgresql://odoo@127.0.0.1/" + odoo_container.dbname}},
    })
    with platform_for(load_inventory(inventory).environment("composed")) as composed:
        assert isinstance(composed, DockerPlatform)
        assert composed.container.name == odoo_container.name
        assert composed.filestore_exists()


def test_an_unreachable_engine_and_a_missing_container_are_one_line(odoo_container, docker_engine, tmp_path):
    from odoops.cli import app

    missing = tmp_path / "no-such-dir" / "docker.sock"
    inventory = write_inventory(tmp_path / "environments.yaml", {
        "gone": {"stage": "development", "platform": "docker",
                 "docker": {"engine": f"unix://{missing}", "container": odoo_container.name},
                 "database": {"dsn": "postgresql://odoo@127.0.0.1/" + odoo_container.dbname}},
        "typo": {"stage": "development", "platform": "docker",
                 "docker": {"engine": docker_engine.docker_host, "container": "odoops-no-such-container"},
                 "database": {"dsn": "postgresql://odoo@127.0.0.1/" + odoo_container.dbname}},
    })
    inv = load_inventory(inventory)
    with platform_for(inv.environment("gone")) as gone, pytest.raises(ConnectionFailed) as info:
        gone.read_odoo_config()
    message = str(info.value)
    assert message.startswith(f"cannot reach the Docker engine at unix://{missing}")
    assert message.endswith("start it or fix docker.engine") and "Traceback" not in message
    with platform_for(inv.environment("typo")) as typo, pytest.raises(ConfigError) as info:
        typo.list_filestore().__next__()
    assert str(info.value) == (f"no container named odoops-no-such-container on {docker_engine.docker_host}: "
                               "check docker.container / docker.compose")
    result = CliRunner().invoke(app, ["logs", "env:gone", "--inventory", str(inventory)])
    assert result.exit_code == 2 and "cannot reach the Docker engine" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_stop_and_start_the_container_and_read_it_while_stopped(platform, odoo_container):
    """Last of the module: the server is down for a few seconds."""
    running = set(platform.list_filestore())
    assert platform.stop()
    odoo_container.container.reload()
    assert odoo_container.container.status == "exited"
    # The archive API reads a stopped container: a backup of a stopped environment still gets its files, and
    # finds the same sizes and mtimes as when it ran (no file is read again for nothing).
    assert "[options]" in platform.read_odoo_config()
    assert platform.filestore_exists() and set(platform.list_filestore()) == running
    with pytest.raises(ToolFailed, match="not running"):
        platform.container_stats()
    assert platform.start()
    _wait_healthy(odoo_container.container, odoo_container.url)


def test_stop_leftovers_removes_the_one_offs_a_killed_run_left(odoo_container, docker_engine):
    """A run killed mid-update leaves its one-off container running; the next run finds it by its label (the
    journal's pid is of no use on a remote engine) and removes it before putting anything back."""
    env = load_inventory(odoo_container.inventory).environment(ENV)
    outcome: dict = {}

    def killed_run() -> None:
        with platform_for(env) as p:
            try:
                outcome["result"] = p.run(["sleep", "120"], check=False)
            except Exception as exc:  # noqa: BLE001 - its container removed under it
                outcome["error"] = exc

    worker = threading.Thread(target=killed_run, daemon=True)
    worker.start()
    label = {"label": f"odoops.one-off={odoo_container.name}"}
    deadline = time.monotonic() + 60
    while not docker_engine.client.containers.list(filters=label):
        assert time.monotonic() < deadline, "the one-off never started"
        time.sleep(0.1)
    with platform_for(env) as next_run:
        next_run.stop_leftovers({"pid": 1, "host": "elsewhere"})
    worker.join(timeout=60)
    assert not worker.is_alive() and outcome
    assert docker_engine.client.containers.list(all=True, filters=label) == []
    odoo_container.container.reload()
    assert odoo_container.container.status == "running"
