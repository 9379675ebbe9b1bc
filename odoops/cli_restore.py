"""``odoops restore``, ``odoops restore undo`` and ``odoops anonymize``."""


from typing import Annotated

import typer


def _write_json(path: str, data: dict) -> None:
    """The anonymization part of a restore's result, as ``odoops anonymize --report`` writes it."""
    import json
    from pathlib import Path

    from odoops.errors import ConfigError

    try:
        Path(path).write_text(json.dumps({"clean": not data.get("residue"), **data}, indent=1, default=str) + "\n",
                              encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {path}: {exc.strerror}; give a writable --report path") from None


def _last_anonymization(environment: str, inventory: str | None) -> dict:
    """The anonymization report of the restore just done, from its audit record (the flow keeps it there)."""
    from odoops.audit import read_audit
    from odoops.runtime import audit_repository, resolve

    inv, env = resolve(environment, inventory)
    for record in reversed(read_audit(audit_repository(inv, env).store, env.name)):
        if record.get("runbook") == "restore":
            return (record.get("details") or {}).get("anonymization") or {}
    return {}


def register(app: typer.Typer) -> None:
    from odoops.cli import InventoryOpt, JsonOpt, console, err, fail, operator_errors, rich_progress

    @app.command("restore")
    def restore(source: Annotated[str, typer.Argument(help="Backup id, Odoo .zip/.dump file, s3://bucket/key, "
                                                      "or 'undo' followed by an environment.")],
                undo_env: Annotated[str | None, typer.Argument(metavar="[ENV]", help="With 'undo': the environment.")] = None,
                to: Annotated[str | None, typer.Option("--to", help="Target environment.")] = None,
                no_neutralize: Annotated[bool, typer.Option("--no-neutralize", help="Keep crons, mail and payment "
                                         "providers live (recorded in the audit trail).")] = False,
                anonymize: Annotated[bool, typer.Option("--anonymize", help="Replace personal data, irreversibly.")] = False,
                rules: Annotated[str | None, typer.Option("--rules", help="Anonymization rules YAML "
                                 "(default deployments/anonymize-rules.yaml).")] = None,
                confirm: Annotated[str | None, typer.Option("--confirm", help="Name of a production target.")] = None,
                report: Annotated[str | None, typer.Option("--report", metavar="FILE", help="With --anonymize: write "
                                  "the anonymization report (JSON: counts, residue table/column/row ids, never a "
                                  "value) to FILE.")] = None,
                allow_version_change: Annotated[bool, typer.Option("--allow-version-change")] = False,
                inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
        """Restore SOURCE into --to ENV atomically (neutralized unless --no-neutralize), or `restore undo ENV`."""
        import json

        with operator_errors(), rich_progress():
            if source == "undo":
                if not undo_env:
                    fail("restore undo needs the environment: odoops restore undo ENV")
                from flows.restore import restore_undo_flow

                result = restore_undo_flow(undo_env, confirm=confirm, inventory=inventory)
            else:
                if not to:
                    fail("restore needs a target: odoops restore SOURCE --to ENV")
                from flows.restore import restore_flow
                from tasks.anonymize import ResidueFound

                try:
                    result = restore_flow(source, to, neutralize=False if no_neutralize else None, anonymize=anonymize,
                                          rules=rules, confirm=confirm, allow_version_change=allow_version_change,
                                          inventory=inventory)
                except ResidueFound as exc:
                    if report:
                        exc.report.write(report)
                    raise
                if report and result.get("anonymized"):
                    _write_json(report, _last_anonymization(result["environment"], inventory))
        if as_json:
            print(json.dumps(result, indent=1, default=str))
        elif source == "undo":
            console.print(f"[green]{result['environment']} is back[/] to its state before the last restore")
        else:
            console.print(f"[green]restored {result['source']} into {result['environment']}[/]: "
                          f"{result['tables']} tables, {result['rows']:,} rows, {result['files']} files; neutralized "
                          f"{result['neutralized']}, anonymized {result['anonymized']}; undo with "
                          f"`odoops restore undo {result['environment']}`")
            if result.get("anonymization_key") == "one-time":
                from tasks.anonymize import ONE_TIME_KEY_NOTE

                err.print(f"note: {ONE_TIME_KEY_NOTE}", highlight=False, soft_wrap=True)

    @app.command("anonymize")
    def anonymize_env(environment: str,
                      rules: Annotated[str | None, typer.Option("--rules", help="Rules YAML.")] = None,
                      report_file: Annotated[str | None, typer.Option("--report", metavar="FILE", help="Write the "
                                             "report (JSON: counts, residue table/column/row ids, never a value) "
                                             "to FILE, also when residue fails the run.")] = None,
                      inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
        """Anonymize the database of a non-production ENVIRONMENT in place (key from ODOOPS_ANONYMIZE_KEY)."""
        import json

        with operator_errors():
            from flows.anonymize import anonymize_flow

            report = anonymize_flow(environment, rules=rules, inventory=inventory, report_file=report_file)
        if as_json:
            print(json.dumps(report, indent=1, default=str))
        else:
            console.print(f"[green]{environment} anonymized[/]: residue scan clean "
                          f"({sum(report['rows'].values()):,} rows rewritten)")
        if report.get("key") == "one-time":
            from tasks.anonymize import ONE_TIME_KEY_NOTE

            err.print(f"note: {ONE_TIME_KEY_NOTE}", highlight=False, soft_wrap=True)
