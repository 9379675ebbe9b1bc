"""Upgrade runbook: a module update run, or a major version upgrade, with automatic rollback to the exact
previous state.

1. Resolve the environment; the platform must be able to stop and start Odoo (``host``: ``odoo_bin``,
   ``stop_command``, ``start_command``; ``docker``: nothing more); production must be confirmed or approved.
2. Take the environment's slot; refuse while an interrupted upgrade waits for ``--resume-rollback``.
3. Preflight, touching nothing: the modules exist and are installed, no module is half-way through an
   install, update or removal; new code (a host's release folder, a container image) holds the modules at
   the database's series; for ``--to SERIES`` the target (image, or Odoo tree via ``odoo_link``) reports
   SERIES and holds every installed module, custom manifests at SERIES (``Platform.inspect_release``).
4. Production: a fresh backup, verified, then the approval (with the last rehearsal's verdict).
5. ``flows.changes.apply``: with Odoo stopped, in one Prefect transaction — snapshot, code switched, the
   upgrade command with its time limit and its log analysed, the main tables' rows checked, Odoo started
   and verified (no module half-way, ``/web/health``, the target series, a real login when configured).
6. Any failure rolls the transaction back: the snapshot's ``on_rollback`` hook stops Odoo, renames the
   snapshot into place, switches the code back and starts Odoo; verified again; both results reported.
7. Success keeps the snapshot (the two newest) for a later manual rollback. Artifacts, release history and
   an audit record.
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


def _describe(release: dict[str, str] | None, to_series: str | None) -> str | None:
    if release is None:
        return f"the current code, to {to_series}" if to_series else None
    what = release.get("tag") or ", ".join(f"{k} {v}" for k, v in release.items())
    return f"{what} (Odoo {to_series})" if to_series else what


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


def target_release(env, platform, code: str | None, odoo_tree: str | None, image: str | None) -> dict[str, str] | None:
    """The code to upgrade to: a host's addons release folder and/or Odoo tree, or a container image."""
    if image is not None:
        if code is not None or odoo_tree is not None:
            raise ConfigError("--image is the whole target of a container: do not add --code or --odoo")
        return platform.release_from_image(image)
    if code is None and odoo_tree is None:
        return None
    if not env.addons_link:
        raise ConfigError(f"environment {env.name}: --code and --odoo need addons_link in the inventory (the link "
                          "its addons_path names, which odoops points at the new release folder): add it")
    if odoo_tree is not None and not env.odoo_link:
        raise ConfigError(f"environment {env.name}: --odoo needs odoo_link in the inventory (the link odoo_bin and the "
                          "service run Odoo through, which odoops points at the new tree): add it")
    release = {"path": code or platform.running_release()["path"]}
    if odoo_tree is not None:
        release["odoo"] = odoo_tree
    return release


def check_target(env, platform, release: dict[str, str] | None, states, modules: list[str] | None,
                 to_series: str | None) -> None:
    """Preflight of the new code, touching nothing: a major upgrade's target (series, every installed module,
    their manifests' series); a module update's modules at the database's series in it."""
    if to_series is not None:
        target = platform.inspect_release(release or platform.running_release())
        problems = odoo.major_upgrade_problems(to_series, states, target)
    elif release is not None and "image" in release:
        target, series = platform.inspect_release(release), odoo.series_of(states)
        problems = [f"module {m} is not in image {release['tag']}: an update needs every module it updates"
                    for m in modules or [] if m not in target["modules"]]
        problems += [f"module {m} is version {target['modules'][m]} in image {release['tag']}, not a {series} "
                     f"version: this database runs Odoo {series}" for m in modules or []
                     if m in target["modules"] and target["modules"][m].count(".") >= 4
                     and not target["modules"][m].startswith(f"{series}.")]
    else:
        if release is not None:
            releases.check_release(Path(release["path"]), modules or [], odoo.series_of(states))
            releases.current_release(Path(env.addons_link))
        return
    if problems:
        raise RefusedError(f"{env.name} cannot be upgraded: {problems[0]}" +
                           (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


@flow(name="upgrade", flow_run_name=run_name("upgrade/{environment}/{modules}"))
def upgrade_flow(environment: str, modules: list[str] | None = None, all_modules: bool = False,
                 code: str | None = None, command: str | None = None, timeout_seconds: float = 1800,
                 confirm: str | None = None,
                 resume_rollback: bool = False, approval_timeout_seconds: float = 3600,
                 to_series: str | None = None, image: str | None = None, odoo_tree: str | None = None,
                 inventory: str | None = None) -> dict[str, Any]:
    """Update MODULES (or all) of ENVIRONMENT, with its current code or new code: the release folder CODE
    (pointed at by addons_link), an Odoo tree ODOO_TREE (odoo_link) or a container IMAGE; TO_SERIES makes it a
    major version upgrade (every module, the target checked first). Any failure puts back the exact previous
    state, code included. Production: CONFIRM is its name, else the run waits for an approval."""
    parameters = {"environment": environment, "modules": modules, "all_modules": all_modules, "code": code,
                  "command": command, "to_series": to_series, "image": image, "odoo_tree": odoo_tree,
                  "timeout_seconds": timeout_seconds, "confirm": confirm, "resume_rollback": resume_rollback}
    inv, env = resolve(environment, inventory)
    requirements(env)
    if to_series is not None:
        if modules:
            raise ConfigError("--to upgrades every module: drop --modules")
        all_modules = True
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
            release = target_release(env, platform, code, odoo_tree, image)
            check_target(env, platform, release, before, modules, to_series)
            if env.is_production:
                from flows.backup import backup_flow
                from flows.verify import verify_flow

                clock = time.monotonic()
                backup_id = backup_flow(env.name, kind="pre-upgrade", inventory=inventory)["backup_id"]
                verify_flow(backup_id, inventory=inventory)
                result["backup_id"] = backup_id
                result["phases"]["backup"] = time.monotonic() - clock
                if confirm != env.name:
                    changes.approve(env, "upgrade", _plan(inv, env, modules, _describe(release, to_series), backup_id),
                                    approval_timeout_seconds)
            logfile = Path(tempfile.mkdtemp(prefix=f"odoops-upgrade-{env.name}-")) / "update.log"
            change = changes.apply(env, platform, target, changes.Change(
                runbook="upgrade", reason=f"upgrade -u {','.join(modules) if modules else 'all'}"
                + (f" to {to_series}" if to_series else ""), modules=modules, release=release, logfile=logfile,
                command=method, timeout=(method.timeout if method and method.timeout else timeout_seconds),
                expect_series=to_series))
            with connect(target) as conn:
                after = odoo.module_states(conn)
            names = modules or [n for n, (s, _) in before.items() if s == "installed"]
            result.update(snapshot=change.snapshot, log=str(logfile), errors=change.errors, outcome=change.outcome,
                          phases={**result["phases"], **change.phases}, checks=change.checks,
                          versions={m: (before[m][1], after.get(m, (None, None))[1]) for m in names})
            if change.failure:
                result.update(failure=change.failure, rollback_checks=change.rollback_checks)
            if release is not None:  # new code: the environment's release history says what runs now
                release_history.record_release(
                    inv, env, action="upgrade", release={"commit": None, **release},
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
