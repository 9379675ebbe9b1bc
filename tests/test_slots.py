"""A run killed with SIGKILL never keeps its environment.

Each scenario runs the CLI as an operator does, one process (group) per call, and kills the whole group
with SIGKILL at a point of the runbook. The next run of the same runbook on the same environment must
start within 90 s (``--wait 90``: it fails otherwise) and succeed, with nobody freeing anything by hand,
whether the CLI uses the local Prefect server kept between calls (the default: it outlives the killed run),
its own temporary server (``ODOOPS_LOCAL_SERVER=0``: it dies with the run), a long-lived server, or one
restarted in between. A holder that is alive is never freed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from odoops import holders
from odoops.inventory import load_inventory
from odoops.runtime import repository_for
from odoops.sandbox import SAMPLE_ZIP, free_port
from tests.helpers import (
    file_sha1s,
    grow,
    host_env,
    kill_group,
    kill_when,
    parts_in_tmp,
    table_checksums,
    write_inventory,
)

ROOT = Path(__file__).resolve().parent.parent
NEXT_RUN_WITHIN = 90


# ---------------------------------------------------------------- the operator's CLI


def local_server() -> dict[str, str]:
    """No PREFECT_API_URL: the CLI calls share the local server of the session's PREFECT_HOME, which a
    SIGKILL of a run's process group does not reach (odoops/localserver.py)."""
    return {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", "PREFECT_UI_URL"}}


def temporary_server(home: Path) -> dict[str, str]:
    """ODOOPS_LOCAL_SERVER=0: every CLI call starts (and takes down with it) its own temporary server."""
    return {**local_server(), "PREFECT_HOME": str(home), "ODOOPS_LOCAL_SERVER": "0"}


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "wb")
    return subprocess.Popen([sys.executable, "-m", "odoops", *args], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "odoops", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def kill_at(proc: subprocess.Popen, log: Path, condition) -> None:
    kill_when(proc, condition, log.read_text)


def next_run_succeeds(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The same runbook again, allowed to wait at most 90 s for the environment."""
    started = time.monotonic()
    result = run(["--wait", str(NEXT_RUN_WITHIN), *args], env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "busy" not in result.stderr or time.monotonic() - started < NEXT_RUN_WITHIN + 60
    return result


# ---------------------------------------------------------------- what "intact" means


def database_exists(cluster, dbname: str) -> bool:
    with psycopg.connect(cluster.dsn()) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is not None


# ---------------------------------------------------------------- environments


@pytest.fixture
def production(tmp_path, pg_cluster, odoo_db):
    """A production environment big enough that its dump and filestore copy can be caught mid-way."""
    dbname, filestore = odoo_db
    grow(pg_cluster, dbname, filestore)
    inv = write_inventory(tmp_path / "inv.yaml", {"production": host_env(pg_cluster, dbname, filestore)})
    return inv, tmp_path / "backups", dbname


@pytest.fixture
def staging(tmp_path, pg_cluster):
    """A staging environment already restored once; its stop_command can hold a restore just before the swap."""
    dbname = f"slots_staging_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    filestore = tmp_path / "data" / "filestore" / dbname
    hold, holding, release = tmp_path / "hold-next-swap", tmp_path / "holding", tmp_path / "release"
    stop = ["/bin/sh", "-c", f'if [ -e "{hold}" ]; then rm -f "{hold}"; touch "{holding}"; '
                             f'while [ ! -e "{release}" ]; do sleep 0.05; done; fi']
    inv = write_inventory(tmp_path / "inv.yaml", {
        "staging": host_env(pg_cluster, dbname, filestore, stage="staging", url=None, stop_command=stop)})
    yield inv, dbname, filestore, (hold, holding, release)
    release.touch()  # a stop_command a killed run left waiting (its own session: the kill did not reach it) ends
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        for name in [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                                (f"{dbname}%",))]:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def restored_once(inv: Path) -> None:
    """The environment as it is before the restore under test (restored in-process: it is faster)."""
    from flows.restore import restore_flow

    restore_flow(str(SAMPLE_ZIP), "staging", inventory=str(inv))


# ---------------------------------------------------------------- backup


@pytest.mark.parametrize(("moment", "server"), [("dump", "local"), ("filestore", "temporary")])
def test_backup_killed_frees_its_environment(production, tmp_path, moment, server):
    inv, backups, _ = production
    env = local_server() if server == "local" else temporary_server(tmp_path / "prefect")
    log = tmp_path / "killed.log"
    proc = start(["backup", "production", "-i", str(inv)], env, log)
    kill_at(proc, log, parts_in_tmp(backups, ".part" if moment == "dump" else ".obj"))
    repo = repository_for(load_inventory(inv), "local")
    assert repo.list_backups() == []

    if moment == "dump":  # what the operator sees: the dead run still holds it, and odoops knows it is dead
        shown = run(["envs", "unlock", "production", "-i", str(inv), "--json"], env)
        assert shown.returncode == 0, shown.stderr
        state = json.loads(shown.stdout)
        assert state["busy"] and state["holder"]["pid"] == proc.pid and state["holder"]["runbook"] == "backup"
        assert state["holder_dead"] is True and f"process {proc.pid} no longer exists" in state["liveness"]

    started = time.monotonic()
    result = next_run_succeeds(["backup", "production", "-i", str(inv), "--json"], env)
    assert time.monotonic() - started < NEXT_RUN_WITHIN
    backup_id = json.loads(result.stdout)["backup_id"]
    assert [b.id for b in repo.list_backups()] == [backup_id] and repo.verify(backup_id) == []
    assert not list(backups.glob("locks/env-*")), "the killed run's repository lock was taken over and released"


# ---------------------------------------------------------------- restore


@pytest.mark.usefixtures("prefect_harness")
def test_restore_killed_during_the_load_is_cleaned_by_the_next_run(staging, tmp_path, pg_cluster):
    inv, dbname, filestore, _ = staging
    env = local_server()
    restored_once(inv)
    tables, files = table_checksums(pg_cluster, dbname), file_sha1s(filestore)
    scratch_db, scratch_fs = f"{dbname}__odoops_restore", filestore.parent / f".{filestore.name}.odoops-restore"

    def loading() -> bool:
        try:
            return database_exists(pg_cluster, scratch_db) and scratch_fs.exists() and any(scratch_fs.rglob("*"))
        except FileNotFoundError:
            return False

    log = tmp_path / "killed.log"
    proc = start(["restore", str(SAMPLE_ZIP), "--to", "staging", "-i", str(inv)], env, log)
    kill_at(proc, log, loading)
    assert table_checksums(pg_cluster, dbname) == tables and file_sha1s(filestore) == files

    # a person may free it at once: unlock names the dead holder, frees it, and says so in the audit trail
    freed = run(["envs", "unlock", "staging", "--force", "-i", str(inv)], env)
    assert freed.returncode == 0 and "freed staging" in freed.stdout and f"pid {proc.pid}" in freed.stdout, freed
    from typer.testing import CliRunner

    from odoops.cli import app

    history = json.loads(CliRunner().invoke(app, ["history", "staging", "-i", str(inv), "--json"]).stdout)
    assert history[-1]["runbook"] == "unlock" and history[-1]["details"]["freed_holder"]["pid"] == proc.pid

    next_run_succeeds(["restore", str(SAMPLE_ZIP), "--to", "staging", "-i", str(inv)], env)
    assert not database_exists(pg_cluster, scratch_db) and not scratch_fs.exists()


@pytest.mark.usefixtures("prefect_harness")
def test_restore_killed_just_before_the_swap_leaves_the_target_byte_identical(staging, tmp_path, pg_cluster):
    inv, dbname, filestore, (hold, holding, release) = staging
    env = local_server()
    restored_once(inv)
    tables, files = table_checksums(pg_cluster, dbname), file_sha1s(filestore)
    hold.touch()  # the next restore's stop_command (run just before the swap) waits there
    log = tmp_path / "killed.log"
    proc = start(["restore", str(SAMPLE_ZIP), "--to", "staging", "-i", str(inv)], env, log)
    kill_at(proc, log, holding.exists)
    scratch_db, scratch_fs = f"{dbname}__odoops_restore", filestore.parent / f".{filestore.name}.odoops-restore"
    assert database_exists(pg_cluster, scratch_db) and scratch_fs.exists(), "killed with the copy complete"
    assert table_checksums(pg_cluster, dbname) == tables and file_sha1s(filestore) == files

    next_run_succeeds(["restore", str(SAMPLE_ZIP), "--to", "staging", "-i", str(inv)], env)
    assert not database_exists(pg_cluster, scratch_db) and not scratch_fs.exists()


# ---------------------------------------------------------------- a live holder


@pytest.mark.usefixtures("prefect_harness")
def test_a_live_holder_is_never_freed_and_the_second_run_waits_its_turn(staging, tmp_path, pg_cluster):
    inv, dbname, filestore, (hold, holding, release) = staging
    env = local_server()
    restored_once(inv)
    hold.touch()
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = start(["restore", str(SAMPLE_ZIP), "--to", "staging", "-i", str(inv)], env, first_log)
    second = None
    try:
        deadline = time.monotonic() + 120
        while not holding.exists():
            assert first.poll() is None and time.monotonic() < deadline, first_log.read_text()[-2000:]
            time.sleep(0.05)
        second = start(["--wait", "300", "backup", "staging", "-i", str(inv)], env, second_log)
        deadline = time.monotonic() + 120
        while "staging is busy" not in second_log.read_text():
            assert second.poll() is None and time.monotonic() < deadline, second_log.read_text()[-2000:]
            time.sleep(0.1)
        said = " ".join(second_log.read_text().split())
        assert "held by restore (flow run " in said and f"pid {first.pid}, since " in said, said

        refused = run(["envs", "unlock", "staging", "--force", "-i", str(inv)], env)
        assert refused.returncode == 2 and "that run is alive" in refused.stderr, refused
        assert f"pid {first.pid}" in " ".join(refused.stderr.split()), refused.stderr

        time.sleep(5)  # the second run keeps waiting: it never freed a live holder
        assert second.poll() is None and repository_for(load_inventory(inv), "local").list_backups("staging") == []
        released = time.time()
        release.touch()
        assert first.wait(timeout=300) == 0, first_log.read_text()[-2000:]
        assert second.wait(timeout=300) == 0, second_log.read_text()[-2000:]
    finally:
        release.touch()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                kill_group(proc)
    [backup] = repository_for(load_inventory(inv), "local").list_backups("staging")
    assert backup.created_at.timestamp() >= released, "the backup started only once the restore let go"


def test_a_run_that_waits_too_long_names_the_holder_and_the_fix(staging, tmp_path, pg_cluster, prefect_harness):
    """In-process holder (a real flow run) and a CLI on the same server that may wait 3 s."""
    from prefect import flow
    from prefect.settings import PREFECT_API_URL

    from odoops.slots import environment_slot

    inv, *_ = staging
    held, release = tmp_path / "held", tmp_path / "release-holder"

    @flow(name="holder")
    def holder() -> None:
        with environment_slot("staging"):
            held.touch()
            while not release.exists():
                time.sleep(0.05)

    import threading
    from datetime import UTC, datetime

    started_at = datetime.now(UTC)
    thread = threading.Thread(target=holder)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not held.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
        result = run(["--wait", "3", "backup", "staging", "-i", str(inv)], env)
        assert result.returncode == 2, result
        line = " ".join(result.stderr.split())
        assert "staging is busy: held by holder (flow run " in line and f"pid {os.getpid()}" in line
        assert "odoops envs unlock staging" in line and "still held after" in line
        # and the waiting run's own log (the UI's Logs tab) said who held it
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import LogFilter, LogFilterLevel, LogFilterTimestamp

        recent = LogFilter(level=LogFilterLevel(ge_=30), timestamp=LogFilterTimestamp(after_=started_at))
        with get_client(sync_client=True) as client:
            messages = [log.message for log in client.read_logs(log_filter=recent, limit=200)]
        assert any(m.startswith("staging is busy: held by holder (flow run ") and f"pid {os.getpid()}" in m
                   for m in messages), messages[-20:]
    finally:
        release.touch()
        thread.join()


# ---------------------------------------------------------------- a long-lived server, restarted


def test_a_long_lived_server_and_a_restarted_one(production, tmp_path, pg_cluster):
    """`make serve`-style server; its lease storage in memory, the worst case: a restart forgets leases."""
    from odoops import devserver

    inv, backups, dbname = production
    port = free_port()
    lease = {"PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.memory"}
    local = devserver.start(tmp_path / "server", port, lease, worker=False, deploy=False)
    try:
        env = {**local.env, "ODOOPS_INVENTORY": str(inv)}
        log = tmp_path / "killed-1.log"
        proc = start(["backup", "production"], env, log)
        kill_at(proc, log, parts_in_tmp(backups, ".part"))
        next_run_succeeds(["backup", "production"], env)

        with psycopg.connect(pg_cluster.dsn(dbname), autocommit=True) as conn:  # dumped again, not linked
            conn.execute("UPDATE x_bulk SET t = t WHERE id % 100 = 0")
        log = tmp_path / "killed-2.log"
        proc = start(["backup", "production"], env, log)
        kill_at(proc, log, parts_in_tmp(backups, ".part"))
        local.stop()
        local = devserver.start(tmp_path / "server", port, lease, worker=False, deploy=False)
        next_run_succeeds(["backup", "production"], env)
    finally:
        local.stop()
    assert len(repository_for(load_inventory(inv), "local").list_backups()) == 2


# ---------------------------------------------------------------- the rules themselves


def test_liveness_is_a_proof_on_this_host_and_a_heartbeat_elsewhere():
    me = holders.me()
    assert not holders.liveness(me, stale_after=0).dead, "alive here, whatever the heartbeat"
    sleeper = subprocess.Popen(["sleep", "30"])
    record = {**me, "pid": sleeper.pid, "pid_start": holders.process_start(sleeper.pid)}
    assert not holders.liveness(record, 0).dead
    assert holders.liveness({**record, "pid_start": "1"}, 0).dead, "a reused pid is not the holder"
    assert holders.liveness({**record, "boot_id": "another-boot"}, 0).dead, "rebooted since"
    sleeper.kill()
    sleeper.wait()
    assert holders.liveness(record, 10**6).reason == f"process {sleeper.pid} no longer exists"
    remote = {**me, "host": "elsewhere.example", "heartbeat": time.time() - 100}
    assert not holders.liveness(remote, 300).dead and holders.liveness(remote, 60).dead


@pytest.mark.usefixtures("prefect_harness")
def test_two_freers_of_one_dead_slot_cannot_both_succeed():
    """The second freer finds the holder changed (or the gate taken) and touches nothing."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    from odoops import slots

    with get_client(sync_client=True) as client:
        @flow(name="taker")
        def taker() -> str:
            return slots._take(client, "race", timeout=30)  # taken, never released: as if killed

        taker()
        dead = slots.slot_state(client, "race")
        dead.holder = {**dead.holder, "pid": 2**22 + 1}  # what a killed holder's record looks like
        dead.liveness = holders.liveness(dead.holder, 300)
        assert dead.busy and dead.liveness.dead
        assert slots.free_slot(client, dead) is True
        assert slots.free_slot(client, dead) is False, "the same dead holder cannot be freed twice"
        after = slots.slot_state(client, "race")
        assert not after.busy and after.holder is None and after.limit_id != dead.limit_id


def test_prune_never_runs_while_a_live_backup_holds_the_repository_and_takes_over_a_dead_one(tmp_path, pg_cluster,
                                                                                              odoo_db):
    from odoops.errors import LockedError

    dbname, filestore = odoo_db
    inv = write_inventory(tmp_path / "inv.yaml", {"production": host_env(pg_cluster, dbname, filestore)})
    ready = tmp_path / "locked"
    holder_code = ("import sys, time, pathlib\nfrom odoops.inventory import load_inventory\n"
                   "from odoops.runtime import repository_for\n"
                   "repo = repository_for(load_inventory(sys.argv[1]), 'local')\n"
                   "with repo.environment_lock('production', 'backup'):\n"
                   "    pathlib.Path(sys.argv[2]).touch()\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder_code, str(inv), str(ready)], cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        repo = repository_for(load_inventory(inv), "local")
        with pytest.raises(LockedError, match=rf"a backup on .*, pid {proc.pid}, since .* is running"):
            with repo.exclusive_lock("prune"):
                pass
        with pytest.raises(LockedError, match=rf"held \(backup on .*, pid {proc.pid}, since"):
            with repo.environment_lock("production", "backup"):
                pass
    finally:
        kill_group(proc)
    repo = repository_for(load_inventory(inv), "local")
    with repo.exclusive_lock("prune"):  # the dead backup's shared lock is taken over
        pass
    with repo.environment_lock("production", "backup"):  # and so is its environment lock
        pass
    assert not list((tmp_path / "backups").glob("locks/*")), "nothing left behind: no lock, no takeover marker"
