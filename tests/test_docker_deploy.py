"""Deploy, automatic rollback and snapshots on ``platform: docker``, on the real engine and the real Odoo 17 image:
a release is an image built from the addons repository at a commit (its Dockerfile: FROM the Odoo image, COPY the
module); deploying it replaces the Odoo container by one from that image with the same name, volumes and network;
any failure puts back the exact previous state — database, filestore (snapshotted by hard links inside the data
volume), the previous image serving — by itself.

One environment serves the whole module (its setup costs an image build and a module install); every test leaves
it on the first release, as it found it (a failed deploy rolls back by itself; the good one is rolled back with
``rollback_flow``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import psycopg
import pytest

from odoops.errors import RefusedError
from tasks import snapshot
from tasks.postgres import ConnInfo
from tests.docker_site import create_odoo_container, remove_odoo_container, volume_files, wait_healthy
from tests.helpers import drop_database_and_copies, table_checksums, write_inventory
from tests.odoo_site import ADMIN, column_exists, healthy, module_version
from tests.services_odoo import xmlrpc_authenticate
from tests.test_deploy import AddonsRepo

ENV = "acme-docker"
STANDIN = Path(__file__).parent / "standin"
EXTRA_ADDONS = "/mnt/extra-addons"
PASSWORD_ENV = "ACME_DOCKER_ADMIN_PASSWORD"


def dockerfile(odoo_tag: str, broken: bool = False) -> str:
    """The repository's Dockerfile: the Odoo image plus the custom module (a copy of a folder that is not there
    when ``broken``)."""
    source = "no_such_folder" if broken else "acme_custom"
    return f"FROM {odoo_tag}\nCOPY {source} {EXTRA_ADDONS}/acme_custom\n"


class DockerSite:
    """The environment: its container, repository, inventory, and what the tests compare."""

    def __init__(self, engine, odoo, repo: AddonsRepo, inventory: Path, cluster, first_image, odoo_tag: str) -> None:
        self.engine, self.odoo, self.repo, self.inventory, self.cluster = engine, odoo, repo, inventory, cluster
        self.first_image, self.odoo_tag = first_image, odoo_tag

    @property
    def container(self):
        return self.engine.client.containers.get(self.odoo.name)

    def state(self) -> tuple[dict[str, str], dict[str, str]]:
        """Every table's rows and every filestore file's sha1, the files read through the engine."""
        files = volume_files(self.container, self.odoo.filestore)
        return (table_checksums(self.cluster, self.odoo.dbname),
                {rel: hashlib.sha1(data).hexdigest() for rel, data in files.items()})  # noqa: S324

    def serves(self) -> bool:
        return healthy(self.odoo.url) and bool(xmlrpc_authenticate(self.odoo.url, self.odoo.dbname, *ADMIN))

    def one_offs(self) -> list:
        return self.engine.client.containers.list(all=True, filters={"label": f"odoops.one-off={self.odoo.name}"})

    def leftovers(self) -> list[str]:
        """Containers set aside by a replacement, and folders beside the filestore that no kept snapshot owns."""
        aside = [c.name for c in self.engine.client.containers.list(all=True) if "-odoops-old-" in c.name]
        kept = {Path(s.filestore).name for s in snapshot.snapshots(ConnInfo.from_dsn(self.cluster.dsn()), ENV)
                if s.filestore}
        folders = [n for n in volume_files_names(self.container, f"{self.odoo.data_dir}/filestore")
                   if ".odoops-" in n and n not in kept]
        return aside + sorted(folders)

    def records(self) -> list[dict]:
        from typer.testing import CliRunner

        from odoops.cli import app

        listed = CliRunner().invoke(app, ["releases", ENV, "-i", str(self.inventory), "--json"])
        assert listed.exit_code == 0, listed.output
        return json.loads(listed.stdout)


def volume_files_names(container, folder: str) -> set[str]:
    """The names directly below ``folder`` in the container (an archive's headers, read through the engine)."""
    import io
    import tarfile

    stream, _ = container.get_archive(folder)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        return {m.name.split("/")[1] for m in tar.getmembers() if m.name.count("/") >= 1}


@pytest.fixture(scope="module")
def site(docker_engine, odoo_image, pg_cluster, odoo_db_role, sample_template, tmp_path_factory):
    """The Odoo container on the repository's first commit, acme_custom installed by a one-off, serving."""
    from odoops.inventory import load_inventory
    from odoops.platforms import platform_for

    folder = tmp_path_factory.mktemp("docker-deploy")
    mp = pytest.MonkeyPatch()
    mp.setenv("ODOOPS_CACHE", str(folder / "cache"))
    mp.setenv(PASSWORD_ENV, ADMIN[1])
    repo = AddonsRepo(folder)
    (repo.work / "Dockerfile").write_text(dockerfile(odoo_image.tag))
    repo.first = repo.commit("17.0.1.0.0", "acme_custom 1.0")
    client = docker_engine.client
    first_tag = f"odoops-test-first-{folder.name.lower()}:{repo.first[:12]}"
    first_image, _ = client.images.build(path=str(repo.work), tag=first_tag, rm=True,
                                         labels=docker_engine.label())
    odoo = create_odoo_container(docker_engine, odoo_image, pg_cluster, sample_template, folder, image=first_image.id,
                                 addons_path=f"{odoo_image.addons_path},{EXTRA_ADDONS}", config_volume=True)
    inventory = write_inventory(folder / "environments.yaml", {
        ENV: {"stage": "staging", "platform": "docker",
              "docker": {"engine": docker_engine.docker_host, "container": odoo.name},
              "database": {"dsn": pg_cluster.dsn(odoo.dbname)}, "url": odoo.url,
              "git": {"repository": str(repo.remote)},
              "health": {"login": ADMIN[0], "login_password_env": PASSWORD_ENV},
              "backup": {"storage": "local"}},
    })
    odoo.inventory = inventory
    with platform_for(load_inventory(inventory).environment(ENV)) as platform:  # no odoo_bin: the entrypoint
        platform.run_odoo(["-d", odoo.dbname, "-i", "acme_custom", "--stop-after-init", "--no-http"])
    odoo.container.start()
    wait_healthy(odoo.container, odoo.url)
    yield DockerSite(docker_engine, odoo, repo, inventory, pg_cluster, first_image, odoo_image.tag)
    remove_odoo_container(docker_engine, odoo)
    drop_database_and_copies(pg_cluster, odoo.dbname)
    # the images this module built: the releases and the stand-in are tagged with the container's name
    built = [image.id for image in client.images.list()
             if any(odoo.name in t or t.endswith(first_tag) for t in image.tags)]
    for image_id in built:
        client.images.remove(image_id, force=True)
    mp.undo()


def assert_on_first_release(site: DockerSite) -> None:
    container = site.container
    assert container.attrs["Image"] == site.first_image.id and container.status == "running"
    assert not column_exists(site.cluster, site.odoo.dbname, "acme_tier")
    assert module_version(site.cluster, site.odoo.dbname) == "17.0.1.0.0"
    assert site.serves()


@pytest.mark.usefixtures("prefect_harness")
def test_a_good_release_is_built_and_served_by_a_new_container_and_rolled_back(site):
    from flows.deploy import deploy_flow
    from flows.rollback import rollback_flow

    before_container = site.container
    before = site.state()
    second = site.repo.commit("17.0.1.1.0", "acme_custom: tiers", tier=True)
    result = deploy_flow(ENV, ref="main", inventory=str(site.inventory))
    assert result["outcome"] == "success" and result["commit"] == second and result["modules"] == ["acme_custom"]
    assert result["checks"]["login"].startswith("ok: admin logged in")
    tag = result["plan"]["release"]["tag"]
    assert tag == f"odoops-release/{site.odoo.name}:{second[:12]}"
    image = site.engine.client.images.get(tag)
    assert image.labels.get("odoops.release.commit") == second

    # a new container, from the release's image, with the old one's name, volumes, network and labels
    now = site.container
    assert now.id != before_container.id and now.attrs["Image"] == image.id == result["plan"]["release"]["image"]
    mounts = lambda c: sorted((m["Name"], m["Destination"], m["RW"]) for m in c.attrs["Mounts"])  # noqa: E731
    assert mounts(now) == mounts(before_container)
    assert now.attrs["HostConfig"]["NetworkMode"] == "host"
    assert now.labels["com.docker.compose.project"] == site.odoo.compose[0]
    assert column_exists(site.cluster, site.odoo.dbname, "acme_tier")
    assert module_version(site.cluster, site.odoo.dbname) == "17.0.1.1.0" and site.serves()
    assert site.state()[1] == before[1], "the filestore volume's files are unchanged"
    [progress, done] = site.records()
    assert progress["outcome"] == "in-progress" and done["outcome"] == "success"
    assert done["release"]["commit"] == second and done["release"]["image"] == image.id
    assert done["previous"]["image"] == site.first_image.id and done["snapshot"] == result["snapshot"]
    assert site.one_offs() == [] and site.leftovers() == []
    [kept] = snapshot.snapshots(ConnInfo.from_dsn(site.cluster.dsn()), ENV)
    assert kept.database == result["snapshot"] and kept.files == len(before[1]), "every file hard-linked"

    # going back: the kept snapshot replaces the data, the previous image serves again
    back = rollback_flow(ENV, restore_data=True, inventory=str(site.inventory))
    assert back["checks"]["problems"] == [], back
    assert_on_first_release(site)
    changed = sorted(t for t in before[0] if site.state()[0].get(t) != before[0][t])
    assert changed in ([], ["public.res_users_log"]) and site.state()[1] == before[1]
    assert site.records()[-1]["action"] == "rollback" and site.one_offs() == []


@pytest.mark.parametrize("broken", ["bad_view", "hook_raises", "hangs"])
@pytest.mark.usefixtures("prefect_harness")
def test_a_broken_release_is_rolled_back_to_the_exact_previous_state(site, broken):
    from flows.deploy import DeployFailed, deploy_flow

    server = ConnInfo.from_dsn(site.cluster.dsn())
    before, snapshots_before, records_before = site.state(), snapshot.snapshots(server, ENV), len(site.records())
    bad = site.repo.commit("17.0.1.1.0", f"acme_custom broken: {broken}", tier=True, **{broken: True})
    with pytest.raises(DeployFailed) as info:
        deploy_flow(ENV, ref="main", timeout_seconds=25 if broken == "hangs" else 600, inventory=str(site.inventory))
    message = str(info.value)
    assert "rolled back to the exact previous state, and serves again" in message, message
    assert {"bad_view": "exited 255", "hook_raises": "acme hook broken",
            "hangs": "did not finish within its time limit"}[broken] in message, message
    assert "\n" not in message
    after = site.state()
    changed = sorted(t for t in set(before[0]) | set(after[0]) if before[0].get(t) != after[0].get(t))
    # the verification after the rollback logs in for real, and Odoo logs that login: the only write since
    assert changed in ([], ["public.res_users_log"]), changed
    assert after[1] == before[1], "every filestore file as before the deploy"
    assert_on_first_release(site)
    assert snapshot.snapshots(server, ENV) == snapshots_before, "the snapshot went back in"
    assert site.one_offs() == [] and site.leftovers() == []
    last = site.records()[-1]
    assert len(site.records()) == records_before + 2
    assert last["outcome"] == "rolled back" and last["release"]["commit"] == bad


@pytest.mark.usefixtures("prefect_harness")
def test_a_release_that_does_not_build_is_one_line_and_touches_nothing(site):
    from flows.deploy import deploy_flow
    from odoops.errors import ToolFailed

    before, container_id, records = site.state(), site.container.id, site.records()
    (site.repo.work / "Dockerfile").write_text(dockerfile(site.odoo_tag, broken=True))
    commit = site.repo.commit("17.0.1.1.0", "Dockerfile copies a folder that is not there", tier=True)
    try:
        with pytest.raises(ToolFailed) as info:
            deploy_flow(ENV, ref="main", inventory=str(site.inventory))
    finally:
        (site.repo.work / "Dockerfile").write_text(dockerfile(site.odoo_tag))
        site.repo.commit("17.0.1.0.0", "acme_custom 1.0 again")
    message = str(info.value)
    assert message.startswith(f"building image odoops-release/{site.odoo.name}:{commit[:12]} from Dockerfile failed")
    assert "no_such_folder" in message and "\n" not in message, message
    assert site.container.id == container_id and site.state() == before and site.records() == records
    assert_on_first_release(site)


@pytest.mark.usefixtures("prefect_harness")
def test_an_image_that_never_serves_is_rolled_back_at_the_health_time_limit(site, tmp_path):
    import yaml

    from flows.deploy import DeployFailed, deploy_flow

    data = yaml.safe_load(site.inventory.read_text())  # the default (120 s) is for real servers
    data["environments"][ENV]["health"]["within_seconds"] = 20
    inventory = tmp_path / "within-20s.yaml"
    inventory.write_text(yaml.safe_dump(data))
    tag = f"odoops-test-standin-{site.odoo.name}:crashloop"
    site.engine.client.images.build(path=str(STANDIN), dockerfile="crashloop.Dockerfile", tag=tag, rm=True,
                                    buildargs={"ODOO_IMAGE": site.first_image.id})
    container_before = site.container
    with pytest.raises(DeployFailed) as info:
        deploy_flow(ENV, image=tag, update="none", inventory=str(inventory))
    message = str(info.value)
    assert "Odoo does not answer /web/health within 20 s" in message, message
    assert "rolled back to the exact previous state, and serves again" in message, message
    assert site.container.id != container_before.id, "the previous image serves again in a new container"
    assert_on_first_release(site)
    assert site.one_offs() == [] and site.leftovers() == []
    last = site.records()[-1]
    assert last["outcome"] == "rolled back" and last["release"]["tag"] == tag


@pytest.mark.usefixtures("prefect_harness")
def test_an_image_the_engine_does_not_have_is_refused(site):
    from flows.deploy import deploy_flow

    container_id, records = site.container.id, site.records()
    with pytest.raises(RefusedError) as info:
        deploy_flow(ENV, image="no-such-image:1", update="none", inventory=str(site.inventory))
    assert str(info.value) == (f"image no-such-image:1 not found on {site.engine.docker_host}: build or load it "
                               "first")
    assert site.container.id == container_id and site.records() == records
    assert_on_first_release(site)


def test_a_replacement_keeps_every_setting_and_volume_and_undoes_itself_when_it_cannot_be_created(
        docker_engine, odoo_image, tmp_path):
    """The container replacement on its own (tasks.containers.replace_container): a named volume, an anonymous one
    (re-attached by its name, its data kept), a bind mount, a user network with an alias, a published port, the
    restart policy, a memory limit, env, labels; a failure to create the new one gives the old its name back."""
    from odoops.errors import ConfigError
    from tasks import containers

    client = docker_engine.client
    run = tmp_path.name[-8:].lower().replace("_", "-")
    volume = client.volumes.create(name=f"odoops-test-named-{run}", labels=docker_engine.label())
    network = client.networks.create(f"odoops-test-net-{run}", labels=docker_engine.label())
    (tmp_path / "conf").mkdir()
    old = client.containers.create(
        odoo_image.tag, name=f"odoops-test-replace-{run}", command=["--version"], network=network.name,
        volumes={volume.name: {"bind": "/srv/named", "mode": "rw"}, str(tmp_path / "conf"): {"bind": "/etc/acme",
                                                                                             "mode": "ro"}},
        environment={"ACME": "1"}, labels=docker_engine.label(**{"com.docker.compose.service": "odoo"}),
        restart_policy={"Name": "on-failure", "MaximumRetryCount": 3}, mem_limit="1g", ports={"8069/tcp": None})
    anonymous = next(m["Name"] for m in old.attrs["Mounts"] if m["Destination"] == odoo_image.data_dir)
    engine = docker_engine.docker_host

    with pytest.raises(ConfigError, match="image not found"):
        containers.replace_container(client, old, "sha256:" + "0" * 64, engine)
    assert client.containers.get(old.name).id == old.id, "the old container has its name back"

    standin = f"odoops-test-standin-{run}:replace"
    client.images.build(path=str(STANDIN), dockerfile="crashloop.Dockerfile", tag=standin, rm=True,
                        buildargs={"ODOO_IMAGE": odoo_image.tag})
    try:
        new = containers.replace_container(client, old, client.images.get(standin).id, engine)
        assert new.name == old.name and new.id != old.id and client.containers.list(all=True, filters={"id": old.id}) \
            == []
        mounts = lambda c: sorted((m["Name"] if m["Type"] == "volume" else m["Source"], m["Destination"], m["RW"])  # noqa: E731
                                  for m in c.attrs["Mounts"])
        assert mounts(new) == mounts(old) and anonymous in {m.get("Name") for m in new.attrs["Mounts"]}
        assert client.volumes.get(anonymous), "the anonymous volume was re-attached, not removed"
        assert list(new.attrs["NetworkSettings"]["Networks"]) == [network.name]
        host = new.attrs["HostConfig"]
        assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3} and host["Memory"] == 2**30
        assert host["PortBindings"] == old.attrs["HostConfig"]["PortBindings"]
        assert "ACME=1" in new.attrs["Config"]["Env"] and new.labels["com.docker.compose.service"] == "odoo"
        assert new.attrs["Config"]["Cmd"] == ["--version"], "the container's own command is kept"
        assert new.attrs["Config"]["Entrypoint"] == ["sh", "-c", "echo 'odoo-bin: stand-in release crashing at "
                                                     "start' >&2; exit 1"], "the new image's entrypoint applies"
    finally:
        client.containers.get(old.name).remove(force=True)
        client.images.remove(standin, force=True)
        client.volumes.get(anonymous).remove(force=True)


def test_a_killed_deploy_is_found_and_resume_rollback_puts_the_state_back(site, tmp_path):
    """SIGKILL of odoops (the CLI, as the operator runs it) while the update's one-off container runs: the
    next deploy refuses and names --resume-rollback, which removes the orphaned one-off, puts the snapshot
    back in the database and the volume, and starts the previous release's container again."""
    import os
    import subprocess
    import sys
    import time

    from tests.helpers import kill_group

    server = ConnInfo.from_dsn(site.cluster.dsn())
    before, records_before = site.state(), len(site.records())
    site.repo.commit("17.0.1.1.0", "acme_custom: hangs", tier=True, hangs=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    cli, root = [sys.executable, "-m", "odoops"], Path(__file__).resolve().parent.parent
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen([*cli, "deploy", ENV, "--ref", "main", "-i", str(site.inventory)], cwd=root, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not (site.one_offs() and any(s.state == "in-progress" for s in snapshot.snapshots(server, ENV))):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the update never started"
            time.sleep(0.2)
    finally:
        kill_group(proc)
    assert site.one_offs(), "the one-off update outlives odoops"
    again = subprocess.run([*cli, "deploy", ENV, "--ref", "main", "-i", str(site.inventory)], cwd=root, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and f"odoops deploy {ENV} --resume-rollback" in " ".join(again.stderr.split()), \
        again.stderr
    back = subprocess.run([*cli, "deploy", ENV, "--resume-rollback", "-i", str(site.inventory)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert back.returncode == 0 and "is back" in back.stdout, back.stdout + back.stderr
    wait_healthy(site.container, site.odoo.url)
    after = site.state()
    changed = sorted(t for t in set(before[0]) | set(after[0]) if before[0].get(t) != after[0].get(t))
    assert changed in ([], ["public.res_users_log"]) and after[1] == before[1], changed
    assert_on_first_release(site)
    assert site.one_offs() == [] and site.leftovers() == []
    assert not any(s.state == "in-progress" for s in snapshot.snapshots(server, ENV))
    assert [r["outcome"] for r in site.records()[records_before:]] == ["in-progress", "rolled back (resumed)"]
    site.repo.commit("17.0.1.0.0", "acme_custom 1.0 again")


# ---------------------------------------------------------------- upgrades on docker (flows/upgrade.py)


def claims_18(site: DockerSite, base: str, ported: bool) -> str:
    """The stand-in "Odoo 18.0" image (tests/standin/claims18.Dockerfile) built on ``base``."""
    tag = f"odoops-test-standin-{site.odoo.name}:claims18-{'ported' if ported else 'plain'}-{base[-6:]}"
    site.engine.client.images.build(path=str(STANDIN), dockerfile="claims18.Dockerfile", tag=tag, rm=True,
                                    buildargs={"BASE": base, **({"PORTED": "1"} if ported else {})})
    return tag


@pytest.mark.usefixtures("prefect_harness")
def test_a_major_upgrade_is_checked_before_anything_is_touched(site):
    """--to SERIES: the target image must exist, report SERIES and hold every installed module at SERIES; each
    refusal is one line and nothing (container, database, volume, release history) is touched."""
    from flows.upgrade import upgrade_flow

    server = ConnInfo.from_dsn(site.cluster.dsn())
    before, container_id, records = site.state(), site.container.id, site.records()
    snapshots_before = snapshot.snapshots(server, ENV)
    refusals = {
        "no-such-image:18.0": "image no-such-image:18.0 not found on",
        site.odoo_tag: "the target reports Odoo 17.0, not 18.0",  # the plain 17.0 image
        claims_18(site, site.odoo_tag, ported=False): "installed module acme_custom not in the target's addons path",
        claims_18(site, site.first_image.id, ported=False): "module acme_custom is version 17.0.1.0.0 in the target, "
                                                            "not a 18.0 version",
    }
    for image, refusal in refusals.items():
        with pytest.raises(RefusedError) as info:
            upgrade_flow(ENV, to_series="18.0", image=image, inventory=str(site.inventory))
        assert refusal in str(info.value), str(info.value)
    assert site.state() == before and site.container.id == container_id and site.records() == records
    assert site.one_offs() == [] and snapshot.snapshots(server, ENV) == snapshots_before, "no snapshot taken"
    assert_on_first_release(site)


@pytest.mark.usefixtures("prefect_harness")
def test_a_major_upgrade_that_does_not_reach_the_target_is_rolled_back(site, tmp_path):
    """A target that passes the preflight but whose upgrade command leaves the database at 17.0 (here a command
    that does nothing): the new image serves a 17.0 database, verification fails, the exact previous state and
    the previous image come back by themselves."""
    import yaml

    from flows.upgrade import UpgradeFailed, upgrade_flow

    data = yaml.safe_load(site.inventory.read_text())
    data["environments"][ENV]["upgrade_commands"] = {"noop": {"kind": "script", "argv": ["true"], "timeout": 60}}
    inventory = tmp_path / "noop.yaml"
    inventory.write_text(yaml.safe_dump(data))
    target = claims_18(site, site.first_image.id, ported=True)
    before, container_before = site.state(), site.container
    with pytest.raises(UpgradeFailed) as info:
        upgrade_flow(ENV, to_series="18.0", image=target, command="noop", inventory=str(inventory))
    message = str(info.value)
    assert "base module is at 17.0 after the upgrade, not 18.0" in message, message
    assert "rolled back to the exact previous state, and serves again" in message, message
    assert site.container.id != container_before.id, "the previous image serves again in a new container"
    after = site.state()
    changed = sorted(t for t in set(before[0]) | set(after[0]) if before[0].get(t) != after[0].get(t))
    # the verification after the rollback logs in for real, and Odoo logs that login: the only write since
    assert changed in ([], ["public.res_users_log"]) and after[1] == before[1], changed
    assert_on_first_release(site)
    assert site.one_offs() == [] and site.leftovers() == []
    last = site.records()[-1]
    assert last["action"] == "upgrade" and last["outcome"] == "rolled back" and last["release"]["tag"] == target


@pytest.mark.usefixtures("prefect_harness")
def test_a_rehearsal_in_a_container_reports_and_never_touches_the_environment(site, tmp_path):
    """The rehearsal restores a neutralized copy beside the environment (database, and filestore in the data
    volume), runs the update in a one-off of the new image, reports Odoo's real error, and drops the copy."""
    from flows.upgrade_rehearsal import rehearse_upgrade_flow
    from tests.odoo_site import write_addon

    write_addon(tmp_path / "v2", "17.0.1.1.0", tier=True, bad_view=True)
    (tmp_path / "v2" / "Dockerfile").write_text(f"FROM {site.first_image.id}\nCOPY acme_custom {EXTRA_ADDONS}/acme_custom\n")
    tag = f"odoops-test-standin-{site.odoo.name}:bad-view"
    site.engine.client.images.build(path=str(tmp_path / "v2"), tag=tag, rm=True)
    before, container_id = site.state(), site.container.id
    result = rehearse_upgrade_flow(ENV, modules=["acme_custom"], image=tag, inventory=str(site.inventory))
    assert result["verdict"].startswith("would fail: odoo-bin exited"), result["verdict"]
    assert any("ParseError" in e["signature"] for e in result["errors"]), result["errors"]
    assert result["modules_after"]["acme_custom"]["version"] == "17.0.1.0.0 → 17.0.1.0.0"
    assert set(result["phases"]) == {"backup", "copy", "update"}
    assert site.state() == before and site.container.id == container_id
    assert_on_first_release(site)
    with psycopg.connect(site.cluster.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'odoops_scratch_rehearsal%'"
                            ).fetchone()[0] == 0
    assert not [n for n in volume_files_names(site.container, f"{site.odoo.data_dir}/filestore")
                if n.startswith("odoops_scratch")]
    assert site.one_offs() == []
