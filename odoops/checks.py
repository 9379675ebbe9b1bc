"""``envs check``: can odoops reach what an environment's runbooks need?"""

from __future__ import annotations

from typing import Any

from odoops.errors import OdoopsError
from odoops.inventory import load_inventory
from odoops.platforms import platform_for
from odoops.release_history import interrupted_change
from tasks.odoo import probe_url
from tasks.postgres import connect


def check_environment(environment: str, inventory: str | None = None) -> list[dict[str, Any]]:
    inv = load_inventory(inventory)
    env = inv.environment(environment)
    results: list[dict[str, Any]] = []
    with platform_for(env) as platform:
        try:
            with platform.database() as conninfo, connect(conninfo) as conn:
                is_odoo = conn.execute("SELECT to_regclass('public.ir_module_module') IS NOT NULL").fetchone()[0]
                version = conn.execute("SELECT latest_version FROM ir_module_module WHERE name = 'base'"
                                       ).fetchone()[0] if is_odoo else None
                pending = interrupted_change(inv, env, conninfo)  # a deploy or upgrade killed half-way
            results.append({"check": "database", "ok": bool(is_odoo),
                            "detail": f"{conninfo.describe()} Odoo {version}" if is_odoo
                            else f"{conninfo.describe()} reachable but not an Odoo database"})
            results.append({"check": "interrupted runs", "ok": pending is None, "detail": pending or "none"})
        except OdoopsError as exc:
            results.append({"check": "database", "ok": False, "detail": str(exc)})
        try:
            exists = platform.filestore_exists()
            count = sum(1 for _ in platform.list_filestore()) if exists else 0
            results.append({"check": "filestore", "ok": exists,
                            "detail": f"{env.filestore}: {count} files" if exists else f"{env.filestore} does not exist"})
        except OdoopsError as exc:
            results.append({"check": "filestore", "ok": False, "detail": str(exc)})
    if env.url:
        ok, detail = probe_url(env.url)
        results.append({"check": "url", "ok": ok, "detail": f"{env.url}: {detail}"})
    return results
