"""A real Odoo 17 in a container on the tests' engine (tests/services_docker.py), as an operator runs it: a named
volume at the data_dir holding the sample's filestore (owned by the image's ``odoo`` user), the config put in with
``put_archive``, ``network_mode="host"`` (the tests' PostgreSQL listens on 127.0.0.1 only) and its own HTTP port,
compose labels so it can also be found as a compose service. Shared by the docker platform and deploy tests;
everything created carries the session's labels, so the engine fixture removes it at teardown."""

from __future__ import annotations

import io
import json
import re
import secrets
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from odoops.sandbox import free_port
from tests.helpers import copy_sample
from tests.services_odoo import ODOO_DB_USER

HEALTH_TIMEOUT = 180.0  # about 2 s on an idle machine; 2 cores shared with other test runs


def tar_of(entries: list[tuple[str, bytes | None]], uid: int, gid: int) -> bytes:
    """An in-memory tar: (name, content) for files, (name, None) for folders, owned by uid:gid."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.mtime = uid, gid, int(time.time())
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o640
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def volume_files(container, folder: str) -> dict[str, bytes]:
    """The regular files below ``folder`` in the container, read straight from the engine (not through odoops)."""
    stream, _ = container.get_archive(folder)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def user_ids(container, user: str) -> tuple[int, int]:
    """uid and gid of ``user`` from the image's /etc/passwd (they differ between images)."""
    stream, _ = container.get_archive("/etc/passwd")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        passwd = tar.extractfile("passwd").read().decode()
    for line in passwd.splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no user {user} in the image's /etc/passwd")


def get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
        return resp.read()


def wait_healthy(container, url: str, timeout: float = HEALTH_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        container.reload()
        if container.status in ("exited", "dead"):
            raise AssertionError(f"the Odoo container {container.status}:\n{container.logs().decode()[-3000:]}")
        try:
            if json.loads(get(f"{url}/web/health", timeout=2)).get("status") == "pass":
                return
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise AssertionError(f"Odoo in its container not healthy within {timeout} s ({last}):\n"
                         f"{container.logs().decode()[-3000:]}")


@dataclass
class OdooContainer:
    container: object  # docker-py Container
    name: str
    dbname: str
    url: str
    admin_passwd: str
    compose: tuple[str, str]
    files: dict[str, bytes]  # what was put in the volume's filestore
    volume: object  # docker-py Volume
    data_dir: str
    volumes: list = field(default_factory=list)  # every volume created for it (data, config)
    inventory: Path | None = None

    @property
    def filestore(self) -> str:
        return f"{self.data_dir}/filestore/{self.dbname}"


def create_odoo_container(docker_engine, odoo_image, pg_cluster, sample_template, folder: Path, image: str | None = None,
                          addons_path: str | None = None, config_volume: bool = False,
                          db_host: str | None = None, extra_hosts: dict[str, str] | None = None) -> OdooContainer:
    """The sample database copied and served by an Odoo container created (not started) from ``image``.

    ``config_volume``: /etc/odoo is a volume of its own, as where the container is replaced by one from another
    image (a deploy) the config must live outside the container's own file system; else it is written in it."""
    client = docker_engine.client
    dbname, filestore = copy_sample(pg_cluster, sample_template, folder)
    run = uuid.uuid4().hex[:8]
    port = free_port()
    admin_passwd = secrets.token_hex(12)
    volume = client.volumes.create(name=f"odoops-test-data-{run}", labels=docker_engine.label())
    config = "[options]\n" + "".join(f"{k} = {v}\n" for k, v in {
        "admin_passwd": admin_passwd, "db_host": db_host or pg_cluster.host, "db_port": pg_cluster.port,
        "db_user": ODOO_DB_USER, "db_password": False, "data_dir": odoo_image.data_dir,
        "addons_path": addons_path or odoo_image.addons_path, "http_interface": "127.0.0.1", "http_port": port,
        "workers": 0, "max_cron_threads": 0, "list_db": False, "dbfilter": f"^{re.escape(dbname)}$",
        "log_level": "info",
    }.items())
    compose = (f"acme{run}", "odoo")
    name = f"odoops-test-odoo-{run}"
    volumes = {volume.name: {"bind": odoo_image.data_dir, "mode": "rw"}}
    created = [volume]
    if config_volume:
        created.append(client.volumes.create(name=f"odoops-test-config-{run}", labels=docker_engine.label()))
        volumes[created[-1].name] = {"bind": "/etc/odoo", "mode": "rw"}
    container = client.containers.create(
        image or odoo_image.tag, name=name, network_mode="host", volumes=volumes, extra_hosts=extra_hosts or None,
        labels=docker_engine.label(role="server", **{"com.docker.compose.project": compose[0],
                                                     "com.docker.compose.service": compose[1]}))
    uid, gid = user_ids(container, "odoo")
    assert container.put_archive("/etc/odoo", tar_of([("odoo.conf", config.encode())], uid, gid))
    files = {p.relative_to(filestore).as_posix(): p.read_bytes() for p in sorted(filestore.rglob("*")) if p.is_file()}
    folders = sorted({f"filestore/{dbname}/{parent.as_posix()}" for rel in files for parent in Path(rel).parents
                      if parent != Path(".")})
    entries = [("filestore", None), (f"filestore/{dbname}", None), *[(f, None) for f in folders],
               *[(f"filestore/{dbname}/{rel}", data) for rel, data in files.items()]]
    assert container.put_archive(odoo_image.data_dir, tar_of(entries, uid, gid))
    return OdooContainer(container, name, dbname, f"http://127.0.0.1:{port}", admin_passwd, compose, files, volume,
                         odoo_image.data_dir, created)


def remove_odoo_container(docker_engine, site: OdooContainer) -> None:
    """The container of that name (a deploy may have replaced the first one) and its volume."""
    from docker.errors import NotFound

    try:
        docker_engine.client.containers.get(site.name).remove(force=True, v=True)
    except NotFound:
        pass
    for volume in site.volumes:
        volume.remove(force=True)
