"""Faults an operator meets: S3 failing mid-upload, a backup killed at any point, a full disk, two runs
at once. Each must lose nothing and never list a half-written backup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from odoops.errors import DiskFull, LockedError, StorageError
from odoops.inventory import load_inventory
from odoops.runtime import repository_for
from tests.faulty_proxy import FaultyProxy
from tests.helpers import grow, host_env, kill_when, parts_in_tmp, write_inventory

ROOT = Path(__file__).resolve().parent.parent


def s3_inventory(tmp_path, pg_cluster, odoo_db, endpoint, bucket) -> Path:
    dbname, filestore = odoo_db
    env = host_env(pg_cluster, dbname, filestore)
    env["backup"] = {"storage": "offsite"}
    return write_inventory(tmp_path / "inv.yaml", {"production": env}, storage={
        "local": {"type": "local", "path": str(tmp_path / "backups")},
        "offsite": {"type": "s3", "bucket": bucket, "prefix": "acme/", "endpoint_url": endpoint,
                    "region": "us-east-1", "multipart_mb": 5}})


def add_big_file(filestore: Path, size: int = 12 * 1024 * 1024) -> None:
    (filestore / "zz").mkdir(exist_ok=True)
    (filestore / "zz" / ("zz" * 20)).write_bytes(os.urandom(size))


@pytest.mark.usefixtures("prefect_harness")
def test_s3_backup_verify_drill_and_export(tmp_path, pg_cluster, odoo_db, s3_bucket):
    from flows.backup import backup_flow
    from flows.verify import drill_flow, verify_flow

    endpoint, bucket = s3_bucket
    add_big_file(odoo_db[1])
    inv = s3_inventory(tmp_path, pg_cluster, odoo_db, endpoint, bucket)
    backup_id = backup_flow("production", inventory=str(inv))["backup_id"]
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"acme/backups/{backup_id}/manifest.json" in keys and "acme/config.json" in keys
    assert verify_flow(backup_id, inventory=str(inv))["ok"]
    assert drill_flow(backup_id, inventory=str(inv))["files"] == 121
    repo = repository_for(load_inventory(inv), "offsite")
    with open(tmp_path / "x.zip", "wb") as out:
        repo.export_odoo_zip(backup_id, out)
    import zipfile

    assert len(zipfile.ZipFile(tmp_path / "x.zip").namelist()) == 2 + 121


@pytest.mark.usefixtures("prefect_harness")
def test_s3_failing_mid_multipart_is_retried(tmp_path, pg_cluster, odoo_db, s3_bucket):
    from flows.backup import backup_flow

    endpoint, bucket = s3_bucket
    add_big_file(odoo_db[1])
    with FaultyProxy(endpoint, fail_upload_parts=2) as proxy:
        inv = s3_inventory(tmp_path, pg_cluster, odoo_db, proxy.url, bucket)
        backup_id = backup_flow("production", inventory=str(inv))["backup_id"]
        assert proxy.failed == 2
        repo = repository_for(load_inventory(inv), "offsite")
        assert [b.id for b in repo.list_backups()] == [backup_id]
        assert repo.verify(backup_id) == []


@pytest.mark.usefixtures("prefect_harness")
def test_s3_that_keeps_failing_lists_nothing_and_prune_cleans(tmp_path, pg_cluster, odoo_db, s3_bucket):
    from flows.backup import backup_flow
    from flows.prune import prune_flow

    endpoint, bucket = s3_bucket
    add_big_file(odoo_db[1])
    with FaultyProxy(endpoint, fail_upload_parts=-1) as proxy:
        inv = s3_inventory(tmp_path, pg_cluster, odoo_db, proxy.url, bucket)
        with pytest.raises(StorageError, match="S3 upload of objects/.* failed after retries") as info:
            backup_flow("production", inventory=str(inv))
        assert "\n" not in str(info.value) and proxy.failed >= 5
    inv = s3_inventory(tmp_path, pg_cluster, odoo_db, endpoint, bucket)
    repo = repository_for(load_inventory(inv), "offsite")
    assert repo.list_backups() == [] and repo.incomplete_backups()
    prune_flow(apply=True, inventory=str(inv))
    assert repo.incomplete_backups() == []
    assert not boto3.client("s3", endpoint_url=endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads")


def stderr_of(proc: subprocess.Popen):
    return lambda: proc.stderr.read().decode()


def start_backup_cli(inv: Path, tmp_path: Path) -> subprocess.Popen:
    """The CLI in its own process group (so all of it can be killed), on the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.Popen([sys.executable, "-m", "odoops", "backup", "production", "--inventory", str(inv)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.parametrize("moment", ["dump", "filestore"])
@pytest.mark.usefixtures("prefect_harness")
def test_backup_killed_mid_way_is_never_listed(tmp_path, pg_cluster, odoo_db, moment):
    from flows.backup import backup_flow
    from flows.prune import prune_flow

    dbname, filestore = odoo_db
    grow(pg_cluster, dbname, filestore)
    inv = write_inventory(tmp_path / "inv.yaml", {"production": host_env(pg_cluster, dbname, filestore)})
    backups = tmp_path / "backups"
    proc = start_backup_cli(inv, tmp_path)
    kill_when(proc, parts_in_tmp(backups, ".part" if moment == "dump" else ".obj"), stderr_of(proc), 90)
    repo = repository_for(load_inventory(inv), "local")
    assert repo.list_backups() == []
    assert list((backups / "tmp").glob("*")), "the killed run's half-written file is where prune will find it"
    # the lock of the killed run is stale (its pid is gone): the next backup is not blocked
    backup_id = backup_flow("production", inventory=str(inv))["backup_id"]
    assert [b.id for b in repo.list_backups()] == [backup_id]
    prune_flow(apply=True, inventory=str(inv))
    assert repo.incomplete_backups() == [] and not list((backups / "tmp").glob("*"))
    assert repo.verify(backup_id) == []


@pytest.mark.usefixtures("prefect_harness")
def test_backup_killed_during_s3_upload_is_never_listed(tmp_path, pg_cluster, odoo_db, s3_bucket):
    endpoint, bucket = s3_bucket
    dbname, filestore = odoo_db
    grow(pg_cluster, dbname, filestore)
    inv = s3_inventory(tmp_path, pg_cluster, odoo_db, endpoint, bucket)
    client = boto3.client("s3", endpoint_url=endpoint)

    def uploading() -> bool:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="acme/objects/").get("Contents", [])]
        return len(keys) > 20

    proc = start_backup_cli(inv, tmp_path)
    kill_when(proc, uploading, stderr_of(proc), 90)
    repo = repository_for(load_inventory(inv), "offsite")
    assert repo.list_backups() == []
    from flows.backup import backup_flow

    backup_id = backup_flow("production", inventory=str(inv))["backup_id"]
    assert [b.id for b in repo.list_backups()] == [backup_id] and repo.verify(backup_id) == []


@pytest.mark.usefixtures("prefect_harness")
def test_disk_full_on_local_storage(tmp_path, pg_cluster, odoo_db):
    from flows.backup import backup_flow

    assert os.geteuid() == 0, "this test mounts a small tmpfs to fill it: run the suite as root (CI does)"
    dbname, filestore = odoo_db
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        env = host_env(pg_cluster, dbname, filestore)
        inv = write_inventory(tmp_path / "inv.yaml", {"production": env},
                              storage={"local": {"type": "local", "path": str(small / "backups")}})
        with pytest.raises(DiskFull) as info:
            backup_flow("production", inventory=str(inv))
        assert "no space left" in str(info.value) and "\n" not in str(info.value)
        repo = repository_for(load_inventory(inv), "local")
        assert repo.list_backups() == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)


def test_two_backups_of_one_environment_never_run_together(tmp_path, pg_cluster, odoo_db):
    dbname, filestore = odoo_db
    inv = write_inventory(tmp_path / "inv.yaml", {"production": host_env(pg_cluster, dbname, filestore)})
    repo = repository_for(load_inventory(inv), "local")
    with repo.environment_lock("production", "backup"):
        with pytest.raises(LockedError, match=r"locks/env-production.json is held \(backup on .*, pid \d+, since "):
            with repo.environment_lock("production", "backup"):
                pass
        with pytest.raises(LockedError, match=r"a backup on .*, pid \d+, since .* is running: prune again when it has finished"):
            with repo.exclusive_lock("prune"):
                pass
    with repo.environment_lock("production", "backup"):  # released: free again
        pass
