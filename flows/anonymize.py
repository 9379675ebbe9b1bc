"""Runbook: anonymize an existing non-production database in place, with proof.

Production is refused outright. The engine (tasks/anonymize.py) samples personal values first, rewrites
them set-based, VACUUM FULLs the touched tables and scans every text column and text attachment for
the samples; any residue fails the run and leaves the database marked ``odoops.anonymization=residue``.
The report is an artifact, goes into the audit record and, with ``report_file``, into a JSON file (table,
column, row ids and rule names: never a value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from odoops.errors import RefusedError
from odoops.platforms import platform_for
from odoops.runtime import record_run, resolve, run_name
from odoops.slots import environment_slot
from tasks.postgres import connect


@flow(name="anonymize", flow_run_name=run_name("anonymize/{environment}"))
def anonymize_flow(environment: str, rules: str | None = None, inventory: str | None = None,
                   report_file: str | None = None) -> dict[str, Any]:
    """Replace ENVIRONMENT's personal data, irreversibly, and prove none is left."""
    from tasks.anonymize import ONE_TIME_KEY_NOTE, ResidueFound, anonymize, key_from_env, key_source

    inv, env = resolve(environment, inventory)
    if env.is_production:
        raise RefusedError(f"refusing to anonymize {env.name}: it is production (restore a copy and anonymize that)")
    parameters = {"environment": environment, "rules": rules, "key": key_source()}
    if parameters["key"] == "one-time":
        get_run_logger().warning("%s", ONE_TIME_KEY_NOTE)
    try:
        with environment_slot(env.name), platform_for(env) as platform, platform.database() as conninfo, \
                connect(conninfo) as conn:
            report = anonymize(conn, rules, key_from_env(), filestore_path=Path(env.filestore))
    except ResidueFound as exc:
        if report_file:
            exc.report.write(report_file)  # where the residue is, so the operator can look at those rows
        record_run(inv, "anonymize", env, parameters, f"failed: {exc}", [],  # row ids: in the report file only
                   {"residue": [{k: r[k] for k in ("table", "column", "count", "rules")}
                                for r in exc.report.as_dict()["residue"]]})
        raise
    except Exception as exc:
        record_run(inv, "anonymize", env, parameters, f"failed: {exc}")
        raise
    if report_file:
        report.write(report_file)
    data = {**report.as_dict(), "key": parameters["key"]}
    create_table_artifact(data["updated"], key="anonymization-columns", description="Values rewritten per column")
    create_markdown_artifact(f"## Anonymization of {env.name}\n\n- rows rewritten per table: {data['rows']}\n"
                             f"- residue scan of every text column and text attachment: **clean** "
                             f"({data['needles']} sampled originals searched for)\n"
                             f"- seconds: {data['seconds']}\n", key="anonymization-report")
    record_run(inv, "anonymize", env, parameters, "success", [], {"rows": data["rows"], "residue": data["residue"]})
    return data
