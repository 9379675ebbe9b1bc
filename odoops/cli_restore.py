"""``odoops restore``, ``odoops restore undo`` and ``odoops anonymize``."""


from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from odoops.cli import InventoryOpt, JsonOpt, console, fail, operator_errors, rich_progress

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

                result = restore_flow(source, to, neutralize=False if no_neutralize else None, anonymize=anonymize,
                                      rules=rules, confirm=confirm, allow_version_change=allow_version_change,
                                      inventory=inventory)
        if as_json:
            print(json.dumps(result, indent=1, default=str))
        elif source == "undo":
            console.print(f"[green]{result['environment']} is back[/] to its state before the last restore")
        else:
            console.print(f"[green]restored {result['source']} into {result['environment']}[/]: "
                          f"{result['tables']} tables, {result['rows']:,} rows, {result['files']} files; neutralized "
                          f"{result['neutralized']}, anonymized {result['anonymized']}; undo with "
                          f"`odoops restore undo {result['environment']}`")

    @app.command("anonymize")
    def anonymize_env(environment: str,
                      rules: Annotated[str | None, typer.Option("--rules", help="Rules YAML.")] = None,
                      inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
        """Anonymize the database of a non-production ENVIRONMENT in place (key from ODOOPS_ANONYMIZE_KEY)."""
        import json

        with operator_errors():
            from flows.anonymize import anonymize_flow

            report = anonymize_flow(environment, rules=rules, inventory=inventory)
        if as_json:
            print(json.dumps(report, indent=1, default=str))
        else:
            console.print(f"[green]{environment} anonymized[/]: residue scan clean "
                          f"({sum(report['rows'].values()):,} rows rewritten)")
