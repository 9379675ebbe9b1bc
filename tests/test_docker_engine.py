"""End to end on the real Docker-API engine (Podman's service) with the locally built Odoo 17.0 image: what the
`docker` platform will do to an environment, proven with docker-py before the platform exists.

Odoo runs with ``network_mode="host"`` (the tests' PostgreSQL listens on 127.0.0.1 only) on a port of its own, its
data_dir in a named volume, its config copied in with ``put_archive`` (works on a remote engine too, unlike a bind
mount); a one-off ``-u`` runs in a second container without published ports (TESTING.md's gotcha).
"""

from __future__ import annotations

import hashlib
import io
import re
import secrets
import tarfile
import uuid
from pathlib import Path

from odoops.sandbox import free_port
from tests.docker_site import tar_of, user_ids, wait_healthy
from tests.services_odoo import ODOO_DB_USER, xmlrpc_authenticate, xmlrpc_version


def _untar(stream) -> dict[str, bytes]:
    """The regular files of a get_archive stream, by path."""
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_odoo_image_serves_a_real_database_on_the_engine(docker_engine, odoo_image, pg_cluster, odoo_db_role,
                                                         odoo_db):
    client = docker_engine.client
    dbname, filestore = odoo_db
    port = free_port()
    run = uuid.uuid4().hex[:8]
    volume = client.volumes.create(name=f"odoops-test-data-{run}", labels=docker_engine.label())
    mounts = {volume.name: {"bind": odoo_image.data_dir, "mode": "rw"}}
    config = "[options]\n" + "".join(f"{k} = {v}\n" for k, v in {
        "admin_passwd": secrets.token_hex(12),
        "db_host": pg_cluster.host,
        "db_port": pg_cluster.port,
        "db_user": ODOO_DB_USER,
        "db_password": False,
        "data_dir": odoo_image.data_dir,
        "addons_path": odoo_image.addons_path,
        "http_interface": "127.0.0.1",
        "http_port": port,
        "workers": 0,
        "max_cron_threads": 0,
        "list_db": False,
        "dbfilter": f"^{re.escape(dbname)}$",
        "log_level": "info",
    }.items())

    server = client.containers.create(odoo_image.tag, name=f"odoops-test-odoo-{run}", network_mode="host",
                                      volumes=mounts, labels=docker_engine.label(role="server"))
    # The config and the filestore go in before the start, as a platform deploying to a remote engine would.
    uid, gid = user_ids(server, "odoo")
    assert uid != 0
    assert server.put_archive("/etc/odoo", tar_of([("odoo.conf", config.encode())], uid, gid))
    files = {p.relative_to(filestore).as_posix(): p.read_bytes() for p in sorted(filestore.rglob("*")) if p.is_file()}
    assert len(files) > 50
    # Every folder is an entry of its own, owned by odoo: Odoo adds files and checklist/ markers to them.
    folders = sorted({f"filestore/{dbname}/{parent.as_posix()}" for name in files for parent in Path(name).parents
                      if parent != Path(".")})
    entries = [("filestore", None), (f"filestore/{dbname}", None), *[(f, None) for f in folders],
               *[(f"filestore/{dbname}/{name}", data) for name, data in files.items()]]
    assert server.put_archive(odoo_image.data_dir, tar_of(entries, uid, gid))

    server.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(server, url)

    assert xmlrpc_version(url)["server_serie"] == "17.0"
    user_id = xmlrpc_authenticate(url, dbname, "admin", "admin")
    assert isinstance(user_id, int) and user_id > 0
    assert xmlrpc_authenticate(url, dbname, "admin", "wrong") is False

    # exec_run in the running container: the image's odoo-bin, run as the image's odoo user.
    code, out = server.exec_run(["odoo-bin", "--version"])
    assert code == 0 and b"Odoo Server 17.0" in out, out
    code, out = server.exec_run(["id", "-u"])
    assert code == 0 and int(out) == uid

    # A one-off module update in a second container on the same volume and database, no ports published.
    one_off = client.containers.run(
        odoo_image.tag,
        ["--db_host", pg_cluster.host, "--db_port", str(pg_cluster.port), "--db_user", ODOO_DB_USER,
         "--data-dir", odoo_image.data_dir, "-d", dbname, "-u", "contacts", "--stop-after-init", "--no-http",
         "--max-cron-threads", "0"],
        name=f"odoops-test-update-{run}", detach=True, network_mode="host", volumes=mounts,
        labels=docker_engine.label(role="one-off"))
    result = one_off.wait(timeout=300)
    update_log = one_off.logs().decode()
    assert result["StatusCode"] == 0, update_log[-3000:]
    assert "Modules loaded." in update_log and " ERROR " not in update_log, update_log[-3000:]
    one_off.remove()

    # The filestore in the volume, read back through the API: every file, each named by its SHA-1.
    stream, stat = server.get_archive(f"{odoo_image.data_dir}/filestore/{dbname}")
    assert stat["name"] == dbname
    back = {name.split("/", 1)[1]: data for name, data in _untar(stream).items()}
    assert set(back) >= set(files)
    assert all(back[name] == data for name, data in files.items())
    for name, data in back.items():
        if not name.startswith("checklist/"):  # checklist/ holds empty GC markers named after their file
            assert hashlib.sha1(data).hexdigest() == Path(name).name, name

    logs = server.logs().decode()
    assert "odoo: Odoo version 17.0" in logs
    assert re.search(rf"odoo\.service\.server: HTTP service \(werkzeug\) running on \S+:{port}\b", logs), logs[-3000:]
    assert "odoo.modules.loading: Modules loaded." in logs or "Registry loaded" in logs

    stats = server.stats(stream=False)
    assert stats["memory_stats"]["usage"] > 20 * 1024 * 1024, stats["memory_stats"]

    server.stop(timeout=30)
    server.reload()
    assert server.status == "exited"
    server.remove(v=True)
    volume.remove()
    assert not client.containers.list(all=True, filters={"name": run})
