"""Odoo-specific SQL: neutralization of a copied database and the copy's fresh identity.

Why this exists: a staging or development copy of production must not act as production. Odoo 16+
ships ``odoo-bin neutralize``, which runs the ``data/neutralize.sql`` of every installed module; where
the target can run it, the flows use it. Where it cannot (no Odoo in reach, only PostgreSQL), odoops
applies the equivalent below: the same statements, per module, each guarded by "module installed AND
table/columns exist" so that one rule set serves every Odoo version from 16 on. Every statement is
written so that running it twice changes nothing more (Odoo's own base script inserts a second dummy
mail server on a second run; ours does not).

A copy also gets a new ``database.uuid`` and ``database.secret`` (Odoo does the same for a "copy"
restore) so that IAP, the publisher warranty and signed tokens never mistake it for production.
The secret is never returned, logged or put in an exception.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from odoops.inventory import UpgradeCommand
from odoops.platforms.base import Platform
from tasks.postgres import installed_modules

log = logging.getLogger(__name__)

DUMMY_MAIL_SERVER = "neutralization - disable emails"
NEUTRALIZED_FLAG = "database.is_neutralized"


@dataclass(frozen=True)
class Step:
    """One neutralization statement of one module, applied only when its tables/columns exist."""

    module: str
    description: str
    requires: tuple[tuple[str, tuple[str, ...]], ...]  # (table, (columns...)) that must exist
    statement: str
    odoo: bool = True  # False: an odoops addition Odoo's own neutralize.sql does not make


# The statements follow Odoo's data/neutralize.sql of each module (16.0-18.0); literals only, no
# identifier is ever formatted in.
STEPS: tuple[Step, ...] = (
    # ---- base
    Step("base", "deactivate outgoing mail servers",
         (("ir_mail_server", ("active", "name")),),
         "UPDATE ir_mail_server SET active = false WHERE active IS DISTINCT FROM false AND name <> %(dummy)s"),
    Step("base", "add the dummy outgoing mail server (stops fallback to the command-line SMTP server)",
         (("ir_mail_server", ("name", "smtp_port", "smtp_host", "smtp_encryption", "active",
                              "smtp_authentication")),),
         "INSERT INTO ir_mail_server (name, smtp_port, smtp_host, smtp_encryption, active, smtp_authentication) "
         "SELECT %(dummy)s::varchar, 1025, 'invalid', 'none', true, 'login' "
         "WHERE NOT EXISTS (SELECT 1 FROM ir_mail_server WHERE name = %(dummy)s)"),
    Step("base", "keep the dummy outgoing mail server active",
         (("ir_mail_server", ("name", "active")),),
         "UPDATE ir_mail_server SET active = true WHERE name = %(dummy)s AND active IS DISTINCT FROM true"),
    Step("base", "deactivate every scheduled action but base.autovacuum_job",
         (("ir_cron", ("active",)), ("ir_model_data", ("model", "module", "name", "res_id"))),
         "UPDATE ir_cron SET active = false WHERE active AND id NOT IN ("
         " SELECT res_id FROM ir_model_data WHERE model = 'ir.cron' AND module = 'base' AND name = 'autovacuum_job')"),
    Step("base", "set database.is_neutralized",
         (("ir_config_parameter", ("key", "value")),),
         "INSERT INTO ir_config_parameter (key, value) VALUES (%(flag)s, 'true') "
         "ON CONFLICT (key) DO UPDATE SET value = 'true' WHERE ir_config_parameter.value IS DISTINCT FROM 'true'"),
    Step("base", "disable webhooks of server actions",
         (("ir_act_server", ("state", "webhook_url")),),
         "UPDATE ir_act_server SET webhook_url = 'neutralization - disable webhook' "
         "WHERE state = 'webhook' AND webhook_url IS DISTINCT FROM 'neutralization - disable webhook'"),
    # ---- web
    Step("web", "activate the neutralization banner",
         (("ir_ui_view", ("key", "active")),),
         "UPDATE ir_ui_view SET active = true WHERE key = 'web.neutralize_banner' AND active IS DISTINCT FROM true"),
    # ---- mail (fetchmail merged into mail in 16.0)
    Step("mail", "detach mail templates from their outgoing mail server",
         (("mail_template", ("mail_server_id",)),),
         "UPDATE mail_template SET mail_server_id = NULL WHERE mail_server_id IS NOT NULL"),
    Step("mail", "deactivate incoming mail servers",
         (("fetchmail_server", ("active",)),),
         "UPDATE fetchmail_server SET active = false WHERE active IS DISTINCT FROM false"),
    Step("mail", "delete the web-push VAPID keys and the SFU server key",
         (("ir_config_parameter", ("key",)),),
         "DELETE FROM ir_config_parameter WHERE key IN "
         "('mail.web_push_vapid_private_key', 'mail.web_push_vapid_public_key', 'mail.sfu_server_key')"),
    # Odoo 17+: TRUNCATE mail_notification_web_push; TRUNCATE mail_partner_device CASCADE. DELETE does the
    # same here (the notifications' device FK cascades) and counts the rows.
    Step("mail", "delete queued web-push notifications",
         (("mail_notification_web_push", ("id",)),),
         "DELETE FROM mail_notification_web_push"),
    Step("mail", "delete the partners' web-push devices (real phones and browsers of production users)",
         (("mail_partner_device", ("id",)),),
         "DELETE FROM mail_partner_device"),
    Step("fetchmail", "deactivate incoming mail servers",
         (("fetchmail_server", ("active",)),),
         "UPDATE fetchmail_server SET active = false WHERE active IS DISTINCT FROM false"),
    # ---- iap (SMS, snailmail, partner autocomplete... all go through IAP accounts)
    Step("iap", "disable IAP account tokens (suffix +disabled)",
         (("iap_account", ("account_token",)),),
         "UPDATE iap_account SET account_token = regexp_replace(account_token, '(\\+.*)?$', '+disabled') "
         "WHERE account_token IS NOT NULL AND account_token NOT LIKE '%%+disabled'"),
    # ---- payment
    Step("payment", "put payment providers in disabled state",
         (("payment_provider", ("state",)),),
         "UPDATE payment_provider SET state = 'disabled' WHERE state NOT IN ('test', 'disabled')"),
    Step("payment", "take payment providers out of live mode",
         (("payment_provider", ("is_live",)),),
         "UPDATE payment_provider SET is_live = false WHERE is_live"),
    # ---- delivery
    Step("delivery", "take delivery carriers out of production environment",
         (("delivery_carrier", ("prod_environment",)),),
         "UPDATE delivery_carrier SET prod_environment = false WHERE prod_environment"),
    # ---- website
    Step("website", "remove website domains",
         (("website", ("domain",)),),
         "UPDATE website SET domain = NULL WHERE domain IS NOT NULL"),
    Step("website", "activate the website neutralization ribbon",
         (("ir_ui_view", ("key", "active")),),
         "UPDATE ir_ui_view SET active = true WHERE key = 'website.neutralize_ribbon' AND active IS DISTINCT FROM true"),
    Step("website", "disable the CDN",
         (("website", ("cdn_activated",)),),
         "UPDATE website SET cdn_activated = false WHERE cdn_activated"),
    Step("website", "disallow indexing in robots.txt",
         (("website", ("robots_txt",)),),
         "UPDATE website SET robots_txt = E'User-agent: *\\nDisallow: /' "
         "WHERE robots_txt IS DISTINCT FROM E'User-agent: *\\nDisallow: /'"),
    # ---- calendars
    Step("google_calendar", "drop Google Calendar tokens and stop synchronization",
         (("res_users_settings", ("google_calendar_rtoken", "google_calendar_token",
                                  "google_synchronization_stopped")),),
         "UPDATE res_users_settings SET google_calendar_rtoken = NULL, google_calendar_token = NULL, "
         "google_synchronization_stopped = true "
         "WHERE google_calendar_rtoken IS NOT NULL OR google_calendar_token IS NOT NULL "
         "OR google_synchronization_stopped IS DISTINCT FROM true"),
    Step("microsoft_calendar", "drop Microsoft Calendar tokens (users)",
         (("res_users", ("microsoft_calendar_token", "microsoft_calendar_rtoken")),),
         "UPDATE res_users SET microsoft_calendar_token = NULL, microsoft_calendar_rtoken = NULL "
         "WHERE microsoft_calendar_token IS NOT NULL OR microsoft_calendar_rtoken IS NOT NULL"),
    Step("microsoft_calendar", "drop Microsoft Calendar tokens (user settings)",
         (("res_users_settings", ("microsoft_calendar_token", "microsoft_calendar_rtoken")),),
         "UPDATE res_users_settings SET microsoft_calendar_token = NULL, microsoft_calendar_rtoken = NULL "
         "WHERE microsoft_calendar_token IS NOT NULL OR microsoft_calendar_rtoken IS NOT NULL"),
    Step("microsoft_calendar", "stop Microsoft Calendar synchronization",
         (("res_users_settings", ("microsoft_calendar_sync_token", "microsoft_synchronization_stopped")),),
         "UPDATE res_users_settings SET microsoft_calendar_sync_token = NULL, microsoft_synchronization_stopped = true "
         "WHERE microsoft_calendar_sync_token IS NOT NULL OR microsoft_synchronization_stopped IS DISTINCT FROM true"),
    # ---- auth_oauth: every provider off but those listed in auth_oauth.dont_neutralize_providers
    Step("auth_oauth", "disable OAuth providers (but auth_oauth.dont_neutralize_providers)",
         (("auth_oauth_provider", ("enabled",)),),
         "UPDATE auth_oauth_provider SET enabled = false WHERE enabled AND id NOT IN ("
         " SELECT (jsonb_array_elements_text(CASE WHEN jsonb_typeof(value::jsonb) = 'array' THEN value::jsonb"
         "  ELSE '[]'::jsonb END))::integer"
         " FROM ir_config_parameter WHERE key = 'auth_oauth.dont_neutralize_providers'"
         "  AND value ~ '^\\s*\\[[0-9,\\s]*\\]\\s*$')"),
    # ---- odoops additions: queues that would leave the copy once someone re-enables a cron
    Step("sms", "cancel queued SMS", (("sms_sms", ("state",)),),
         "UPDATE sms_sms SET state = 'canceled' WHERE state = 'outgoing'", odoo=False),
    Step("snailmail", "cancel pending letters", (("snailmail_letter", ("state",)),),
         "UPDATE snailmail_letter SET state = 'canceled' WHERE state = 'pending'", odoo=False),
    Step("google_gmail", "drop Gmail OAuth tokens of mail servers",
         (("ir_mail_server", ("google_gmail_refresh_token", "google_gmail_access_token",
                              "google_gmail_authorization_code")),),
         "UPDATE ir_mail_server SET google_gmail_refresh_token = NULL, google_gmail_access_token = NULL, "
         "google_gmail_authorization_code = NULL WHERE google_gmail_refresh_token IS NOT NULL "
         "OR google_gmail_access_token IS NOT NULL OR google_gmail_authorization_code IS NOT NULL", odoo=False),
)


@dataclass
class NeutralizeReport:
    """What neutralization did: rows changed per applied step, and steps skipped (and why)."""

    modules: list[str] = field(default_factory=list)
    applied: list[tuple[str, str, int]] = field(default_factory=list)  # (module, step, rows changed)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (module, step, reason)

    @property
    def rows_changed(self) -> int:
        return sum(rows for _, _, rows in self.applied)


def table_columns(conn: psycopg.Connection, table: str, schema: str = "public") -> set[str]:
    """Column names of a table (empty when the table does not exist)."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped",
        (schema, table),
    ).fetchall()
    return {r[0] for r in rows}


def neutralize(conn: psycopg.Connection) -> NeutralizeReport:
    """Apply odoops' equivalent of ``odoo-bin neutralize`` for the installed modules, in one transaction."""
    report = NeutralizeReport()
    with conn.transaction():
        modules = installed_modules(conn)
        report.modules = sorted(m for m in {s.module for s in STEPS} if m in modules)
        columns_of: dict[str, set[str]] = {}
        for step in STEPS:
            if step.module not in modules:
                continue
            missing = []
            for table, needed in step.requires:
                cols = columns_of.setdefault(table, table_columns(conn, table))
                if not cols:
                    missing.append(f"table {table}")
                else:
                    missing.extend(f"column {table}.{c}" for c in needed if c not in cols)
            if missing:
                report.skipped.append((step.module, step.description, "no " + ", ".join(missing)))
                continue
            cur = conn.execute(step.statement, {"dummy": DUMMY_MAIL_SERVER, "flag": NEUTRALIZED_FLAG})
            rows = max(cur.rowcount, 0)
            report.applied.append((step.module, step.description, rows))
            log.info("neutralize %s: %s (%d rows)", step.module, step.description, rows)
    return report


def verify_neutralized(conn: psycopg.Connection) -> list[str]:
    """Problems that make the database unsafe as a copy (empty list: it is neutralized)."""
    problems: list[str] = []
    flag = conn.execute("SELECT value FROM ir_config_parameter WHERE key = %s", (NEUTRALIZED_FLAG,)).fetchone()
    if not flag or str(flag[0]).strip().lower() not in ("true", "1"):
        problems.append("database.is_neutralized is not set: run the neutralization")
    crons = conn.execute(
        "SELECT count(*) FROM ir_cron WHERE active AND id NOT IN (SELECT res_id FROM ir_model_data "
        "WHERE model = 'ir.cron' AND module = 'base' AND name = 'autovacuum_job')").fetchone()[0]
    if crons:
        problems.append(f"{crons} scheduled action(s) other than the autovacuum are active: run the neutralization")
    servers = conn.execute("SELECT count(*) FILTER (WHERE name <> %s), count(*) FILTER (WHERE name = %s) "
                           "FROM ir_mail_server WHERE active", (DUMMY_MAIL_SERVER, DUMMY_MAIL_SERVER)).fetchone()
    if servers[0]:
        problems.append(f"{servers[0]} outgoing mail server(s) other than the dummy one are active: "
                        "run the neutralization")
    if not servers[1]:
        problems.append("the dummy outgoing mail server is missing or inactive, Odoo would fall back to the "
                        "command-line SMTP server: run the neutralization")
    if table_columns(conn, "fetchmail_server") >= {"active"}:
        n = conn.execute("SELECT count(*) FROM fetchmail_server WHERE active").fetchone()[0]
        if n:
            problems.append(f"{n} incoming mail server(s) are active: run the neutralization")
    if table_columns(conn, "mail_partner_device"):
        n = conn.execute("SELECT count(*) FROM mail_partner_device").fetchone()[0]
        if n:
            problems.append(f"{n} web-push device(s) of production users remain: run the neutralization")
    if table_columns(conn, "iap_account") >= {"account_token"}:
        n = conn.execute("SELECT count(*) FROM iap_account WHERE account_token IS NOT NULL "
                         "AND account_token NOT LIKE '%+disabled'").fetchone()[0]
        if n:
            problems.append(f"{n} IAP account token(s) are live: run the neutralization")
    if table_columns(conn, "payment_provider") >= {"state"}:
        n = conn.execute("SELECT count(*) FROM payment_provider WHERE state = 'enabled'").fetchone()[0]
        if n:
            problems.append(f"{n} payment provider(s) are enabled in production mode: run the neutralization")
    if table_columns(conn, "delivery_carrier") >= {"prod_environment"}:
        n = conn.execute("SELECT count(*) FROM delivery_carrier WHERE prod_environment").fetchone()[0]
        if n:
            problems.append(f"{n} delivery carrier(s) are in production environment: run the neutralization")
    return problems


@dataclass(frozen=True)
class CopyIdentity:
    """The copy's new public identity (the new secret is deliberately not part of it)."""

    uuid: str
    base_url: str | None


def _set_param(conn: psycopg.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO ir_config_parameter (key, value, create_date, write_date) "
        "VALUES (%s, %s, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC') "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, write_date = EXCLUDED.write_date",
        (key, value),
    )


def refresh_copy_identity(conn: psycopg.Connection, base_url: str | None = None) -> CopyIdentity:
    """Give a copied database a new database.uuid and database.secret (uuid4 each, as Odoo's secret is).

    ``web.base.url`` is set when given; ``database.create_date`` is left untouched.
    """
    new_uuid = str(uuid.uuid4())
    with conn.transaction():
        _set_param(conn, "database.uuid", new_uuid)
        _set_param(conn, "database.secret", str(uuid.uuid4()))
        if base_url:
            _set_param(conn, "web.base.url", base_url.rstrip("/"))
    log.info("copy identity refreshed: new database.uuid %s, new database.secret", new_uuid)
    return CopyIdentity(uuid=new_uuid, base_url=base_url.rstrip("/") if base_url else None)


def probe_url(url: str, timeout: float = 5) -> tuple[bool, str]:
    """GET <url>/web/health: Odoo 15+ answers {"status": "pass"} without touching the database."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/web/health", timeout=timeout) as resp:  # noqa: S310
            body = json.loads(resp.read() or b"{}")
            return body.get("status") == "pass", f"HTTP {resp.status} {body.get('status', '?')}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"unreachable: {reason}"


# ---------------------------------------------------------------- module updates

TRANSIENT_STATES = ("to upgrade", "to install", "to remove")


def module_states(conn: psycopg.Connection) -> dict[str, tuple[str, str | None]]:
    """name -> (state, latest_version) of every module Odoo knows."""
    return {name: (state, version) for name, state, version in
            conn.execute("SELECT name, state, latest_version FROM ir_module_module ORDER BY name")}


def series_of(states: dict[str, tuple[str, str | None]]) -> str:
    """The Odoo series (``17.0``) a database runs: its ``base`` module's version."""
    return ".".join((states.get("base", (None, "0.0"))[1] or "0.0").split(".")[:2])


# The tables an upgrade must not lose rows of: what a business cannot do without. Web asset bundles are
# attachments too, and an update deletes and regenerates them: they are not counted.
MAIN_TABLES = {
    "res_partner": "SELECT count(*) FROM res_partner",
    "res_users": "SELECT count(*) FROM res_users",
    "ir_attachment": "SELECT count(*) FROM ir_attachment WHERE url IS NULL OR url NOT LIKE '/web/assets/%'",
}
# Tables that empty themselves as a matter of course (notifications, queued mail, logs, sessions).
CHURNING_TABLES = {"bus_bus", "bus_presence", "mail_mail", "ir_logging", "ir_cron_trigger", "ir_cron_progress",
                   "ir_sessions", "auth_totp_rate_limit_log", "res_users_log"}


def main_row_counts(conn: psycopg.Connection, tables_over_mb: float) -> dict[str, int]:
    """Row counts of the main tables and of every other table over ``tables_over_mb`` (exact counts: a
    change is judged on them, and the database is not serving while they are taken)."""
    from psycopg import sql

    big = [name for (name,) in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r' AND pg_total_relation_size(c.oid) > %s ORDER BY 1",
        (tables_over_mb * 1e6,)) if name not in MAIN_TABLES and name not in CHURNING_TABLES]
    counts = {table: conn.execute(query).fetchone()[0] for table, query in MAIN_TABLES.items()
              if conn.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()[0] is not None}
    for table in big:
        counts[table] = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
    return counts


def rows_lost(before: dict[str, int], after: dict[str, int], tolerance: float) -> list[str]:
    """The tables whose rows shrank by more than ``tolerance`` (a ratio), one line each; a table gone counts."""
    lost = []
    for table, was in sorted(before.items()):
        now = after.get(table, 0)
        if was and (was - now) / was > tolerance:
            lost.append(f"{table} went from {was} to {now} rows ({(now - was) / was:+.1%}, tolerance "
                        f"{-tolerance:.1%})")
    return lost


def check_update_request(conn: psycopg.Connection, modules: list[str] | None) -> list[str]:
    """What blocks a module update run, one line each (empty: go). ``None`` means every module (-u all)."""
    states = module_states(conn)
    problems = [f"module {name} is '{state}': finish or cancel that operation in Odoo first (Apps)"
                for name, (state, _) in states.items() if state in TRANSIENT_STATES]
    for name in modules or []:
        if name not in states:
            problems.append(f"unknown module {name!r}: Odoo has no such module in this database (check the name)")
        elif states[name][0] != "installed":
            problems.append(f"module {name} is '{states[name][0]}', not installed: an update run only updates "
                            "installed modules (install it from Apps, or with odoo-bin -i)")
    return problems


# What a container image's Odoo holds, asked of the image itself (a one-off: its Python, its odoo-bin, the
# environment's config): argv[1] odoo-bin, argv[2] the config file. Manifests are read, never imported.
INSPECT_ODOO = """
import ast, json, os, shutil, sys
tree = os.path.dirname(os.path.realpath(shutil.which(sys.argv[1]) or sys.argv[1]))
sys.path.insert(0, tree)
import odoo.release
from odoo.tools import config
config._parse_config(['-c', sys.argv[2]] if os.path.isfile(sys.argv[2]) else [])
paths = [p.strip() for p in config['addons_path'].split(',') if p.strip()]
paths += [os.path.join(tree, 'odoo', 'addons'), os.path.join(tree, 'addons')]
found = {}
for path in paths:
    for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        manifest = os.path.join(path, name, '__manifest__.py')
        if name not in found and os.path.isfile(manifest):
            try:
                found[name] = str(ast.literal_eval(open(manifest).read()).get('version', ''))
            except Exception:
                found[name] = ''
print('ODOOPS-INSPECT ' + json.dumps({'series': odoo.release.serie, 'modules': found}))
"""


def parse_inspection(output: str) -> dict[str, object]:
    """The one line INSPECT_ODOO prints, among whatever the image's entrypoint printed before it."""
    for line in reversed(output.splitlines()):
        if line.startswith("ODOOPS-INSPECT "):
            return json.loads(line.removeprefix("ODOOPS-INSPECT "))
    raise ValueError("no ODOOPS-INSPECT line")


def _series_key(series: str) -> tuple[int, int]:
    major, _, minor = series.removeprefix("saas~").partition(".")
    return int(major or 0), int(minor or 0)


def major_upgrade_problems(to_series: str, states: dict[str, tuple[str, str | None]],
                           target: dict[str, object]) -> list[str]:
    """What makes the target of ``--to SERIES`` unfit, one line each (empty: go): the series it reports, every
    installed module present in its addons path, each series-numbered manifest at the target series."""
    problems: list[str] = []
    current = series_of(states)
    if target["series"] != to_series:
        problems.append(f"the target reports Odoo {target['series']}, not {to_series}: name an image or Odoo tree "
                        f"of {to_series}")
    if _series_key(current) >= _series_key(to_series):
        problems.append(f"the database already runs Odoo {current}: --to {to_series} is not an upgrade")
    available: dict[str, str] = target["modules"]  # type: ignore[assignment]
    installed = sorted(n for n, (s, _) in states.items() if s in ("installed", "to upgrade"))
    missing = [n for n in installed if n not in available]
    if missing:
        problems.append(f"installed module{'s' if len(missing) > 1 else ''} {', '.join(missing[:10])}"
                        f"{' …' if len(missing) > 10 else ''} not in the target's addons path: add "
                        f"{'them' if len(missing) > 1 else 'it'} (ported to {to_series}) or uninstall first")
    for name in installed:
        version = available.get(name) or ""
        if version.count(".") >= 4 and not version.startswith(f"{to_series}."):
            problems.append(f"module {name} is version {version} in the target, not a {to_series} version "
                            f"({to_series}.x.y.z): port it to {to_series}")
    return problems


@dataclass
class UpdateRun:
    """One upgrade command (``odoo-bin -u … --stop-after-init`` by default) and what its log says."""

    argv: list[str]
    seconds: float
    returncode: int | None
    timed_out: bool
    errors: list[dict]  # error signatures from the project's log analyzer (count, level, signature)
    log: str  # the path of the update's own log file
    tool: str = "odoo-bin"

    @property
    def failure(self) -> str | None:
        """Why the update failed, in one line, or None."""
        first = f"; first error: {self.errors[0]['signature']}" if self.errors else ""
        if self.timed_out:
            return f"the update did not finish within its time limit and was stopped{first}"
        if self.returncode:
            return f"{self.tool} exited {self.returncode}{first}"
        if self.errors:
            return f"the update logged {sum(e['count'] for e in self.errors)} error(s){first}"
        return None


def upgrade_argv(command: UpgradeCommand | None, dbname: str, modules: list[str] | None,
                 logfile: Path) -> list[str]:
    """The arguments of odoo-bin (``update``, ``openupgrade``) or the whole argv (``script``) of an upgrade."""
    names = ",".join(modules) if modules else "all"
    if command is None or command.kind == "update":
        return ["-d", dbname, "-u", names, "--stop-after-init", "--no-http"]
    if command.kind == "openupgrade":  # OpenUpgrade's documented invocation: its scripts, its framework, -u all
        return ["-d", dbname, "-u", "all", "--stop-after-init", "--no-http",
                f"--upgrade-path={command.upgrade_path}", "--load=base,web,openupgrade_framework"]
    return [word.replace("{database}", dbname).replace("{modules}", names).replace("{logfile}", str(logfile))
            for word in command.argv]


def update_modules(platform: Platform, dbname: str, modules: list[str] | None, timeout: float, logfile: Path,
                   on_start: Callable[[int], None] | None = None, extra_args: list[str] | None = None,
                   command: UpgradeCommand | None = None) -> UpdateRun:
    """Run the upgrade command (``odoo-bin -u`` by default) in a one-off process with the environment's config;
    never raises for its outcome. A script's output is its log."""
    import time

    from odoops.errors import TimedOut
    from tasks.logs import analyze_stream

    script = command is not None and command.kind == "script"
    argv = upgrade_argv(command, dbname, modules, logfile)
    argv = argv if script else [*argv, *(extra_args or [])]
    started = time.monotonic()
    timed_out, returncode = False, None
    try:
        if script:
            done = platform.run(argv, check=False, timeout=timeout, on_start=on_start)
            with open(logfile, "ab") as out:
                out.write(done.stdout + done.stderr)
            returncode = done.returncode
        else:
            returncode = platform.run_odoo_logged(argv, logfile, timeout=timeout, on_start=on_start).returncode
    except TimedOut:
        timed_out = True
    errors: list[dict] = []
    if logfile.exists():
        with open(logfile, "rb") as log_stream:
            summary = analyze_stream(log_stream, name="update.log")
        errors = [{k: e[k] for k in ("signature", "count", "level")} for e in summary["errors"]["signatures"]]
    return UpdateRun(argv, round(time.monotonic() - started, 2), returncode, timed_out, errors, str(logfile),
                     Path(argv[0]).name if script else "odoo-bin")
