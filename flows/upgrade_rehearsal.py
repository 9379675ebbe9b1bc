"""Upgrade rehearsal: the same update on a neutralized copy; the environment itself is never touched.

What Odoo.sh's "Upgrade" tab gives a person before they upgrade production, for a self-hosted Odoo:

1. Preflight as the upgrade does (modules installed and stable; the new code holds them at the database's
   series; for ``--to SERIES`` the target reports SERIES and holds every installed module at it).
2. A fresh backup of the environment (verified by the restore that follows): the copy is what production
   is now, and the run also proves the backup restores.
3. The backup restored into a scratch database (``odoops_scratch_rehearsal_…``) and a filestore folder
   beside the environment's (on the host, or in the container's data volume), then neutralized by Odoo
   (crons, mail, payment providers off).
4. The update run there with the environment's own config, with its time limit: on a host the new release
   folder takes the place of ``addons_link`` in the addons path (the link the live Odoo runs from is not
   touched); in a container the one-off runs the target image (the running container is not touched).
5. The report: each phase's duration, the update log's error signatures, module states and versions
   before and after, row-count changes per table, and a verdict (the update's outcome, modules left
   half-way, main tables that lost rows, the series reached), as artifacts, an audit record and
   ``--json``. The scratch copy is dropped unless ``keep``.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.upgrade import check_target, target_release, upgrade_command
from flows.verify import locate_backup
from odoops.errors import ConfigError, RefusedError
from odoops.platforms import platform_for
from odoops.runtime import record_run, resolve, run_name
from tasks import odoo, releases
from tasks.drill import SCRATCH_PREFIX, restore_into_scratch, scratch_name
from tasks.health import thresholds_for
from tasks.postgres import connect, drop_database, table_row_counts


def _verdict(env, run: odoo.UpdateRun, after: dict[str, tuple[str, str | None]], rows_before: dict[str, int],
             rows_after: dict[str, int], to_series: str | None) -> str:
    left = sorted(n for n, (s, _) in after.items() if s in odoo.TRANSIENT_STATES)
    lost = odoo.rows_lost(rows_before, rows_after, thresholds_for(env).rows_shrink_tolerance)
    if run.failure:
        return f"would fail: {run.failure}"
    if left:
        return f"would fail: modules left half-way: {', '.join(left)}"
    if lost:
        return f"would fail: the update deleted rows: {lost[0]}"
    if to_series and odoo.series_of(after) != to_series:
        return f"would fail: the database's base module is at {odoo.series_of(after)} after it, not {to_series}"
    return "would succeed"


@flow(name="upgrade-rehearsal", flow_run_name=run_name("upgrade-rehearsal/{environment}/{modules}"))
def rehearse_upgrade_flow(environment: str, modules: list[str] | None = None, all_modules: bool = False,
                          code: str | None = None, command: str | None = None, timeout_seconds: float = 1800,
                          to_series: str | None = None, image: str | None = None,
                          keep: bool = False, inventory: str | None = None) -> dict[str, Any]:
    """Rehearse updating MODULES (or all) of ENVIRONMENT, with CODE (host) or IMAGE (docker) if given, or a major
    upgrade TO_SERIES, on a neutralized copy; the environment is not touched."""
    parameters = {"environment": environment, "modules": modules, "all_modules": all_modules, "code": code,
                  "command": command, "to_series": to_series, "image": image, "timeout_seconds": timeout_seconds,
                  "keep": keep}
    inv, env = resolve(environment, inventory)
    method = upgrade_command(env, command)
    if env.ssh is not None or (env.platform == "host" and not env.odoo_bin):
        raise ConfigError(f"environment {env.name}: a rehearsal runs the environment's odoo_bin on this host: "
                          "name odoo_bin in the inventory (and run odoops on the Odoo host)")
    if to_series is not None:
        if modules:
            raise ConfigError("--to upgrades every module: drop --modules")
        if env.platform == "host":
            raise ConfigError(f"environment {env.name}: rehearsing a major upgrade runs the target's Odoo, which on a "
                              "host is the live link's: restore a backup into a staging environment and upgrade that")
        all_modules = True
    if bool(modules) == all_modules:
        raise ConfigError("name the modules to update (--modules a,b) or update them all (--all), not both")
    extra: list[str] = []
    if code is not None:
        if not env.addons_link:
            raise ConfigError(f"environment {env.name}: --code needs addons_link in the inventory: add it")
        config = releases.config_path(list(env.odoo_bin))
        if config is None:
            raise ConfigError(f"environment {env.name}: odoo_bin names no config file (-c FILE): add it")
        extra = ["--addons-path", releases.addons_path_with(config, Path(env.addons_link), Path(code))]
    logger = get_run_logger()
    phases: dict[str, float] = {}
    result: dict[str, Any] = {"environment": env.name, "modules": modules, "phases": phases, "kept": None}
    try:
        with platform_for(env) as platform, platform.database() as target:
            with connect(target) as conn:
                problems = odoo.check_update_request(conn, modules)
                states = odoo.module_states(conn)
            if problems:
                raise RefusedError(f"{env.name} cannot be updated: {problems[0]}")
            release = target_release(env, platform, code, None, image)
            check_target(env, platform, release, states, modules, to_series)
            clock = time.monotonic()
            from flows.backup import backup_flow

            result["backup_id"] = backup_flow(env.name, kind="pre-upgrade", inventory=inventory)["backup_id"]
            phases["backup"] = time.monotonic() - clock
            scratch = scratch_name("rehearsal")
            folders, location = platform.filestore_folders(), platform.filestore_location()
            folder = posixpath.join(posixpath.dirname(location.rstrip("/")), scratch)  # <data_dir>/filestore/<scratch>
            logfile = Path(tempfile.mkdtemp(prefix=f"odoops-rehearsal-{env.name}-")) / "update.log"
            local = Path(tempfile.mkdtemp(prefix="odoops-rehearsal-files-")) / scratch
            limits = thresholds_for(env)
            try:
                clock = time.monotonic()
                _, repo = locate_backup(inv, result["backup_id"])
                restore_into_scratch(repo, result["backup_id"], target, scratch, local)
                folders.import_tree(local, folder)  # where Odoo looks: beside the environment's own
                platform.run_odoo(["neutralize", "-d", scratch])  # Odoo's own, as a staging copy gets it
                with connect(target.with_dbname(scratch)) as conn:
                    odoo.refresh_copy_identity(conn)  # never mistaken for the environment by Odoo's services
                    before, counts_before = odoo.module_states(conn), table_row_counts(conn)
                    rows_before = odoo.main_row_counts(conn, limits.rows_tables_over_mb)
                phases["copy"] = time.monotonic() - clock
                if release is not None and "image" in release:
                    platform.switch_release(release)  # this run's one-offs only: the container is never started
                logger.info("rehearsing on %s (a neutralized copy of backup %s)", scratch, result["backup_id"])
                run = odoo.update_modules(platform, scratch, modules, method.timeout if method and method.timeout
                                          else timeout_seconds, logfile, extra_args=extra, command=method)
                phases["update"] = run.seconds
                with connect(target.with_dbname(scratch)) as conn:
                    after, counts_after = odoo.module_states(conn), table_row_counts(conn)
                    rows_after = odoo.main_row_counts(conn, limits.rows_tables_over_mb)
            finally:
                shutil.rmtree(local.parent, ignore_errors=True)
                if keep:
                    result["kept"] = {"database": scratch, "filestore": folder}
                else:
                    drop_database(target, scratch, only_scratch_prefix=SCRATCH_PREFIX)
                    if folders.exists(folder):
                        folders.remove(folder)
    except Exception as exc:
        record_run(inv, "upgrade-rehearsal", env, parameters, f"failed: {exc}")
        raise
    names = modules or [n for n, (s, _) in before.items() if s == "installed"]
    result.update({
        "verdict": _verdict(env, run, after, rows_before, rows_after, to_series), "errors": run.errors,
        "log": run.log, "series": f"{odoo.series_of(before)} → {odoo.series_of(after)}",
        "modules_after": {m: {"state": f"{before[m][0]} → {after.get(m, ('?', None))[0]}",
                              "version": f"{before[m][1]} → {after.get(m, (None, None))[1]}"} for m in names},
        "row_changes": {t: counts_after.get(t, 0) - counts_before.get(t, 0)
                        for t in sorted(set(counts_before) | set(counts_after))
                        if counts_after.get(t, 0) != counts_before.get(t, 0)},
    })
    create_markdown_artifact(
        markdown=f"# Upgrade rehearsal of {env.name}: {result['verdict']}\n\nOn a neutralized copy of backup "
                 f"`{result['backup_id']}`; {env.name} itself was not touched.\n\n| phase | seconds |\n|---|---:|\n"
                 + "".join(f"| {k} | {v:.1f} |\n" for k, v in phases.items())
                 + "".join(f"\n- {e['count']}× {e['level']} {e['signature']}" for e in run.errors),
        key=f"upgrade-rehearsal-{env.name.lower().replace('_', '-')}", description=result["verdict"])
    create_table_artifact([{"module": m, **v} for m, v in result["modules_after"].items()],
                          key=f"upgrade-rehearsal-modules-{env.name.lower().replace('_', '-')}",
                          description="module states and versions before → after, on the copy")
    record_run(inv, "upgrade-rehearsal", env, parameters, result["verdict"], [result["backup_id"]],
               {"errors": run.errors, "phases": phases, "row_changes": result["row_changes"]})
    return result
