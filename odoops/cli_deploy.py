"""``odoops deploy``, ``promote`` and ``releases``: releases from git with automatic rollback (flows/deploy.py)."""

from typing import Annotated

import typer

UpdateOpt = Annotated[str, typer.Option("--update", metavar="RULE", help="Which installed modules to update: "
                                        "version (manifest version changed, Odoo.sh's rule), files (any file "
                                        "changed since the running release), all, none (a restart only).")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", metavar="SECONDS", help="Time limit of the module update; "
                                           "past it the update is stopped and rolled back.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Production: approve without the prompt (the plan is in "
                                      "the run's log and artifact).")]


def production_approved(environment: str, what: str, yes: bool, inventory: str | None, flag: str = "--yes") -> bool:
    """Production from a shell: ``flag``, or a prompt on a terminal; refused without either (no one to ask).
    False for other stages (nothing to approve)."""
    import sys

    from odoops.cli import fail
    from odoops.inventory import load_inventory

    if yes:
        return True
    try:
        env = load_inventory(inventory).environment(environment)
    except Exception:  # noqa: BLE001 - the flow reports a bad inventory or name in its own words
        return False
    if not env.is_production:
        return False
    if not sys.stdin.isatty():
        fail(f"{environment} is production: {what} needs an approval: pass {flag} (or run it from the Prefect UI, "
             "where the run waits for one)")
    if not typer.confirm(f"{what} to production environment {environment}? A verified backup is taken first"):
        fail(f"{what} to {environment} not approved: nothing was changed")
    return True


def register(app: typer.Typer) -> None:
    from odoops.cli import InventoryOpt, JsonOpt, console, fail, operator_errors

    @app.command("deploy")
    def deploy(environment: str,
               ref: Annotated[str | None, typer.Option("--ref", metavar="REF", help="Branch, tag or commit of the "
                              "environment's addons repository.")] = None,
               image: Annotated[str | None, typer.Option("--image", metavar="IMAGE", help="Containers: deploy this "
                                "existing image (tag or id) instead of building one from --ref; needs --update "
                                "all or none.")] = None,
               update: UpdateOpt = "version", timeout: TimeoutOpt = 1800, yes: YesOpt = False,
               resume_rollback: Annotated[bool, typer.Option("--resume-rollback", help="Put back the snapshot and "
                                          "release of a deploy whose run was killed.")] = False,
               inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
        """Deploy REF (or IMAGE) to ENVIRONMENT: release folder or image, modules updated, health and login
        checked; any failure puts back the exact previous state by itself."""
        import json

        if not resume_rollback and bool(ref) == bool(image):
            fail("name the release to deploy: --ref BRANCH|TAG|COMMIT, or --image IMAGE on containers (not both)")
        approved = resume_rollback or production_approved(environment, f"deploy {ref or image}", yes, inventory)
        with operator_errors():
            from flows.deploy import deploy_flow

            result = deploy_flow(environment, ref=ref, image=image, update=update, timeout_seconds=timeout, approved=approved,
                                 resume_rollback=resume_rollback, inventory=inventory)
        if as_json:
            print(json.dumps(result, indent=1, default=str))
        elif resume_rollback:
            console.print(f"[green]{environment} is back[/] to its release and state before the interrupted deploy")
        else:
            _print_deployed(console, environment, result)

    @app.command("promote")
    def promote(source: str, target: str, update: UpdateOpt = "version", timeout: TimeoutOpt = 1800,
                yes: YesOpt = False, inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
        """Deploy to TARGET exactly the release SOURCE runs (dev → staging → production)."""
        import json

        approved = production_approved(target, f"promote {source}", yes, inventory)
        with operator_errors():
            from flows.promote import promote_flow

            result = promote_flow(source, target, update=update, timeout_seconds=timeout, approved=approved,
                                  inventory=inventory)
        if as_json:
            print(json.dumps(result, indent=1, default=str))
        else:
            _print_deployed(console, target, result)

    @app.command("releases")
    def releases_list(environment: str, inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
        """ENVIRONMENT's release history: what ran when, who put it there, and how it went."""
        import json

        from rich.table import Table

        with operator_errors():
            from odoops import release_history
            from odoops.inventory import load_inventory

            inv = load_inventory(inventory)
            records = release_history.read_releases(inv, inv.environment(environment))
        if as_json:
            print(json.dumps(records, indent=1))
            return
        if not records:
            console.print(f"{environment} has no release yet: odoops deploy {environment} --ref BRANCH")
            return
        running = release_history.current(records)
        table = Table("time", "action", "commit", "ref", "modules updated", "outcome", "who", "backup / snapshot")
        for r in records:
            mark = " ◀ running" if r is running else ""
            table.add_row(r["time"][:19], r["action"], (r["release"].get("commit") or "-")[:12] + mark,
                          r["release"].get("ref") or "-", ", ".join(r["modules_updated"]) or "-",
                          r["outcome"], r["who"], r.get("backup_id") or r.get("snapshot") or "-")
        console.print(table)


def _print_deployed(console, environment: str, result: dict) -> None:
    modules = ", ".join(result["modules"]) or "none (restart only)"
    console.print(f"[green]{environment} runs {result['commit'][:12]}[/]; modules updated: {modules}; downtime "
                  f"{result['downtime'] or 0:.1f} s" + (f"; snapshot {result['snapshot']} kept for a rollback"
                                                         if result.get("snapshot") else ""))
    if result["plan"]["new_modules"]:
        console.print(f"new modules in the release, not installed: {', '.join(result['plan']['new_modules'])} "
                      "(install them in Odoo's Apps)")
