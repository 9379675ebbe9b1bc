"""Promote runbook: an environment receives exactly the release another one runs (dev → staging → production).

The release is the source's current one in its release history (the same commit, so the same code);
the target gets it through the deploy runbook, with everything that implies: the plan, a verified backup
and an approval for production (showing the commits since the target's release, the modules to update
and the backup id), the snapshot and the automatic rollback.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.deploy import APPROVAL_TIMEOUT_SECONDS, deploy_flow
from odoops import release_history
from odoops.errors import RefusedError
from odoops.runtime import resolve, run_name


@flow(name="promote", flow_run_name=run_name("promote/{source}→{target}"))
def promote_flow(source: str, target: str, update: str = "version", timeout_seconds: float = 1800,
                 approved: bool = False, approval_timeout_seconds: float = APPROVAL_TIMEOUT_SECONDS,
                 inventory: str | None = None) -> dict[str, Any]:
    """Deploy to TARGET the release SOURCE runs (its commit, from SOURCE's release history)."""
    inv, src = resolve(source, inventory)
    _, dst = resolve(target, inventory)
    if src.name == dst.name:
        raise RefusedError(f"promote {src.name} to itself? name another environment as the target")
    running = release_history.current(release_history.read_releases(inv, src))
    if running is None:
        raise RefusedError(f"{src.name} has no release in its history: deploy one to it first "
                           f"(odoops deploy {src.name} --ref BRANCH)")
    if src.git is None or dst.git is None or src.git.repository != dst.git.repository:
        raise RefusedError(f"{src.name} and {dst.name} do not take their releases from the same git repository: "
                           "promote moves one commit between environments of one repository")
    return deploy_flow(dst.name, ref=running["release"]["commit"], update=update, timeout_seconds=timeout_seconds,
                       approved=approved, approval_timeout_seconds=approval_timeout_seconds, action="promote",
                       inventory=inventory)
