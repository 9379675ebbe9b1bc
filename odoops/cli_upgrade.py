"""``odoops upgrade``: module update runs with automatic rollback (flows/upgrade.py)."""

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from odoops.cli import InventoryOpt, JsonOpt, console, fail, operator_errors

    @app.command("upgrade")
    def upgrade(environment: str,
                modules: Annotated[str | None, typer.Option("--modules", "-m", metavar="A,B",
                                   help="Installed modules to update (odoo-bin -u A,B).")] = None,
                all_modules: Annotated[bool, typer.Option("--all", help="Update every module (-u all).")] = False,
                code: Annotated[str | None, typer.Option("--code", metavar="DIR", help="The new release folder: "
                                "the environment's addons_link is pointed at it, and back on rollback.")] = None,
                to_series: Annotated[str | None, typer.Option("--to", metavar="SERIES", help="A major version "
                                     "upgrade to SERIES (e.g. 18.0): every module, with --image (docker) or --odoo "
                                     "(host) as the target, checked before anything is touched.")] = None,
                image: Annotated[str | None, typer.Option("--image", metavar="IMAGE", help="Docker: the image to "
                                 "upgrade to (tag or id, already on the engine).")] = None,
                odoo_tree: Annotated[str | None, typer.Option("--odoo", metavar="DIR", help="Host: the Odoo source "
                                     "tree to upgrade to; the inventory's odoo_link is pointed at it.")] = None,
                command: Annotated[str | None, typer.Option("--command", metavar="NAME", help="How to upgrade: "
                                   "update (odoo-bin -u, the default), or a command of the environment's "
                                   "upgrade_commands (openupgrade, a script), each with its time limit.")] = None,
                timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS", help="Time limit of the "
                                   "update; past it the update is stopped and rolled back.")] = 1800,
                confirm: Annotated[str | None, typer.Option("--confirm", help="Name of a production target.")] = None,
                resume_rollback: Annotated[bool, typer.Option("--resume-rollback", help="Put back the snapshot of "
                                           "an upgrade whose run was killed.")] = False,
                rehearse: Annotated[bool, typer.Option("--rehearse", help="Run it on a neutralized copy (from a "
                                    "fresh backup) and report; the environment is not touched.")] = False,
                keep: Annotated[bool, typer.Option("--keep", help="With --rehearse: keep the scratch copy.")] = False,
                inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
        """Update modules of ENVIRONMENT; on any failure the exact previous state is put back by itself."""
        import json

        names = [m.strip() for m in modules.split(",") if m.strip()] if modules else None
        if to_series is not None:
            if names:
                fail("--to upgrades every module: drop --modules")
            all_modules = True
        if not resume_rollback and bool(names) == all_modules:
            fail("name the modules to update (--modules a,b) or update them all (--all)")
        if rehearse:
            with operator_errors():
                from flows.upgrade_rehearsal import rehearse_upgrade_flow

                result = rehearse_upgrade_flow(environment, modules=names, all_modules=all_modules, code=code,
                                               command=command, to_series=to_series, image=image,
                                               timeout_seconds=timeout, keep=keep, inventory=inventory)
            if as_json:
                print(json.dumps(result, indent=1, default=str))
            else:
                console.print(f"rehearsal of {environment}: [bold]{result['verdict']}[/] "
                              f"({', '.join(f'{k} {v:.0f} s' for k, v in result['phases'].items())})")
                for module, change in result["modules_after"].items():
                    console.print(f"  {module}: {change['version']} ({change['state']})")
            if not result["verdict"].startswith("would succeed"):  # exit 1: the runbook found a problem
                raise typer.Exit(1)
            return
        if confirm is None and not resume_rollback:
            from odoops.cli_deploy import production_approved

            confirm = environment if production_approved(environment, "upgrade", False, inventory,
                                                                  f"--confirm {environment}") else None
        with operator_errors():
            from flows.upgrade import upgrade_flow

            result = upgrade_flow(environment, modules=names, all_modules=all_modules, code=code, command=command,
                                  to_series=to_series, image=image, odoo_tree=odoo_tree, timeout_seconds=timeout,
                                  confirm=confirm, resume_rollback=resume_rollback, inventory=inventory)
        if as_json:
            print(json.dumps(result, indent=1, default=str))
        elif resume_rollback:
            console.print(f"[green]{environment} is back[/] to its state before the interrupted {result['reason']}")
        else:
            changed = ", ".join(f"{m} {a} → {b}" for m, (a, b) in result["versions"].items() if a != b) or "none"
            console.print(f"[green]{environment} updated[/] in {sum(result['phases'].values()):.0f} s; versions "
                          f"changed: {changed}; snapshot {result['snapshot']} kept for a manual rollback")

    @app.command("rollback")
    def rollback(environment: str,
                 restore_data: Annotated[bool, typer.Option("--restore-data", help="Really replace the database "
                                         "and filestore with the snapshot (writes since are kept aside, not live).")]
                 = False,
                 confirm: Annotated[str | None, typer.Option("--confirm", help="Name of a production target.")] = None,
                 inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
        """Go back to ENVIRONMENT's state before its last upgrade (database, filestore and code)."""
        import json

        with operator_errors():
            from flows.rollback import rollback_flow

            result = rollback_flow(environment, restore_data=restore_data, confirm=confirm, inventory=inventory)
        if as_json:
            print(json.dumps(result, indent=1, default=str))
            return
        console.print(f"[green]{environment} is back[/] to its state before its {result['reason']}; the replaced "
                      f"state is kept as {result['replaced_kept_as']}")

