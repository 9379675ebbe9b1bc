"""The ``odoops`` command: every runbook from a terminal, as the same Prefect flows the UI runs.

Exit codes: 0 success, 1 the runbook found a problem (damaged backup, failed drill), 2 bad input or an
operational error (one red line on stderr naming the problem and the fix).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Without PREFECT_API_URL each call starts a temporary server; on a busy machine that takes more than 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from odoops.errors import OdoopsError  # noqa: E402

app = typer.Typer(help="Odoo operations runbook: backups, restores, logs, health and cost reports.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
envs_app = typer.Typer(help="The environments of the inventory.", no_args_is_help=True)
backups_app = typer.Typer(help="The backup catalog: list, verify, drill, export, prune, pin.", no_args_is_help=True)
app.add_typer(envs_app, name="envs")
app.add_typer(backups_app, name="backups")

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

InventoryOpt = Annotated[str | None, typer.Option("--inventory", "-i", envvar="ODOOPS_INVENTORY",
                                                  help="Inventory YAML (default deployments/environments.yaml).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
SelectOpt = Annotated[str | None, typer.Option(
    "--select", "-s", metavar="TERMS", help="Every environment matching name=…,stage=…,label=…,site=… "
    "(docs/fleet.md) instead of one.")]


def _one_or_selection(name: str | None, select: str | None, what: str = "ENVIRONMENT") -> bool:
    """True for a --select run; one of the two is required, not both."""
    if bool(name) == bool(select):
        fail(f"name one {what} or --select TERMS (e.g. --select stage=production), not both and not neither")
    return bool(select)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def operator_errors():
    """OdoopsError (and Prefect's wrapping of it) becomes one red line and exit code 2."""
    try:
        yield
    except OdoopsError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted: nothing incomplete is ever listed; run prune to clean up", 130)
    except Exception as exc:
        if getattr(getattr(exc, "response", None), "status_code", None) == 401:  # Prefect's basic auth refused us
            from odoops.localserver import shown_url

            fail(f"the Prefect server at {shown_url(os.environ.get('PREFECT_API_URL', '?'))} refused the credentials (HTTP 401 "
                 "Unauthorized): set PREFECT_API_AUTH_STRING to its user:password (docs/operating.md)")
        raise


@contextmanager
def rich_progress():
    """Rich bars for long operations; quiet when the output is not a terminal."""
    from odoops.runtime import set_progress_factory

    if not sys.stderr.isatty():
        yield
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bars:
        def factory(description: str, total: int | None) -> Callable[[int], None]:
            task_id = bars.add_task(description, total=total)
            return lambda n: bars.advance(task_id, n)

        set_progress_factory(factory)
        try:
            yield
        finally:
            set_progress_factory(None)


def _quiet_prefect() -> None:
    """The terminal shows odoops' one-line errors; Prefect's run logs still reach its API and UI."""
    import logging

    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # once per process: each setup costs 0.1-0.3 s, and the flow commands call this twice
    for handler in logging.getLogger().handlers + logging.getLogger("prefect").handlers:
        if "Console" in type(handler).__name__:
            handler.setLevel(logging.CRITICAL + 1)


def _show_wait(environment: str, holder: str | None, waited: float, allowed: float) -> None:
    """While another run holds the environment: say who at once, then a live line (every 30 s off a terminal)."""
    first = not _waits.get(environment)
    if first or (not err.is_terminal and waited - _waits[environment] >= 30):
        _waits[environment] = waited or 0.001
        err.print(f"[yellow]{environment} is busy[/]: held by {holder or 'another run (no holder record yet)'}; "
                  f"waiting up to {allowed:.0f} s (odoops envs unlock {environment} shows it)",
                  highlight=False, soft_wrap=True)
    if err.is_terminal:
        err.print(f"  waited {waited:.0f} s of {allowed:.0f} s", end="\r", highlight=False)


_waits: dict[str, float] = {}


# Commands that only read (listings, the audit trail, log files) never import Prefect: an operator's
# `odoops backups list` answers in well under a second. The flow-running commands in these groups
# (backups verify/drill/prune) quiet Prefect themselves.
_READ_ONLY = {"history", "releases", "logs", "envs", "backups", "schedules"}
# ... and these need the Prefect server all the same (flows, or the slots that live in the server).
_SERVER_IN_READ_ONLY = {"backups": {"verify", "drill", "prune"}, "envs": {"unlock"}}


def _starting_server():
    """A status line while the local Prefect server starts (on a terminal; silent otherwise)."""
    from contextlib import nullcontext

    return err.status("starting the local Prefect server (once)…") if err.is_terminal else nullcontext()


def _server_first(command) -> None:
    """Make ``command`` reach its Prefect server (PREFECT_API_URL's, else the local one: odoops/localserver.py)
    once its own options are parsed: never for ``--help`` or ``--no-prefect``. A group: each of its commands."""
    if getattr(command, "commands", None):
        for sub in command.commands.values():
            _server_first(sub)
        return
    if getattr(command, "_odoops_server_first", False):
        return
    invoke = command.invoke

    def invoke_with_server(sub_ctx):
        if sub_ctx.params.get("prefect") is not False:  # --no-prefect runs plain functions
            from odoops.localserver import ensure_server

            with operator_errors():
                ensure_server(_starting_server)
            _quiet_prefect()
            if _own_process:
                import gc

                gc.freeze()  # Prefect's modules, imported for good: later collections need not scan them
        return invoke(sub_ctx)

    command.invoke = invoke_with_server
    command._odoops_server_first = True


_own_process = False


def _skip_final_gc() -> None:
    """Registered before Prefect is imported, so it runs after Prefect's own exit handlers (logs and events
    sent): the interpreter's final garbage collections of Prefect's large heap cost 0.5–3 s for nothing."""
    import gc

    gc.disable()
    gc.freeze()


@app.callback()
def _main_options(ctx: typer.Context, wait: Annotated[float, typer.Option(
        "--wait", envvar="ODOOPS_SLOT_WAIT_SECONDS", metavar="SECONDS",
        help="How long a run waits while another run holds its environment, then fails naming the holder.")] = 300,
) -> None:
    """Odoo operations runbook: backup, restore, deploy, upgrade, logs, health and cost reports."""
    from odoops.slots import set_wait_reporter

    os.environ["ODOOPS_SLOT_WAIT_SECONDS"] = str(wait)
    set_wait_reporter(_show_wait)
    if "prefect" not in sys.modules:  # the CLI's own process (not a test calling it in-process)
        import atexit
        import gc

        global _own_process
        _own_process = True
        gc.set_threshold(50_000, 20, 100)  # importing Prefect allocates ~10^6 objects: 10% less CPU this way
        atexit.unregister(_skip_final_gc)
        atexit.register(_skip_final_gc)
    name = ctx.invoked_subcommand
    command = ctx.command.get_command(ctx, name) if name else None
    if command is None or name == "server":
        return
    if name not in _READ_ONLY:
        _server_first(command)
    for sub in _SERVER_IN_READ_ONLY.get(name, ()):
        if sub in getattr(command, "commands", {}):
            _server_first(command.commands[sub])


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


# ---------------------------------------------------------------- envs


@envs_app.command("list")
def envs_list(inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
    """List the environments of the inventory."""
    from odoops.inventory import load_inventory

    with operator_errors():
        inv = load_inventory(inventory)
    rows = [{"name": e.name, "stage": e.stage, "platform": e.platform, "database": e.database.dsn.rsplit("/", 1)[-1],
             "filestore": e.filestore, "url": e.url, "storage": e.backup.storage, "schedule": e.backup.schedule,
             "timezone": e.backup.timezone, "keep": e.backup.keep} for e in inv.environments.values()]
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = Table("name", "stage", "platform", "database", "storage", "schedule", title=str(inv.path))
    for r in rows:
        table.add_row(r["name"], r["stage"], r["platform"], r["database"], r["storage"],
                      f"{r['schedule'] or '-'} {r['timezone'] if r['schedule'] else ''}")
    console.print(table)


@envs_app.command("check")
def envs_check(environment: str, inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
    """Check that ENVIRONMENT's database, filestore and URL can be reached."""
    from odoops.checks import check_environment

    with operator_errors():
        results = check_environment(environment, inventory)
    if as_json:
        print(json.dumps(results, indent=1))
    else:
        table = Table("check", "result", "detail")
        for r in results:
            table.add_row(r["check"], "[green]ok[/]" if r["ok"] else "[red]FAILED[/]", r["detail"])
        console.print(table)
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


@envs_app.command("unlock")
def envs_unlock(environment: str, force: Annotated[bool, typer.Option(
        "--force", help="Free the slot once its holder is gone (a live holder is always refused).")] = False,
        inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
    """Show who holds ENVIRONMENT (one run at a time); free a dead holder's slot with --force."""
    from odoops import holders
    from odoops.runtime import record_run, resolve
    from odoops.slots import unlock

    with operator_errors():
        inv, env = resolve(environment, inventory)
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state, freed = unlock(client, env.name, force)
        if freed:
            record_run(inv, "unlock", env, {"environment": env.name, "force": force}, "success",
                       details={"freed_holder": state.holder, "why": state.liveness.reason if state.liveness else
                                "busy without a holder record"})
    if as_json:
        print(json.dumps({**state.as_dict(), "freed": freed}, indent=1))
        return
    if not state.busy:
        console.print(f"{env.name} is free: no run holds it")
        return
    who = holders.describe(state.holder) if state.holder else "a run that left no holder record"
    why = f" ({state.liveness.reason})" if state.liveness else ""
    if freed:
        console.print(f"[green]freed {env.name}[/]: it was held by {who}{why}")
    elif state.liveness is not None and not state.liveness.dead:
        console.print(f"{env.name} is held by {who}{why}: it frees the environment when it ends")
    else:
        console.print(f"{env.name} is held by {who}{why}; that run is gone: free it with --force")


# ---------------------------------------------------------------- backup


@app.command("backup")
def backup(environment: Annotated[str | None, typer.Argument()] = None,
           storage: Annotated[str | None, typer.Option(help="Storage name (default: the "
           "environment's backup storage).")] = None,
           kind: Annotated[str, typer.Option(help="manual, scheduled, pre-deploy, pre-upgrade or pre-restore.")] = "manual",
           inventory: InventoryOpt = None, as_json: JsonOpt = False, select: SelectOpt = None) -> None:
    """Back up ENVIRONMENT (or every --select'ed one) now: database, filestore and configuration."""
    _quiet_prefect()
    if _one_or_selection(environment, select):
        from odoops.cli_fleet import backup_selected

        return backup_selected(select, kind, storage, inventory, as_json)
    with operator_errors(), rich_progress():
        from flows.backup import backup_flow

        result = backup_flow(environment, kind=kind, storage=storage, inventory=inventory)
    if as_json:
        print(json.dumps(result, indent=1))
        return
    console.print(f"[green]backup {result['backup_id']}[/] complete ({_human(result['size'])})")
    if result["tables_reused"]:
        console.print(f"unchanged since the previous backup, linked instead of dumped: {', '.join(result['tables_reused'])}")
    if result["missing_files"]:
        console.print(f"[yellow]warning:[/] {len(result['missing_files'])} attachments have no file in the filestore "
                      f"(first: {result['missing_files'][0]}); see the manifest's missing_files")


@backups_app.command("list")
def backups_list(environment: Annotated[str | None, typer.Argument()] = None, inventory: InventoryOpt = None,
                 storage: Annotated[str | None, typer.Option(help="Only this storage.")] = None,
                 as_json: JsonOpt = False) -> None:
    """List complete backups (per environment: id, kind, time, size, verification)."""
    from odoops.inventory import load_inventory
    from odoops.runtime import repository_for

    with operator_errors():
        inv = load_inventory(inventory)
        if environment:
            inv.environment(environment)
        names = [storage] if storage else list(inv.storages)
        rows = []
        for name in names:
            repo = repository_for(inv, name)
            rows += [{**b.as_dict(), "storage": name} for b in repo.list_backups(environment)]
    rows.sort(key=lambda r: (r["environment"], r["created_at"]))
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = Table("id", "kind", "created (UTC)", "size", "verification", "pinned", "storage")
    for r in rows:
        table.add_row(r["id"], r["kind"], r["created_at"][:19].replace("T", " "), _human(r["size"]),
                      r["verification"], "yes" if r["pinned"] else "", r["storage"])
    console.print(table)


@backups_app.command("verify")
def backups_verify(backup_id: Annotated[str | None, typer.Argument()] = None, inventory: InventoryOpt = None,
                   select: SelectOpt = None, as_json: JsonOpt = False) -> None:
    """Re-read every part of BACKUP_ID (or of each --select'ed environment's newest backup) and check its sha256."""
    _quiet_prefect()
    if _one_or_selection(backup_id, select, "BACKUP_ID"):
        from odoops.cli_fleet import verify_selected

        return verify_selected(select, inventory, as_json)
    from odoops.errors import IntegrityError

    try:
        with operator_errors(), rich_progress():
            from flows.verify import verify_flow

            try:
                verify_flow(backup_id, inventory=inventory)
            except IntegrityError as exc:
                fail(str(exc), 1)
    except typer.Exit:
        raise
    console.print(f"[green]{backup_id} intact[/]: every part and object matches its sha256")


@backups_app.command("drill")
def backups_drill(backup_id: str, inventory: InventoryOpt = None) -> None:
    """Restore BACKUP_ID into a scratch database and filestore, check it, drop the scratch copies."""
    _quiet_prefect()
    from odoops.errors import IntegrityError

    with operator_errors(), rich_progress():
        from flows.verify import drill_flow

        try:
            result = drill_flow(backup_id, inventory=inventory)
        except IntegrityError as exc:
            fail(str(exc), 1)
    console.print(f"[green]drill passed[/]: {result['tables']} tables, {result['rows']:,} rows, {result['files']} files, "
                  f"{result['attachments_checked']} attachments checked")


@backups_app.command("export")
def backups_export(backup_id: str, output: Annotated[Path, typer.Option("-o", "--output", help="The .zip to write.")],
                   fmt: Annotated[str, typer.Option("--format", help="odoo-zip (Odoo's database manager and "
                                                    "Odoo.sh import format).")] = "odoo-zip",
                   inventory: InventoryOpt = None) -> None:
    """Export BACKUP_ID as Odoo's standard backup archive (dump.sql, filestore/, manifest.json)."""
    from odoops.inventory import load_inventory

    if fmt != "odoo-zip":
        fail(f"unknown export format {fmt!r}: use --format odoo-zip")
    if output.exists():
        fail(f"{output} already exists: choose another --output or remove it first")
    with operator_errors(), rich_progress():
        from flows.verify import locate_backup
        from odoops.runtime import progress

        inv = load_inventory(inventory)
        _env, repo = locate_backup(inv, backup_id)
        tmp = output.with_name(f".{output.name}.part")
        try:
            with open(tmp, "wb") as out:
                repo.export_odoo_zip(backup_id, out, progress=progress("export"))
            tmp.replace(output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    console.print(f"[green]wrote {output}[/] ({_human(output.stat().st_size)}): restore it with Odoo's database "
                  "manager or Odoo.sh's import")


@backups_app.command("prune")
def backups_prune(environment: Annotated[str | None, typer.Argument()] = None,
                  apply: Annotated[bool, typer.Option("--apply", help="Really delete (default: show).")] = False,
                  inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
    """Apply the retention policy: show what would be deleted, delete with --apply."""
    _quiet_prefect()
    with operator_errors():
        from flows.prune import prune_flow

        summary = prune_flow(environment, apply=apply, inventory=inventory)
    if as_json:
        print(json.dumps(summary, indent=1, default=str))
        return
    verb = "deleted" if apply else "would delete"
    for storage, s in summary["storages"].items():
        console.print(f"[bold]{storage}[/]: keep {len(s['kept'])}; {verb} {len(s['deleted'])} expired, "
                      f"{len(s['incomplete'])} incomplete backups and {s['objects']} unreferenced objects "
                      f"({_human(s['object_bytes'])})")
        for backup_id in s["deleted"] + s["incomplete"]:
            console.print(f"  {verb}: {backup_id}")
    if not apply:
        console.print("dry run: nothing deleted; add --apply to delete")


@backups_app.command("pin")
def backups_pin(backup_id: str, unpin: Annotated[bool, typer.Option("--unpin", help="Remove the pin.")] = False,
                inventory: InventoryOpt = None) -> None:
    """Keep BACKUP_ID forever (retention never deletes a pinned backup)."""
    from odoops.audit import started_by
    from odoops.inventory import load_inventory
    from odoops.runtime import record_run

    with operator_errors():
        from flows.verify import locate_backup

        inv = load_inventory(inventory)
        env, repo = locate_backup(inv, backup_id)
        repo.pin(backup_id, started_by(), pinned=not unpin)
        record_run(inv, "unpin" if unpin else "pin", env, {"backup_id": backup_id}, "success", [backup_id])
    console.print(f"{backup_id} {'unpinned' if unpin else 'pinned'}")


# ---------------------------------------------------------------- history


@app.command("history")
def history(environment: Annotated[str | None, typer.Argument()] = None, inventory: InventoryOpt = None,
            limit: Annotated[int, typer.Option(help="Show the last N records.")] = 50, as_json: JsonOpt = False) -> None:
    """The audit trail: every runbook run, who started it, its parameters and outcome."""
    from odoops.audit import read_audit
    from odoops.inventory import load_inventory
    from odoops.runtime import repository_for

    with operator_errors():
        inv = load_inventory(inventory)
        if environment:
            inv.environment(environment)
        records = []
        for name in inv.storages:
            records += read_audit(repository_for(inv, name).store, environment)
    records.sort(key=lambda r: r["time"])
    records = records[-limit:]
    if as_json:
        print(json.dumps(records, indent=1))
        return
    table = Table("time", "runbook", "environment", "who", "outcome", "backups")
    for r in records:
        table.add_row(r["time"], r["runbook"], r["environment"] or "-", r["who"], r["outcome"][:60],
                      ", ".join(r["backup_ids"]))
    console.print(table)


# ---------------------------------------------------------------- server

server_app = typer.Typer(help="The local Prefect server CLI runs use when PREFECT_API_URL is not set.",
                         no_args_is_help=True)
app.add_typer(server_app, name="server")


@server_app.command("start")
def server_start() -> None:
    """Start the local Prefect server of PREFECT_HOME (flow-running commands start it on first use)."""
    from odoops import localserver

    with operator_errors():
        local = localserver.start_local(starting=_starting_server)
    console.print(f"local Prefect server running: UI {local.url}, API {local.api_url} (pid {local.pid})",
                  highlight=False)
    if os.environ.get("PREFECT_API_URL"):
        console.print(f"note: PREFECT_API_URL is set, CLI runs go to {localserver.shown_url(os.environ['PREFECT_API_URL'])}",
                      highlight=False)


@server_app.command("status")
def server_status(as_json: JsonOpt = False) -> None:
    """Whether the local Prefect server runs: its URL, pid, uptime and Prefect home."""
    from odoops import localserver

    home = localserver.prefect_home()
    local = localserver.running(home)
    configured = os.environ.get("PREFECT_API_URL") or None
    if as_json:
        print(json.dumps({"running": local is not None, "home": str(home), "url": None, "ui_url": None, "pid": None,
                          "uptime_seconds": None, **(local.as_dict() if local else {}),
                          "prefect_api_url": localserver.shown_url(configured) if configured else None}, indent=1))
        return
    if local is None:
        console.print(f"no local Prefect server is running for {home}: the next flow-running command starts one",
                      highlight=False)
    else:
        console.print(f"local Prefect server: UI {local.url}, API {local.api_url}, pid {local.pid}, up "
                      f"{local.as_dict()['uptime_seconds']:.0f} s, home {home}, log {local.log}", highlight=False,
                      soft_wrap=True)
    if configured:
        console.print(f"note: PREFECT_API_URL is set, CLI runs go to {localserver.shown_url(configured)}",
                      highlight=False)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the local Prefect server (runs in progress on it lose their server: stop it when none runs)."""
    from odoops import localserver

    with operator_errors():
        stopped = localserver.stop_local()
    if stopped is None:
        console.print("no local Prefect server was running")
    else:
        console.print(f"stopped the local Prefect server (pid {stopped.pid})")


def _register_plugins() -> None:
    """Sub-commands that live in their own modules."""
    import importlib

    for module in ("odoops.cli_logs", "odoops.cli_health", "odoops.cli_costs", "odoops.cli_restore",
                   "odoops.cli_upgrade", "odoops.cli_deploy", "odoops.cli_odoosh", "odoops.cli_fleet"):
        try:
            importlib.import_module(module).register(app)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


_register_plugins()


def main() -> None:
    app()
