"""Retention: grandfather-father-son, pins, the newest (verified) backup, and object garbage collection."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tasks.archive import BackupInfo
from tasks.retention import plan_retention


def backup(day: datetime, n: int = 0, pinned: bool = False, verification: str = "unverified") -> BackupInfo:
    at = day + timedelta(hours=n)
    return BackupInfo(id=f"prod-{at:%Y%m%dT%H%M%SZ}-0000", environment="prod", kind="scheduled", created_at=at,
                      size=1, db_name="acme", odoo_version="17.0", pinned=pinned, verification=verification,
                      verified_at=None)


START = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)  # a Thursday


def nightly(days: int) -> list[BackupInfo]:
    return [backup(START + timedelta(days=d)) for d in range(days)]


def test_odoo_sh_policy_over_a_hundred_nights():
    backups = nightly(100)  # 2026-01-01 .. 2026-04-10
    kept, delete = plan_retention(backups, {"daily": 7, "weekly": 4, "monthly": 3})
    days = sorted(b.created_at.date().isoformat() for b in backups if b.id in kept)
    # 7 last days; newest of the last 4 ISO weeks (Sundays, plus the current week's newest);
    # newest of the last 3 months (Mar 31, Feb 28, and April's newest).
    assert days == ["2026-02-28", "2026-03-22", "2026-03-29", "2026-03-31", "2026-04-04", "2026-04-05",
                    "2026-04-06", "2026-04-07", "2026-04-08", "2026-04-09", "2026-04-10"]
    assert len(delete) == 100 - len(days)
    assert set(delete).isdisjoint(kept)


def test_several_backups_a_day_keep_the_newest_of_the_day():
    backups = [backup(START, n) for n in range(4)]
    kept, delete = plan_retention(backups, {"daily": 1})
    assert list(kept) == [backups[-1].id] and len(delete) == 3


def test_pinned_newest_and_newest_verified_survive_a_zero_policy():
    backups = nightly(5)
    backups[0] = backup(START, pinned=True)
    backups[2] = backup(START + timedelta(days=2), verification="drilled")
    kept, delete = plan_retention(backups, {"daily": 0, "weekly": 0, "monthly": 0})
    assert kept == {backups[0].id: ["pinned"], backups[2].id: ["newest verified"], backups[4].id: ["newest"]}
    assert sorted(delete) == sorted([backups[1].id, backups[3].id])


def test_a_failed_verification_is_not_the_newest_verified():
    backups = [backup(START, verification="verified"), backup(START + timedelta(days=1), verification="failed"),
               backup(START + timedelta(days=2))]
    kept, _ = plan_retention(backups, {"daily": 0})
    assert backups[0].id in kept and backups[1].id not in kept


@pytest.mark.usefixtures("prefect_harness")
def test_prune_dry_run_then_apply_deletes_backups_and_unshared_objects(tmp_path, pg_cluster, odoo_db):
    from flows.backup import backup_flow
    from flows.prune import prune_flow
    from odoops.inventory import load_inventory
    from odoops.runtime import repository_for
    from tests.helpers import host_env, write_inventory

    dbname, filestore = odoo_db
    env = host_env(pg_cluster, dbname, filestore)
    env["backup"]["keep"] = {"daily": 1, "weekly": 0, "monthly": 0}
    inv = write_inventory(tmp_path / "inv.yaml", {"production": env})
    repo = repository_for(load_inventory(inv), "local")
    old_ids = []
    for day in (3, 2):  # two older backups, dated back by rewriting their manifest's created_at
        extra = filestore / "ee" / f"{day:040d}"
        extra.parent.mkdir(exist_ok=True)
        extra.write_bytes(f"only in the backup of day -{day}".encode())
        backup_id = backup_flow("production", inventory=str(inv))["backup_id"]
        extra.unlink()
        manifest = repo.manifest(backup_id)
        manifest["odoops"]["created_at"] = (datetime.now(UTC) - timedelta(days=day)).isoformat()
        repo.commit(backup_id, manifest)
        old_ids.append(backup_id)
    repo.pin(old_ids[0], "test")
    newest = backup_flow("production", inventory=str(inv))["backup_id"]
    objects_before = repo.known_objects()

    dry = prune_flow(apply=False, inventory=str(inv))
    assert dry["storages"]["local"]["deleted"] == [old_ids[1]]
    assert dry["storages"]["local"]["objects"] == 0  # nothing is unreferenced until the backup goes
    assert len(repo.list_backups()) == 3 and repo.known_objects() == objects_before

    applied = prune_flow(apply=True, inventory=str(inv))
    assert applied["storages"]["local"]["deleted"] == [old_ids[1]]
    assert {b.id for b in repo.list_backups()} == {old_ids[0], newest}
    assert len(repo.known_objects()) == len(objects_before) - 1  # the day -2 file, referenced by no kept backup
    assert repo.verify(old_ids[0]) == [] and repo.verify(newest) == []
    records = [json.loads(p.read_text()) for p in (tmp_path / "backups" / "audit").rglob("*.json")]
    assert any(r["runbook"] == "prune" and r["backup_ids"] == [old_ids[1]] for r in records)
