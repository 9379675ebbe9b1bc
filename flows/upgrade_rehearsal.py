"""Upgrade rehearsal: the same update on a neutralized copy; the environment itself is never touched.

What Odoo.sh's "Upgrade" tab gives a person before they upgrade production, for a self-hosted Odoo:

1. Preflight as the upgrade does (modules installed and stable, the new release holds them at the
   database's series).
2. A fresh backup of the environment (verified by the restore that follows): the copy is what production
   is now, and the run also proves the backup restores.
3. The backup restored into a scratch database (``odoops_scratch_rehearsal_…``) and a filestore folder
   beside the environment's, then neutralized (crons, mail, payment providers off).
4. The update run there with the environment's own config, the new release folder taking the place of
   ``addons_link`` in the addons path (the link the live Odoo runs from is not touched), with its time limit.
5. The report: each phase's duration, the update log's error signatures, module states and versions
   before and after, row-count changes per table, and a verdict; as artifacts, an audit record and
   ``--json``. The scratch copy is dropped unless ``keep``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.upgrade import upgrade_command
from flows.verify import locate_backup
from odoops.errors import ConfigError, RefusedError
from odoops.platforms import platform_for
from odoops.runtime import record_run, resolve, run_name
from tasks import odoo, releases
from tasks.drill import SCRATCH_PREFIX, restore_into_scratch, scratch_name
from tasks.postgres import connect, drop_database, table_row_counts


def _verdict(run: odoo.UpdateRun, after: dict[str, tuple[str, str | None]]) -> str:
    left = sorted(n for n, (s, _) in after.items() if s in odoo.TRANSIENT_STATES)
    if run.failure:
        return f"would fail: {run.failure}"
    if left:
        return f"would fail: modules left half-way: {', '.join(left)}"
    return "would succeed"


@flow(name="upgrade-rehearsal", flow_run_name=run_name("upgrade-rehearsal/{environment}/{modules}"))
def rehearse_upgrade_flow(environment: str, modules: list[str] | None = None, all_modules: bool = False,
                          code: str | None = None, command: str | None = None, timeout_seconds: float = 1800,
                          keep: bool = False, inventory: str | None = None) -> dict[str, Any]:
    """Rehearse updating MODULES (or all) of ENVIRONMENT, with CODE if given, on a neutralized copy."""
    parameters = {"environment": environment, "modules": modules, "all_modules": all_modules, "code": code,
                  "command": command, "timeout_seconds": timeout_seconds, "keep": keep}
    inv, env = resolve(environment, inventory)
    method = upgrade_command(env, command)
    if not env.odoo_bin or env.ssh is not None:
        raise ConfigError(f"environment {env.name}: a rehearsal runs the environment's odoo_bin on this host: "
                          "name odoo_bin in the inventory (and run odoops on the Odoo host)")
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
                series = odoo.series_of(odoo.module_states(conn))
            if problems:
                raise RefusedError(f"{env.name} cannot be updated: {problems[0]}")
            if code is not None:
                releases.check_release(Path(code), modules or [], series)
            clock = time.monotonic()
            from flows.backup import backup_flow

            result["backup_id"] = backup_flow(env.name, kind="pre-upgrade", inventory=inventory)["backup_id"]
            phases["backup"] = time.monotonic() - clock
            scratch = scratch_name("rehearsal")
            folder = Path(env.filestore).parent / scratch  # <data_dir>/filestore/<scratch>: where Odoo looks
            logfile = Path(tempfile.mkdtemp(prefix=f"odoops-rehearsal-{env.name}-")) / "update.log"
            try:
                clock = time.monotonic()
                _, repo = locate_backup(inv, result["backup_id"])
                restore_into_scratch(repo, result["backup_id"], target, scratch, folder)
                platform.run_odoo(["neutralize", "-d", scratch])  # Odoo's own, as a staging copy gets it
                with connect(target.with_dbname(scratch)) as conn:
                    odoo.refresh_copy_identity(conn)  # never mistaken for the environment by Odoo's services
                    before, counts_before = odoo.module_states(conn), table_row_counts(conn)
                phases["copy"] = time.monotonic() - clock
                logger.info("rehearsing on %s (a neutralized copy of backup %s)", scratch, result["backup_id"])
                run = odoo.update_modules(platform, scratch, modules, method.timeout if method and method.timeout
                                          else timeout_seconds, logfile, extra_args=extra, command=method)
                phases["update"] = run.seconds
                with connect(target.with_dbname(scratch)) as conn:
                    after, counts_after = odoo.module_states(conn), table_row_counts(conn)
            finally:
                if keep:
                    result["kept"] = {"database": scratch, "filestore": str(folder)}
                else:
                    drop_database(target, scratch, only_scratch_prefix=SCRATCH_PREFIX)
                    shutil.rmtree(folder, ignore_errors=True)
    except Exception as exc:
        record_run(inv, "upgrade-rehearsal", env, parameters, f"failed: {exc}")
        raise
    names = modules or [n for n, (s, _) in before.items() if s == "installed"]
    result.update({
        "verdict": _verdict(run, after), "errors": run.errors, "log": run.log,
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
