"""Sizes of the inventory's production environments, measured for the cost report.

Glue, not a task: it walks the inventory and drives each environment's platform (odoops.platforms),
which tasks may not do (docs/architecture.md).
"""

from __future__ import annotations

from odoops.errors import ConfigError, OdoopsError
from odoops.inventory import load_inventory
from odoops.platforms import platform_for
from tasks.postgres import connect, database_size
from tasks.storage import open_store

_GB = 1e9


def measure_production_sizes(inventory_path: str | None) -> tuple[dict[str, float], list[str]]:
    """Sizes read from the inventory's production environments and their backup storages.

    Returns the measured keys (only those measured on *every* production environment: a partial sum
    would understate the bill) and notes saying what could not be measured and why. Without an
    inventory nothing is measured; a named inventory that cannot be loaded is an error.
    """
    try:
        inventory = load_inventory(inventory_path)
    except ConfigError as exc:
        if inventory_path is not None:
            raise  # named explicitly: a broken inventory is an error, not a reason to guess
        return {}, [f"no inventory ({exc}): sizes are estimates"]
    productions = [env for env in inventory.environments.values() if env.is_production]
    if not productions:
        return {}, ["no production environment in the inventory: sizes are estimates"]
    totals = {"database_gb": 0.0, "filestore_gb": 0.0, "backup_repository_gb": 0.0}
    failed: set[str] = set()
    notes: list[str] = []
    for env in productions:
        try:
            with platform_for(env) as platform:
                with platform.database() as conninfo, connect(conninfo) as conn:
                    totals["database_gb"] += database_size(conn) / _GB
                totals["filestore_gb"] += sum(entry.size for entry in platform.list_filestore()) / _GB
        except OdoopsError as exc:
            failed.update(("database_gb", "filestore_gb"))
            notes.append(f"{env.name} not measured ({exc}): database and filestore sizes are estimates")
    for name in sorted({env.backup.storage for env in productions}):
        try:
            totals["backup_repository_gb"] += open_store(inventory.storage(name)).total_size() / _GB
        except OdoopsError as exc:
            failed.add("backup_repository_gb")
            notes.append(f"backup storage {name} not measured ({exc}): the repository size is estimated")
    return {key: round(value, 3) for key, value in totals.items() if key not in failed}, notes
