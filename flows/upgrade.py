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

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import changes
from flows.changes import ChangeFailed, requirements, verify_serving
from odoops import release_history
from odoops.errors import ConfigError, RefusedError
from odoops.inventory import UpgradeCommand
from odoops.platforms import platform_for
from odoops.runtime import record_run, resolve, run_name
from odoops.slots import environment_slot
from tasks import odoo, releases
from tasks.postgres import connect
from tasks.restore_steps import confirm_production

__all__ = ["UpgradeFailed", "upgrade_flow", "verify_serving"]


class UpgradeFailed(ChangeFailed):
    """The update failed and the environment was put back as it was (or could not be: the message says)."""


def upgrade_command(env, name: str | None) -> UpgradeCommand | None:
    """The inventory's upgrade command NAME (``update``, the default, needs none)."""
    if name in (None, "update"):
        return env.upgrade_commands.get("update")
    if name not in env.upgrade_commands:
        known = ", ".join(["update", *sorted(env.upgrade_commands)])
        raise ConfigError(f"environment {env.name} has no upgrade command {name!r} (known: {known}): define it under "
                          "upgrade_commands: in the inventory")
    return env.upgrade_commands[name]


REHEARSAL_DAYS = 7  # a rehearsal older than this says little about today's database


def last_rehearsal(inv, env) -> dict[str, Any] | None:
    """The newest upgrade rehearsal of ``env`` within REHEARSAL_DAYS, from the audit trail."""
    from datetime import UTC, datetime, timedelta

    from odoops.audit import read_audit
    from odoops.runtime import audit_repository

    since = (datetime.now(UTC) - timedelta(days=REHEARSAL_DAYS)).isoformat(timespec="seconds")
    runs = [r for r in read_audit(audit_repository(inv, env).store, env.name)
            if r["runbook"] == "upgrade-rehearsal" and r["time"] >= since]
    return runs[-1] if runs else None


def _plan(inv, env, modules: list[str] | None, code: str | None, backup_id: str) -> str:
    rehearsal = last_rehearsal(inv, env)
    if rehearsal is None:
        seen = f"**no rehearsal in the last {REHEARSAL_DAYS} days** (odoops upgrade {env.name} … --rehearse)"
    else:
        seconds = sum((rehearsal["details"].get("phases") or {}).values())
        seen = (f"rehearsal of {rehearsal['time'][:16]} (modules {rehearsal['parameters'].get('modules') or 'all'}): "
                f"**{rehearsal['outcome']}** in {seconds:.0f} s")
    return "\n".join([f"**Upgrade {env.name}** ({env.stage})", "", f"Modules: {', '.join(modules or []) or 'all'}  ",
                      f"New code: `{code or '- (the current release)'}`  ", f"Pre-upgrade backup: `{backup_id}`  ",
                      f"Last rehearsal: {seen}"])


def _markdown(env, result: dict[str, Any]) -> str:
    lines = [f"# Upgrade of {env.name}: {result['outcome']}", "", f"Modules: {result['modules'] or 'all'}  ",
             f"Snapshot: `{result['snapshot']}`  ", f"Update log: `{result['log']}`", "",
             "| phase | seconds |", "|---|---:|", *[f"| {k} | {v:.1f} |" for k, v in result["phases"].items()], "",
             "| module | before | after |", "|---|---|---|",
             *[f"| {m} | {v[0]} | {v[1]} |" for m, v in result["versions"].items()]]
    if result["errors"]:
        lines += ["", "Errors in the update log:", *[f"- {e['count']}× {e['level']} {e['signature']}"
                                                      for e in result["errors"]]]
    return "\n".join(lines) + "\n"


@flow(name="upgrade", flow_run_name=run_name("upgrade/{environment}/{modules}"))
def upgrade_flow(environment: str, modules: list[str] | None = None, all_modules: bool = False,
                 code: str | None = None, command: str | None = None, timeout_seconds: float = 1800,
                 confirm: str | None = None,
                 resume_rollback: bool = False, approval_timeout_seconds: float = 3600,
                 inventory: str | None = None) -> dict[str, Any]:
    """Update MODULES (or all) of ENVIRONMENT, with its current code or the release folder CODE (pointed at by
    the environment's addons_link); any failure puts back the exact previous state, code included.
    Production: CONFIRM is its name, else the run waits for an approval showing the last rehearsal."""
    parameters = {"environment": environment, "modules": modules, "all_modules": all_modules, "code": code,
                  "command": command,
                  "timeout_seconds": timeout_seconds, "confirm": confirm, "resume_rollback": resume_rollback}
    inv, env = resolve(environment, inventory)
    requirements(env)
    if code is not None and not env.addons_link:
        raise ConfigError(f"environment {env.name}: --code needs addons_link in the inventory (the link its "
                          "addons_path names, which odoops points at the new release folder): add it")
    if not resume_rollback and bool(modules) == all_modules:
        raise ConfigError("name the modules to update (--modules a,b) or update them all (--all), not both")
    method = upgrade_command(env, command)
    if method is not None and method.kind == "openupgrade" and not all_modules:
        raise ConfigError(f"upgrade command {method.name} (OpenUpgrade) updates every module: pass --all")
    logger = get_run_logger()
    if env.is_production and confirm is not None and confirm != env.name:
        confirm_production(env, confirm)  # refuses a confirmation that names another environment
    result: dict[str, Any] = {"environment": env.name, "modules": modules, "phases": {}, "errors": [],
                              "versions": {}, "snapshot": None, "log": None, "outcome": "failed"}
    try:
        with environment_slot(env.name), platform_for(env) as platform, platform.database() as target:
            if resume_rollback:
                back = changes.resume_rollback(env, platform, target)
                record_run(inv, "upgrade", env, parameters, "rolled back (resumed)", details=back)
                return {**result, **back, "outcome": "rolled back (resumed)"}
            blocked = release_history.interrupted_change(inv, env, target)
            if blocked:
                raise RefusedError(blocked)
            with connect(target) as conn:
                problems = odoo.check_update_request(conn, modules)
                before = odoo.module_states(conn)
            if problems:
                raise RefusedError(f"{env.name} cannot be updated: {problems[0]}" +
                                   (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
            if code is not None:
                releases.check_release(Path(code), modules or [], odoo.series_of(before))
                releases.current_release(Path(env.addons_link))
            if env.is_production:
                from flows.backup import backup_flow
                from flows.verify import verify_flow

                clock = time.monotonic()
                backup_id = backup_flow(env.name, kind="pre-upgrade", inventory=inventory)["backup_id"]
                verify_flow(backup_id, inventory=inventory)
                result["backup_id"] = backup_id
                result["phases"]["backup"] = time.monotonic() - clock
                if confirm != env.name:
                    changes.approve(env, "upgrade", _plan(inv, env, modules, code, backup_id), approval_timeout_seconds)
            logfile = Path(tempfile.mkdtemp(prefix=f"odoops-upgrade-{env.name}-")) / "update.log"
            change = changes.apply(env, platform, target, changes.Change(
                runbook="upgrade", reason=f"upgrade -u {','.join(modules) if modules else 'all'}", modules=modules,
                release={"path": code} if code is not None else None, logfile=logfile, command=method,
                timeout=(method.timeout if method and method.timeout else timeout_seconds)))
            with connect(target) as conn:
                after = odoo.module_states(conn)
            names = modules or [n for n, (s, _) in before.items() if s == "installed"]
            result.update(snapshot=change.snapshot, log=str(logfile), errors=change.errors, outcome=change.outcome,
                          phases={**result["phases"], **change.phases}, checks=change.checks,
                          versions={m: (before[m][1], after.get(m, (None, None))[1]) for m in names})
            if change.failure:
                result.update(failure=change.failure, rollback_checks=change.rollback_checks)
            if code is not None:  # new code: the environment's release history says what runs now
                release_history.record_release(
                    inv, env, action="upgrade", release={"commit": None, "path": code},
                    previous={"commit": None, **(change.previous_release or {})}, outcome=change.outcome,
                    backup_id=result.get("backup_id"), snapshot=change.snapshot, modules_updated=modules or ["all"],
                    details={"failure": change.failure})
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
