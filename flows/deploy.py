"""Deploy runbook: one git commit of the user's addons into an environment, rolled back by itself on failure.

1. Resolve the environment (``git``, ``addons_link``, ``odoo_bin``, stop and start commands), take its
   slot, refuse while an interrupted change waits for ``--resume-rollback``.
2. The release: fetch the repository, resolve REF to a commit, export that commit into
   ``<releases_dir>/<commit>`` (complete or not at all).
3. Plan, touching nothing: the modules to update (Odoo.sh's rule: installed modules whose manifest
   version differs from the database's; or any file changed, all, none), new modules reported and never
   installed, every manifest of the database's Odoo series, no module half-way through an operation.
4. Production: a verified backup, then an approval showing the commits since the running release, the
   modules and the backup id (``--yes`` from the CLI, the pause form in the Prefect UI; a timeout rejects).
5. The change (flows/changes.py): with updates, snapshot → code switched → ``-u`` → start → verify; without,
   code switched → restart → verify (the downtime reported). Any failure puts back the exact previous state.
6. The release history, the audit record and the artifacts say what runs now.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import changes
from flows.changes import ChangeFailed, requirements
from odoops import release_history
from odoops.errors import ConfigError, RefusedError
from odoops.inventory import Environment, Inventory
from odoops.platforms import platform_for
from odoops.runtime import record_run, resolve, run_name
from odoops.slots import environment_slot
from tasks import git, odoo, releases
from tasks.postgres import connect

APPROVAL_TIMEOUT_SECONDS = 3600


class DeployFailed(ChangeFailed):
    """The deploy failed and the environment was put back as it was (or could not be: the message says)."""


def deploy_requirements(env: Environment, image: str | None) -> None:
    requirements(env, "a deploy")
    if env.git is None and image is None:
        raise ConfigError(f"environment {env.name}: a deploy needs git in the inventory (git: {{repository: URL}} says "
                          "where releases come from): add it")


def plan_markdown(env: Environment, plan: dict[str, Any]) -> str:
    commits = plan["commits"]
    return "\n".join([
        f"**Deploy {plan['commit'][:12]} ({plan['ref']}) to {env.name}** ({env.stage})", "",
        f"Running now: `{(plan['running'] or {}).get('commit') or plan['running_release']}`  ",
        f"Modules to update: {', '.join(plan['modules']) or 'none (a restart only)'}  ",
        f"New modules (not installed by a deploy): {', '.join(plan['new_modules']) or 'none'}  ",
        f"Pre-deploy backup: `{plan.get('backup_id') or '-'}`", "",
        f"Commits ({len(commits)}{'+' if len(commits) >= 50 else ''}):",
        *[f"- `{c['sha'][:10]}` {c['subject']}" for c in commits[:20]]])


def make_plan(env: Environment, inv: Inventory, platform, target, ref: str | None, image: str | None,
              update: str) -> dict[str, Any]:
    """Fetch, resolve, build and decide what the deploy will do; touches nothing the environment runs."""
    running = release_history.current(release_history.read_releases(inv, env))
    running_release = platform.running_release()
    with connect(target) as conn:
        states = odoo.module_states(conn)
        problems = odoo.check_update_request(conn, [])
    if problems:
        raise RefusedError(f"{env.name} cannot be deployed to: {problems[0]}")
    series = odoo.series_of(states)
    if image is not None:  # an image built elsewhere: its manifests are not at hand
        if update not in ("all", "none"):
            raise ConfigError("with --image odoops cannot read the release's manifests: pass --update all or "
                              "--update none, or deploy --ref so they are read from git")
        release = platform.release_from_image(image)
        modules = sorted(m for m, (state, _) in states.items() if state == "installed") if update == "all" else []
        return {"ref": image, "commit": release.get("commit") or release["image"], "release": release,
                "running": (running or {}).get("release"), "running_release": running_release, "modules": modules,
                "new_modules": [], "update_rule": update, "commits": [], "versions": {}}
    repo = git.mirror(env.git.repository)
    commit = git.resolve(repo, ref, env.git.repository)
    tree = git.commit_tree(repo, commit)
    addons = tree / env.git.subdir if env.git.subdir else tree
    old_commit = (running or {}).get("release", {}).get("commit")
    changed = git.changed_files(repo, old_commit, commit, env.git.subdir) if old_commit else None
    if update == "files" and changed is None:
        update = "version"  # no release recorded yet: the manifests decide
    manifests = releases.manifests(addons)
    if not manifests:
        raise RefusedError(f"commit {commit[:12]} has no addons (no */__manifest__.py"
                           + (f" under {env.git.subdir}" if env.git.subdir else "") + "): check git.subdir")
    modules, new = releases.modules_to_update(manifests, states, series, update, changed)
    releases.check_release(addons, sorted(m for m in manifests if states.get(m, ("",))[0] == "installed"), series)
    if old_commit:
        was = releases.manifests(git.commit_tree(repo, old_commit) / (env.git.subdir or "."))
        dropped = sorted(m for m in was if m not in manifests and states.get(m, ("",))[0] == "installed")
        if dropped:
            raise RefusedError(f"commit {commit[:12]} drops installed module(s) {', '.join(dropped)}: uninstall them "
                               "in Odoo first, or keep them in the release")
    release = {**platform.prepare_release(commit, tree, addons), "commit": commit, "ref": ref}
    return {"ref": ref, "commit": commit, "release": release, "running": (running or {}).get("release"),
            "running_release": running_release, "modules": modules, "new_modules": new, "update_rule": update,
            "commits": [c.__dict__ for c in git.commits_between(repo, old_commit, commit)],
            "versions": {m: (states.get(m, (None, None))[1], releases.full_version(manifests[m], series))
                         for m in modules}}


@flow(name="deploy", flow_run_name=run_name("deploy/{environment}/{ref}"))
def deploy_flow(environment: str, ref: str | None = None, image: str | None = None, update: str = "version",
                timeout_seconds: float = 1800,
                approved: bool = False, approval_timeout_seconds: float = APPROVAL_TIMEOUT_SECONDS,
                resume_rollback: bool = False, action: str = "deploy", inventory: str | None = None) -> dict[str, Any]:
    """Deploy git REF of the environment's addons repository (or, on containers, the existing IMAGE) to
    ENVIRONMENT; any failure puts back the exact previous state. UPDATE: version (modules whose manifest
    version changed), files, all or none. Production waits for an approval (APPROVED from the CLI's --yes)."""
    parameters = {"environment": environment, "ref": ref, "image": image, "update": update, "timeout_seconds": timeout_seconds,
                  "approved": approved, "resume_rollback": resume_rollback, "action": action}
    inv, env = resolve(environment, inventory)
    deploy_requirements(env, image)
    if not resume_rollback and bool(ref) == bool(image):
        raise ConfigError("name the release to deploy: --ref BRANCH|TAG|COMMIT (or, on containers, --image IMAGE)")
    logger = get_run_logger()
    result: dict[str, Any] = {"environment": env.name, "outcome": "failed", "phases": {}}
    try:
        with environment_slot(env.name), platform_for(env) as platform, platform.database() as target:
            if resume_rollback:
                return _resume(inv, env, platform, target, parameters)
            blocked = release_history.interrupted_change(inv, env, target)
            if blocked:
                raise RefusedError(blocked)
            clock = time.monotonic()
            plan = make_plan(env, inv, platform, target, ref, image, update)
            result.update(plan=plan, commit=plan["commit"], modules=plan["modules"])
            result["phases"]["release"] = time.monotonic() - clock
            logger.info("deploy %s (%s) to %s: update %s; new modules not installed: %s", plan["commit"][:12], ref,
                        env.name, plan["modules"] or "none (restart only)", plan["new_modules"] or "none")
            if plan["running"] and plan["running"].get("commit") == plan["commit"]:
                logger.info("%s already runs %s: deploying it again", env.name, plan["commit"][:12])
            if env.is_production:
                from flows.backup import backup_flow
                from flows.verify import verify_flow

                clock = time.monotonic()
                plan["backup_id"] = backup_flow(env.name, kind="pre-deploy", inventory=inventory)["backup_id"]
                verify_flow(plan["backup_id"], inventory=inventory)
                result["phases"]["backup"] = time.monotonic() - clock
                if not approved:
                    changes.approve(env, "deploy", plan_markdown(env, plan), approval_timeout_seconds)
            release = plan["release"]
            previous = {**(plan["running"] or {"commit": None}), **plan["running_release"]}
            release_history.record_release(inv, env, action=action, release=release, previous=previous,
                                           outcome="in-progress", backup_id=plan.get("backup_id"),
                                           modules_updated=plan["modules"])
            logfile = Path(tempfile.mkdtemp(prefix=f"odoops-deploy-{env.name}-")) / "update.log"
            try:
                change = changes.apply(env, platform, target, changes.Change(
                    runbook="deploy", reason=f"deploy {plan['commit'][:12]}", modules=plan["modules"],
                    release=release, timeout=timeout_seconds, logfile=logfile))
            except ChangeFailed:
                raise  # putting back failed: the in-progress record stays, the journal --resume-rollback reads
            except Exception as exc:  # the way back could not be prepared: nothing was changed
                release_history.record_release(inv, env, action=action, release=release, previous=previous,
                                               outcome=f"failed: {exc}", modules_updated=plan["modules"])
                raise
            result.update(outcome=change.outcome, snapshot=change.snapshot, errors=change.errors, checks=change.checks,
                          downtime=change.downtime, log=str(logfile) if change.updates else None,
                          phases={**result["phases"], **change.phases}, backup_id=plan.get("backup_id"))
            if change.failure:
                result.update(failure=change.failure, rollback_checks=change.rollback_checks)
            release_history.record_release(
                inv, env, action=action, release=release, previous=previous, outcome=change.outcome,
                backup_id=plan.get("backup_id"), snapshot=change.snapshot, modules_updated=plan["modules"],
                details={"failure": change.failure, "downtime_seconds": change.downtime, "phases": result["phases"]})
    except Exception as exc:
        record_run(inv, action, env, parameters, f"failed: {exc}", details={"commit": result.get("commit")})
        raise
    create_markdown_artifact(markdown=_markdown(env, result), key=f"{action}-{env.name.lower().replace('_', '-')}",
                             description=f"{action} of {result['commit'][:12]} to {env.name}: {result['outcome']}")
    record_run(inv, action, env, parameters, result["outcome"], [result["backup_id"]] if result.get("backup_id")
               else [], details={k: result.get(k) for k in ("commit", "modules", "snapshot", "errors", "phases",
                                                           "downtime")})
    if result["outcome"] == "rolled back":
        problems = result["rollback_checks"]["problems"]
        state = "and serves again" if not problems else f"but does not serve ({problems[0]})"
        logger.error("deploy failed: %s; rolled back to the exact previous state %s", result["failure"], state)
        raise DeployFailed(f"{env.name}: {result['failure']}: rolled back to the exact previous state, {state}"
                           + (f"; update log: {result['log']}" if result.get("log") else ""))
    logger.info("%s of %s to %s succeeded (downtime %.1f s)", action, result["commit"][:12], env.name,
                result["downtime"] or 0)
    return result


def _resume(inv: Inventory, env: Environment, platform, target, parameters: dict[str, Any]) -> dict[str, Any]:
    """Put back what a killed deploy left: its snapshot and code, or (a restart-only deploy) its code."""
    records = release_history.read_releases(inv, env)
    pending = records[-1] if records and records[-1]["outcome"] == "in-progress" else None
    back = changes.resume_rollback(env, platform, target, release=pending["previous"] if pending else None)
    if pending is not None:
        release_history.record_release(inv, env, action=pending["action"], release=pending["release"],
                                       previous=pending["previous"], outcome="rolled back (resumed)",
                                       snapshot=back["snapshot"], modules_updated=pending["modules_updated"])
    record_run(inv, parameters["action"], env, parameters, "rolled back (resumed)", details=back)
    return {"environment": env.name, "outcome": "rolled back (resumed)", **back}


def _markdown(env: Environment, result: dict[str, Any]) -> str:
    plan = result["plan"]
    lines = [f"# {plan['commit'][:12]} to {env.name}: {result['outcome']}", "", plan_markdown(env, plan), "",
             f"Snapshot: `{result.get('snapshot') or '- (a restart only)'}`  ",
             f"Downtime: {result['downtime']:.1f} s" if result.get("downtime") else "", "",
             "| phase | seconds |", "|---|---:|", *[f"| {k} | {v:.1f} |" for k, v in result["phases"].items()], "",
             "| module | before | after |", "|---|---|---|",
             *[f"| {m} | {a} | {b} |" for m, (a, b) in plan["versions"].items()]]
    if result.get("failure"):
        lines += ["", f"**Failure:** {result['failure']} — rolled back; after the rollback: "
                      f"{result['rollback_checks']['problems'] or 'serving'}"]
    return "\n".join(lines) + "\n"
