"""``odoops envs set-ssh``: the current build address of an Odoo.sh environment (odoops/platforms/odoosh.py).

Odoo.sh gives a branch a new build, with a new SSH address, at every rebuild, and shows it only in its
dashboard; when a run finds the old address refused it names this command.
"""

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from odoops.cli import InventoryOpt, JsonOpt, console, envs_app, operator_errors

    @envs_app.command("set-ssh")
    def envs_set_ssh(environment: Annotated[str, typer.Argument(metavar="ENVIRONMENT")],
                     address: Annotated[str, typer.Argument(metavar="ADDRESS", help="<build_id>@<host>[:port], as "
                                                            "the build's SSH command in the Odoo.sh dashboard shows it.")],
                     no_check: Annotated[bool, typer.Option("--no-check", help="Store it without logging in first.")]
                     = False,
                     inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
        """Set the SSH address of ENVIRONMENT's current Odoo.sh build (after a rebuild); checked by a login first."""
        import json

        from odoops.inventory import load_inventory
        from odoops.platforms.odoosh import set_build_address
        from odoops.runtime import record_run

        with operator_errors():
            inv = load_inventory(inventory)
            result = set_build_address(inv, environment, address, check=not no_check)
            record_run(inv, "set-ssh", inv.environment(environment),
                       {"environment": environment, "address": result["address"]}, "success",
                       details={"previous": result["previous"]})
        if as_json:
            print(json.dumps(result, indent=1))
            return
        checked = f", its database is {result['database']}" if result["database"] else " (not checked)"
        console.print(f"[green]{environment}[/] now reaches build {result['address']}{checked}; was "
                      f"{result['previous']} (stored in {result['file']})", highlight=False)
