"""Upgrade runbook: a module update run with automatic rollback to the exact previous state.

1. Resolve the environment; it must name ``odoo_bin``, ``stop_command`` and ``start_command`` (odoops
   stops Odoo for the update and for a rollback); production must be confirmed by name.
2. Take the environment's slot; refuse while an interrupted upgrade waits for ``--resume-rollback``.
3. Preflight, touching nothing: the modules exist and are installed, no module is half-way through an
   install, update or removal.
4. Production: a fresh backup, verified.
5. Stop Odoo, then inside one Prefect transaction: snapshot (database FILE_COPY + filestore hard links,
   tasks/snapshot.py), the code switched to the new release folder when one is given (``addons_link``), the
   update in a one-off ``odoo-bin -u … --stop-after-init`` with a time limit, its
   log analysed, Odoo started, verification (no module left in a transient state, ``/web/health``, a
   real login when ``health.login`` is configured).
6. Any failure rolls the transaction back: the snapshot's ``on_rollback`` hook stops Odoo, renames the
   snapshot into place and starts Odoo; the environment is verified again; both results are reported.
7. Success keeps the snapshot (the two newest) for a later manual rollback. Artifacts and an audit record.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.transactions import transaction

from odoops import holders
from odoops.errors import ConfigError, OdoopsError, RefusedError
from odoops.inventory import Environment
from odoops.platforms import platform_for
from odoops.platforms.base import Platform
from odoops.runtime import record_run, resolve, run_name
from odoops.slots import environment_slot
from tasks import odoo, releases, snapshot
from tasks.health import login_check, thresholds_for
from tasks.postgres import ConnInfo, connect
from tasks.restore_steps import confirm_production

HEALTHY_WITHIN_SECONDS = 120


class UpgradeFailed(OdoopsError):
    """The update failed and the environment was put back as it was (or could not be: the message says)."""


def _requirements(env: Environment) -> None:
    missing = [key for key in ("odoo_bin", "stop_command", "start_command") if not getattr(env, key)]
    if missing:
        raise ConfigError(f"environment {env.name}: an upgrade needs {', '.join(missing)} in the inventory (odoops "
                          "stops Odoo for the update and for a rollback): add them")
    if env.ssh is not None:
        raise ConfigError(f"environment {env.name}: upgrading over SSH is not supported yet: run odoops on that host")


def verify_serving(env: Environment, target: ConnInfo) -> dict[str, Any]:
    """What must hold after an update (and after a rollback): a list of problems, empty when serving."""
    checks: dict[str, Any] = {"problems": []}
    with connect(target) as conn:
        transient = {n: s for n, (s, _) in odoo.module_states(conn).items() if s in odoo.TRANSIENT_STATES}
    if transient:
        checks["problems"].append(f"modules left half-way: {transient}")
    if env.url:
        deadline = time.monotonic() + HEALTHY_WITHIN_SECONDS
        ok, detail = odoo.probe_url(env.url)
        while not ok and time.monotonic() < deadline:
            time.sleep(0.5)
            ok, detail = odoo.probe_url(env.url)
        checks["web/health"] = detail
        if not ok:
            checks["problems"].append(f"Odoo does not answer /web/health within {HEALTHY_WITHIN_SECONDS} s ({detail})")
        else:
            login = login_check(env, thresholds_for(env), env.url)
            checks["login"] = f"{login.status}: {login.detail}"
            if login.status not in ("ok", "skipped"):
                checks["problems"].append(f"login: {login.detail}")
    return checks


@task(name="snapshot", cache_policy=NO_CACHE)
def take_snapshot(target: ConnInfo, env: Environment, reason: str) -> snapshot.Snapshot:
    return snapshot.take_snapshot(target, env.name, target.dbname, Path(env.filestore) if env.filestore else None,
                                  reason)


# What the rollback hook needs beyond the snapshot: live objects that a transaction's values (deep copies)
# cannot carry. Keyed by the snapshot's database name, set by the flow before anything can fail.
_ROLLBACKS: dict[str, dict[str, Any]] = {}


@take_snapshot.on_rollback
def _put_snapshot_back(txn) -> None:
    """Part of the run's state history: the transaction failed, the exact previous state goes back."""
    snap: snapshot.Snapshot = txn.get("snapshot")
    run = _ROLLBACKS[snap.database]
    platform: Platform = run["platform"]
    try:
        platform.stop()
        snapshot.put_back(run["target"], snap)
        if run.get("code"):
            link, previous = run["code"]
            releases.point_link(link, previous)
        run["put_back"] = True
    finally:
        platform.start()


@task(name="switch-code", cache_policy=NO_CACHE)
def switch_code(link: Path, release: Path) -> Path:
    return releases.point_link(link, release)


@task(name="update-modules", cache_policy=NO_CACHE)
def run_update(platform: Platform, target: ConnInfo, snap: snapshot.Snapshot, modules: list[str] | None,
               timeout: float, logfile: Path) -> odoo.UpdateRun:
    def journal(pid: int) -> None:  # the update's pid, so a run that finds this one killed can stop it
        snapshot.annotate(target, snap, process=holders.me(pid=pid, pid_start=holders.process_start(pid)))

    run = odoo.update_modules(platform, target.dbname, modules, timeout, logfile, on_start=journal)
    if run.failure:
        raise UpgradeFailed(run.failure)
    return run


@task(name="start-and-verify", cache_policy=NO_CACHE)
def start_and_verify(platform: Platform, env: Environment, target: ConnInfo) -> dict[str, Any]:
    platform.start()
    checks = verify_serving(env, target)
    if checks["problems"]:
        raise UpgradeFailed(f"verification failed after the update: {checks['problems'][0]}")
    return checks


def _markdown(env: Environment, result: dict[str, Any]) -> str:
    lines = [f"# Upgrade of {env.name}: {result['outcome']}", "", f"Modules: {result['modules'] or 'all'}  ",
             f"Snapshot: `{result['snapshot']}`  ", f"Update log: `{result['log']}`", "",
             "| phase | seconds |", "|---|---:|", *[f"| {k} | {v:.1f} |" for k, v in result["phases"].items()], "",
             "| module | before | after |", "|---|---|---|",
             *[f"| {m} | {v[0]} | {v[1]} |" for m, v in result["versions"].items()]]
    if result["errors"]:
        lines += ["", "Errors in the update log:", *[f"- {e['count']}× {e['level']} {e['signature']}"
                                                      for e in result["errors"]]]
    return "\n".join(lines) + "\n"


def _resume_rollback(env: Environment, platform: Platform, target: ConnInfo) -> dict[str, Any]:
    """Put back the snapshot of an upgrade whose run was killed; stop its update if it still runs."""
    pending = snapshot.interrupted(target, env.name)
    if pending is None:
        raise RefusedError(f"{env.name} has no interrupted upgrade to roll back")
    if pending.process and not holders.liveness(pending.process, 0).dead:
        from odoops.platforms.host import kill_process_group

        kill_process_group(int(pending.process["pid"]))
    platform.stop()
    try:
        snapshot.put_back(target, pending)
        if pending.code:
            releases.point_link(Path(pending.code["link"]), Path(pending.code["previous"]))
    finally:
        platform.start()
    return {"snapshot": pending.database, "reason": pending.reason, "checks": verify_serving(env, target)}


@flow(name="upgrade", flow_run_name=run_name("upgrade/{environment}/{modules}"))
def upgrade_flow(environment: str, modules: list[str] | None = None, all_modules: bool = False,
                 code: str | None = None, timeout_seconds: float = 1800, confirm: str | None = None,
                 resume_rollback: bool = False, inventory: str | None = None) -> dict[str, Any]:
    """Update MODULES (or all) of ENVIRONMENT, with its current code or the release folder CODE (pointed at by
    the environment's addons_link); any failure puts back the exact previous state, code included."""
    parameters = {"environment": environment, "modules": modules, "all_modules": all_modules, "code": code,
                  "timeout_seconds": timeout_seconds, "confirm": confirm, "resume_rollback": resume_rollback}
    inv, env = resolve(environment, inventory)
    _requirements(env)
    if code is not None and not env.addons_link:
        raise ConfigError(f"environment {env.name}: --code needs addons_link in the inventory (the link its "
                          "addons_path names, which odoops points at the new release folder): add it")
    if not resume_rollback and bool(modules) == all_modules:
        raise ConfigError("name the modules to update (--modules a,b) or update them all (--all), not both")
    logger = get_run_logger()
    confirm_production(env, confirm)
    result: dict[str, Any] = {"environment": env.name, "modules": modules, "phases": {}, "errors": [],
                              "versions": {}, "snapshot": None, "log": None, "outcome": "failed"}
    try:
        with environment_slot(env.name), platform_for(env) as platform, platform.database() as target:
            if resume_rollback:
                back = _resume_rollback(env, platform, target)
                record_run(inv, "upgrade", env, parameters, "rolled back (resumed)", details=back)
                return {**result, **back, "outcome": "rolled back (resumed)"}
            pending = snapshot.interrupted(target, env.name)
            if pending is not None:
                raise RefusedError(f"an upgrade of {env.name} was interrupted ({pending.reason}, {pending.at}): put "
                                   f"the previous state back with odoops upgrade {env.name} --resume-rollback")
            with connect(target) as conn:
                problems = odoo.check_update_request(conn, modules)
                before = odoo.module_states(conn)
            if problems:
                raise RefusedError(f"{env.name} cannot be updated: {problems[0]}" +
                                   (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
            if code is not None:
                series = ".".join((before.get("base", (None, "0.0"))[1] or "0.0").split(".")[:2])
                releases.check_release(Path(code), modules or [], series)
                releases.current_release(Path(env.addons_link))
            clock = time.monotonic()
            if env.is_production:
                from flows.backup import backup_flow
                from flows.verify import verify_flow

                backup_id = backup_flow(env.name, kind="pre-upgrade", inventory=inventory)["backup_id"]
                verify_flow(backup_id, inventory=inventory)
                result["backup_id"] = backup_id
                result["phases"]["backup"] = time.monotonic() - clock
            logfile = Path(tempfile.mkdtemp(prefix=f"odoops-upgrade-{env.name}-")) / "update.log"
            result["log"] = str(logfile)
            reason = f"upgrade -u {','.join(modules) if modules else 'all'}"
            rollback: dict[str, Any] = {"put_back": False, "platform": platform, "target": target}
            clock = time.monotonic()
            platform.stop()
            failure: Exception | None = None
            try:
                with transaction() as txn:
                    snap = take_snapshot(target, env, reason)
                    _ROLLBACKS[snap.database] = rollback
                    txn.set("snapshot", snap)
                    result["snapshot"] = snap.database
                    result["phases"]["snapshot"] = time.monotonic() - clock
                    if code is not None:
                        link = Path(env.addons_link)
                        previous = switch_code(link, Path(code))
                        rollback["code"] = (link, previous)
                        snapshot.annotate(target, snap, code={"link": str(link), "previous": str(previous)})
                    run = run_update(platform, target, snap, modules, timeout_seconds, logfile)
                    result["errors"], result["phases"]["update"] = run.errors, run.seconds
                    clock = time.monotonic()
                    result["checks"] = start_and_verify(platform, env, target)
                    result["phases"]["start and verify"] = time.monotonic() - clock
            except Exception as exc:  # noqa: BLE001 - every failure is reported with the rollback's outcome
                failure = exc
            finally:
                _ROLLBACKS.pop(result["snapshot"] or "", None)
            if failure is None:
                with connect(target) as conn:
                    after = odoo.module_states(conn)
                snapshot.keep(target, snap)
                result["outcome"] = "success"
            else:
                if result["snapshot"] is None:  # the snapshot itself failed: nothing was changed
                    platform.start()
                    raise failure
                if not rollback["put_back"]:
                    raise UpgradeFailed(f"{env.name}: the update failed ({failure}) and putting the snapshot back "
                                        f"failed too: the snapshot is {result['snapshot']}; run odoops upgrade "
                                        f"{env.name} --resume-rollback") from failure
                clock = time.monotonic()
                result["rollback_checks"] = verify_serving(env, target)
                result["phases"]["rollback verification"] = time.monotonic() - clock
                with connect(target) as conn:
                    after = odoo.module_states(conn)
                result["outcome"] = "rolled back"
                result["failure"] = str(failure)
            names = modules or [n for n, (s, _) in before.items() if s == "installed"]
            result["versions"] = {m: (before[m][1], after.get(m, (None, None))[1]) for m in names}
    except Exception as exc:
        record_run(inv, "upgrade", env, parameters, f"failed: {exc}", details={"snapshot": result["snapshot"]})
        raise
    create_markdown_artifact(markdown=_markdown(env, result), key=f"upgrade-{env.name.lower().replace('_', '-')}",
                             description=f"upgrade of {env.name}: {result['outcome']}")
    record_run(inv, "upgrade", env, parameters, result["outcome"], [result["backup_id"]] if result.get("backup_id")
               else [], details={k: result[k] for k in ("snapshot", "versions", "errors", "phases", "log")})
    if result["outcome"] == "rolled back":
        problems = result["rollback_checks"]["problems"]
        state = "and serves again" if not problems else f"but does not serve ({problems[0]})"
        logger.error("update failed: %s; rolled back to the exact previous state %s", result["failure"], state)
        raise UpgradeFailed(f"{env.name}: {result['failure']}: rolled back to the exact previous state, {state}; "
                            f"update log: {result['log']}")
    logger.info("upgrade of %s succeeded; snapshot %s kept for a manual rollback", env.name, result["snapshot"])
    return result
