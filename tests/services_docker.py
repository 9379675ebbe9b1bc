"""pytest plugin: a real Docker-API engine and a real Odoo 17.0 image (TESTING.md, "Docker API" and "Odoo in a
container").

``docker_engine`` (session) starts Podman's Docker-compatible service, ``podman system service --time=0
unix://DIR/podman.sock``, with its own containers.conf (runc, cgroupfs, a file events logger, the k8s-file log
driver, ulimits this machine allows) and TMPDIR in a temp folder, and the storage.conf that
``scripts/odoo-image.sh`` keeps in the cache: every session sees the images built there (the Odoo image is built
at setup time, not in a test). It yields a :class:`DockerEngine`: ``docker_host`` (the ``unix://`` URL, what a
``docker`` platform's inventory entry would name), a docker-py ``client``, and ``labels`` to put on whatever a
test creates (``engine.label(...)``); at teardown every container, volume and network carrying the session's label
is removed and the service stopped. The labels also name the run's temp root (``odoops.test.tmpdir``), so a
clean-up after a killed run can find what it left in the shared storage.

``odoo_image`` (session) is the tag ``scripts/odoo-image.sh`` prints (a few seconds once cached; it builds the
image on a machine where setup has not run). The image: venv /opt/odoo-venv, tree /opt/odoo, ``odoo-bin`` on PATH
and as ENTRYPOINT, config /etc/odoo/odoo.conf (ODOO_RC), data_dir VOLUME /var/lib/odoo, user ``odoo``.
No registry is reachable here: ``images.pull`` fails, build images locally.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "odoo-image.sh"
SESSION_LABEL = "odoops.test.session"  # a random id per session: its teardown removes what carries it
TMPDIR_LABEL = "odoops.test.tmpdir"  # the temp root of the run (.ci/run's TMPDIR): what a killed run left behind
START_TIMEOUT = 90.0  # the service answers in about 1 s on an idle machine; 2 cores are shared here


@dataclass
class DockerEngine:
    """A running Docker-API engine: reach it at ``docker_host`` (``DOCKER_HOST``) or through ``client``."""

    docker_host: str
    client: object  # docker.DockerClient (imported lazily: the plugin loads in every session)
    workdir: Path
    labels: dict[str, str] = field(default_factory=dict)

    def label(self, **extra: str) -> dict[str, str]:
        """The session's labels plus ``extra``: put them on every container, volume and network created."""
        return {**self.labels, **extra}


@dataclass(frozen=True)
class OdooImage:
    """The locally built Odoo 17.0 image and the Podman storage it lives in."""

    tag: str
    storage_conf: Path
    odoo_bin: str = "odoo-bin"  # on PATH in the image (/opt/odoo/odoo-bin run by /opt/odoo-venv's Python)
    data_dir: str = "/var/lib/odoo"
    config: str = "/etc/odoo/odoo.conf"
    addons_path: str = "/opt/odoo/addons,/opt/odoo/odoo/addons"


def _script_values(*args: str, timeout: float) -> dict[str, str]:
    """Run scripts/odoo-image.sh and read the KEY=VALUE words of its last stdout line."""
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/odoo-image.sh {' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stderr[-3000:]}")
    last = result.stdout.strip().splitlines()[-1]
    return dict(word.split("=", 1) for word in shlex.split(last))


def containers_conf() -> str:
    """The engine settings proven on these machines (TESTING.md)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = hard if hard != resource.RLIM_INFINITY else 1048576
    return "\n".join([
        "[containers]",
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]',
        'log_driver = "k8s-file"',
        "[engine]",
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',
        'runtime = "runc"',
        "exit_command_delay = 5",
        "",
    ])


def _remove_labelled(client, selector: str) -> None:
    from docker.errors import APIError, NotFound

    for container in client.containers.list(all=True, filters={"label": selector}):
        try:
            container.remove(force=True, v=True)
        except (NotFound, APIError):
            pass
    for volume in client.volumes.list(filters={"label": selector}):
        try:
            volume.remove(force=True)
        except (NotFound, APIError):
            pass
    for network in client.networks.list(filters={"label": selector}):
        try:
            network.remove()
        except (NotFound, APIError):
            pass


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """Podman's Docker-compatible service on a unix socket of its own, for the whole session."""
    with podman_service() as engine:
        yield engine


@contextmanager
def podman_service() -> Iterator[DockerEngine]:
    """Start the service, yield the engine, remove what carries its session label and stop it (tests, bench)."""
    import docker

    if not shutil.which("podman"):
        raise RuntimeError("podman is not installed: run scripts/setup.sh (apt-get install podman runc)")
    storage_conf = _script_values("--storage-conf", timeout=60)["CONTAINERS_STORAGE_CONF"]
    workdir = Path(tempfile.mkdtemp(prefix="odoops-podman-"))
    (workdir / "tmp").mkdir()
    conf = workdir / "containers.conf"
    conf.write_text(containers_conf())
    sock = workdir / "podman.sock"
    docker_host = f"unix://{sock}"
    env = {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": storage_conf,
           "TMPDIR": str(workdir / "tmp")}
    log = workdir / "podman.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["podman", "system", "service", "--time=0", docker_host], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    client = None
    session = uuid.uuid4().hex[:12]
    try:
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer yet"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"podman system service exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            if sock.exists():
                try:
                    candidate = docker.DockerClient(base_url=docker_host, timeout=120)
                    if candidate.ping():
                        client = candidate
                        break
                    candidate.close()
                except docker.errors.DockerException as exc:
                    last = str(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"podman system service did not answer on {docker_host} within "
                                   f"{START_TIMEOUT} s ({last}):\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield DockerEngine(docker_host=docker_host, client=client, workdir=workdir,
                           labels={SESSION_LABEL: session, TMPDIR_LABEL: tempfile.gettempdir()})
    finally:
        if client is not None:
            _remove_labelled(client, f"{SESSION_LABEL}={session}")
            client.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def odoo_image(docker_engine: DockerEngine) -> OdooImage:
    """The Odoo 17.0 image from scripts/odoo-image.sh (built at setup time; seconds when cached)."""
    return built_odoo_image(docker_engine)


def built_odoo_image(docker_engine: DockerEngine) -> OdooImage:
    values = _script_values(timeout=1800)
    image = OdooImage(tag=values["ODOO_IMAGE"], storage_conf=Path(values["CONTAINERS_STORAGE_CONF"]))
    docker_engine.client.images.get(image.tag)  # the engine sees it: same storage
    return image
