"""What deploy and upgrade share: change an environment's code and schema so that any failure puts back
the exact previous state by itself.

With Odoo stopped, inside one Prefect transaction:

1. the way back is prepared first — a snapshot (database FILE_COPY + filestore hard links,
   tasks/snapshot.py) when the change updates modules, or just the current code when it only restarts;
2. the code is switched to the new release (``Platform.switch_release``: the host's ``addons_link``
   re-pointed, a container's image);
3. the modules are updated in a one-off ``odoo-bin -u … --stop-after-init`` with a time limit, its log
   analysed (skipped when the release updates no module: a restart only); the main tables (partners,
   users, attachments, every table over ``health.rows_tables_over_mb``) must not have lost more rows than
   ``health.rows_shrink_tolerance`` (0 by default: an update that deletes business data is a failure);
4. Odoo is started and verified: no module left half-way, ``/web/health``, the server's series (the
   target's, for a major upgrade), a real login when configured.

Any failure rolls the transaction back: the ``on_rollback`` hook of step 1 (so the rollback is in the
run's state history) stops Odoo, renames the snapshot into place, points the code back and starts
Odoo; the environment is verified again and both results are reported. The snapshot's database comment
(or, for a restart, the release history's in-progress record) is the journal a killed run leaves for
``--resume-rollback``.
"""

from __future__ import annotations

import time
import uuid
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import transaction

from odoops import holders
from odoops.errors import ConfigError, OdoopsError, RefusedError
from odoops.inventory import Environment, UpgradeCommand
from odoops.platforms.base import Platform
from tasks import odoo, snapshot
from tasks.health import login_check, odoo_version, thresholds_for
from tasks.postgres import ConnInfo, connect


class ChangeFailed(OdoopsError):
    """The change failed and the environment was put back as it was (or could not be: the message says)."""


def requirements(env: Environment, what: str = "an upgrade") -> None:
    """odoops stops and starts Odoo itself for a change and for its rollback: the inventory must say how."""
    from odoops.platforms import platform_for

    missing = platform_for(env).change_needs()
    if missing:
        raise ConfigError(f"environment {env.name}: {what} needs {', '.join(missing)} in the inventory (odoops "
                          "stops Odoo for the update and for a rollback): add them")
    if env.ssh is not None:
        raise ConfigError(f"environment {env.name}: {what} over SSH is not supported yet: run odoops on that host")


def approve(env: Environment, what: str, plan: str, timeout: float) -> None:
    """Production waits for a person: the run pauses with the plan (markdown), approve it in the Prefect UI or
    it is refused; nothing has been changed yet either way."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run
    from prefect.input import RunInput

    class ChangeApproval(RunInput):
        approve: bool

    try:
        answer = pause_flow_run(wait_for_input=ChangeApproval.with_initial_data(
            description=plan + f"\n\nTick **approve** to {what}, or leave it to refuse.", approve=False),
            timeout=int(timeout), poll_interval=max(1, min(5, int(timeout))))
    except FlowPauseTimeout:
        raise RefusedError(f"the {what} of {env.name} was not approved within {timeout:.0f} s: nothing was changed; "
                           "start it again and approve it in the Prefect UI (or --yes from the CLI)") from None
    if not answer.approve:
        raise RefusedError(f"the {what} of {env.name} was refused in the Prefect UI: nothing was changed")


def verify_serving(env: Environment, target: ConnInfo, expect_series: str | None = None) -> dict[str, Any]:
    """What must hold after a change (and after a rollback): a list of problems, empty when serving.
    ``expect_series``: a major upgrade's target, which the database's ``base`` and the server must be at."""
    checks: dict[str, Any] = {"problems": []}
    with connect(target) as conn:
        states = odoo.module_states(conn)
    transient = {n: s for n, (s, _) in states.items() if s in odoo.TRANSIENT_STATES}
    if transient:
        checks["problems"].append(f"modules left half-way: {transient}")
    checks["series"] = odoo.series_of(states)
    if expect_series and checks["series"] != expect_series:
        checks["problems"].append(f"the database's base module is at {checks['series']} after the upgrade, not "
                                  f"{expect_series}: the upgrade command did not upgrade it")
    if env.url:
        within = thresholds_for(env).within_seconds
        deadline = time.monotonic() + within
        ok, detail = odoo.probe_url(env.url)
        while not ok and time.monotonic() < deadline:
            time.sleep(0.2)
            ok, detail = odoo.probe_url(env.url)
        checks["web/health"] = detail
        if not ok:
            checks["problems"].append(f"Odoo does not answer /web/health within {within:.0f} s ({detail})")
        else:
            try:  # the server that answers runs the database's series (not an image or tree of another one)
                info = odoo_version(env.url)
                checks["version"] = str(info.get("server_version"))
                if str(info.get("server_serie")) != odoo.series_of(states):
                    checks["problems"].append(f"Odoo {checks['version']} serves a {odoo.series_of(states)} database")
                elif expect_series and str(info.get("server_serie")) != expect_series:
                    checks["problems"].append(f"Odoo {checks['version']} serves, not the target {expect_series}")
            except (OSError, ValueError, xmlrpc.client.Error) as exc:
                checks["problems"].append(f"Odoo does not say its version ({exc})")
            login = login_check(env, thresholds_for(env), env.url)
            checks["login"] = f"{login.status}: {login.detail}"
            if login.status not in ("ok", "skipped"):
                checks["problems"].append(f"login: {login.detail}")
    return checks


@dataclass
class Change:
    """One change's inputs and, as it runs, what happened (the flow turns it into artifacts and records)."""

    runbook: str  # "upgrade", "deploy": the command that resumes it
    reason: str  # "upgrade -u acme_custom", "deploy 1a2b3c4"
    modules: list[str] | None  # None: every module (-u all); []: a restart only
    release: dict[str, str] | None = None  # the code to switch to (Platform.switch_release), None: keep it
    timeout: float = 1800
    logfile: Path | None = None
    command: UpgradeCommand | None = None  # how the modules are upgraded (None: odoo-bin -u)
    phases: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    snapshot: str | None = None
    previous_release: dict[str, str] | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    rollback_checks: dict[str, Any] | None = None
    failure: str | None = None
    downtime: float | None = None
    expect_series: str | None = None  # a major upgrade: the series Odoo and the database must be at afterwards
    rows: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # main tables: rows before, after

    @property
    def outcome(self) -> str:
        return "rolled back" if self.failure else "success"

    @property
    def updates(self) -> bool:
        return self.modules is None or bool(self.modules)


# What the rollback hook needs: live objects that a transaction's values (deep copies) cannot carry.
# Keyed by a token the flow sets on the transaction before anything can fail.
_ROLLBACKS: dict[str, dict[str, Any]] = {}


@task(name="snapshot", cache_policy=NO_CACHE)
def take_snapshot(target: ConnInfo, env: Environment, platform: Platform, reason: str) -> snapshot.Snapshot:
    return snapshot.take_snapshot(target, env.name, target.dbname, platform.filestore_location(), reason,
                                  platform.filestore_folders())


@task(name="note-running-release", cache_policy=NO_CACHE)
def note_running_release(platform: Platform) -> dict[str, str]:
    """A restart-only change keeps no data snapshot (the schema does not change): the way back is the code."""
    return platform.running_release()


@take_snapshot.on_rollback
@note_running_release.on_rollback
def _put_back(txn) -> None:
    """Part of the run's state history: the transaction failed, the exact previous state goes back."""
    run = _ROLLBACKS[txn.get("token")]
    platform: Platform = run["platform"]
    try:
        platform.stop()
        if run.get("snapshot") is not None:
            snapshot.put_back(run["target"], run["snapshot"], folders=platform.filestore_folders())
        if run.get("previous_release") is not None:
            platform.switch_release(run["previous_release"])
        run["put_back"] = True
    finally:
        platform.start()


@task(name="switch-release", cache_policy=NO_CACHE)
def switch_release(platform: Platform, release: dict[str, str]) -> dict[str, str]:
    return platform.switch_release(release)


@task(name="update-modules", cache_policy=NO_CACHE)
def run_update(platform: Platform, target: ConnInfo, snap: snapshot.Snapshot, modules: list[str] | None,
               timeout: float, logfile: Path, command: UpgradeCommand | None = None) -> odoo.UpdateRun:
    def journal(pid: int) -> None:  # the update's pid, so a run that finds this one killed can stop it
        snapshot.annotate(target, snap, process=holders.me(pid=pid, pid_start=holders.process_start(pid)))

    run = odoo.update_modules(platform, target.dbname, modules, timeout, logfile, on_start=journal, command=command)
    if run.failure:
        raise ChangeFailed(run.failure)
    return run


@task(name="count-rows", cache_policy=NO_CACHE)
def count_rows(env: Environment, target: ConnInfo) -> dict[str, int]:
    with connect(target) as conn:
        return odoo.main_row_counts(conn, thresholds_for(env).rows_tables_over_mb)


@task(name="check-rows", cache_policy=NO_CACHE)
def check_rows(env: Environment, target: ConnInfo, before: dict[str, int]) -> dict[str, tuple[int, int | None]]:
    """The update may not have deleted business data: the main tables' rows against their count before."""
    limits = thresholds_for(env)
    with connect(target) as conn:
        after = odoo.main_row_counts(conn, limits.rows_tables_over_mb)
    lost = odoo.rows_lost(before, after, limits.rows_shrink_tolerance)
    if lost:
        raise ChangeFailed(f"the update deleted rows: {lost[0]}" + (f" (and {len(lost) - 1} more tables)"
                                                                    if len(lost) > 1 else "")
                           + "; allow it with health.rows_shrink_tolerance if that is intended")
    return {table: (was, after.get(table)) for table, was in before.items()}


@task(name="start-and-verify", cache_policy=NO_CACHE)
def start_and_verify(platform: Platform, env: Environment, target: ConnInfo,
                     expect_series: str | None = None) -> dict[str, Any]:
    platform.start()
    checks = verify_serving(env, target, expect_series)
    if checks["problems"]:
        raise ChangeFailed(f"verification failed after the change: {checks['problems'][0]}")
    return checks


def apply(env: Environment, platform: Platform, target: ConnInfo, change: Change) -> Change:
    """Run ``change`` with Odoo stopped; on failure put everything back (see the module docstring).

    Raises only when nothing was changed yet (the snapshot itself failed) or when putting back failed;
    otherwise returns the change with ``failure`` set and the rollback verified.
    """
    token = uuid.uuid4().hex
    rollback: dict[str, Any] = {"put_back": False, "platform": platform, "target": target}
    _ROLLBACKS[token] = rollback
    clock = stopped_at = time.monotonic()
    platform.stop()
    prepared = False
    try:
        with transaction() as txn:
            txn.set("token", token)
            if change.updates:
                rows_before = count_rows(env, target)
                snap = take_snapshot(target, env, platform, change.reason)
                rollback["snapshot"], change.snapshot = snap, snap.database
                change.phases["snapshot"] = time.monotonic() - clock
            else:
                snap = None
                note_running_release(platform)
            prepared = True
            if change.release is not None:
                change.previous_release = switch_release(platform, change.release)
                rollback["previous_release"] = change.previous_release
                if snap is not None:
                    snapshot.annotate(target, snap, code={"previous": change.previous_release})
            if snap is not None:
                run = run_update(platform, target, snap, change.modules, change.timeout, change.logfile, change.command)
                change.errors, change.phases["update"] = run.errors, run.seconds
                change.rows = check_rows(env, target, rows_before)
            clock = time.monotonic()
            change.checks = start_and_verify(platform, env, target, change.expect_series)
            change.phases["start and verify"] = time.monotonic() - clock
            change.downtime = time.monotonic() - stopped_at
    except Exception as exc:  # noqa: BLE001 - every failure is reported with the rollback's outcome
        if not prepared:  # the way back could not be prepared: nothing was changed
            platform.start()
            raise
        if not rollback["put_back"]:
            raise ChangeFailed(f"{env.name}: the change failed ({exc}) and putting the previous state back failed too"
                               + (f": the snapshot is {change.snapshot}" if change.snapshot else "")
                               + f"; run odoops {change.runbook} {env.name} --resume-rollback") from exc
        change.failure = str(exc)
        clock = time.monotonic()
        change.rollback_checks = verify_serving(env, target)
        change.phases["rollback verification"] = time.monotonic() - clock
    finally:
        _ROLLBACKS.pop(token, None)
    if change.failure is None and change.snapshot is not None:
        snapshot.keep(target, rollback["snapshot"], folders=platform.filestore_folders())
    return change


def previous_release(code: dict[str, Any] | None) -> dict[str, str] | None:
    """The release a snapshot's journal says the change replaced (``{"link", "previous": folder}`` before 0.2)."""
    if not code:
        return None
    previous = code["previous"]
    return previous if isinstance(previous, dict) else {"path": previous}


def resume_rollback(env: Environment, platform: Platform, target: ConnInfo,
                    release: dict[str, str] | None = None) -> dict[str, Any]:
    """Put back what a killed change left: its snapshot (and the code it switched), or only the code
    (``release``: the one it replaced, from the release history's in-progress record)."""
    pending = snapshot.interrupted(target, env.name)
    if pending is None and release is None:
        raise RefusedError(f"{env.name} has no interrupted change to roll back")
    if pending is not None:
        platform.stop_leftovers(pending.process)
    platform.stop()
    try:
        if pending is not None:
            snapshot.put_back(target, pending, folders=platform.filestore_folders())
            release = previous_release(pending.code) or release
        if release is not None:
            platform.switch_release(release)
    finally:
        platform.start()
    return {"snapshot": pending.database if pending else None,
            "reason": pending.reason if pending else "restart", "checks": verify_serving(env, target)}
