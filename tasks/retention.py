"""Grandfather-father-son retention, as pure logic: which backups of one environment to keep, and why.

Keeps the newest backup of each of the last ``daily`` days, ``weekly`` ISO weeks and ``monthly``
months that have backups (Odoo.sh keeps 7/4/3 for production), plus ``last`` most recent ones if
asked; pinned backups always; and never the newest complete nor the newest verified backup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from tasks.archive import BackupInfo

_PERIODS: dict[str, Callable[[datetime], tuple]] = {
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


def plan_retention(backups: Sequence[BackupInfo], keep: dict[str, int]) -> tuple[dict[str, list[str]], list[str]]:
    """({kept id: [reasons]}, [ids to delete]) for one environment's complete backups."""
    newest_first = sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True)
    reasons: dict[str, list[str]] = {b.id: [] for b in newest_first}
    for period, count in keep.items():
        if period == "last":
            for b in newest_first[:count]:
                reasons[b.id].append("last")
            continue
        key_of = _PERIODS[period]
        seen: set[tuple] = set()
        for b in newest_first:
            if len(seen) >= count:
                break
            key = key_of(b.created_at)
            if key not in seen:
                seen.add(key)
                reasons[b.id].append(period)
    for b in newest_first:
        if b.pinned:
            reasons[b.id].append("pinned")
    if newest_first:
        reasons[newest_first[0].id].append("newest")
    verified = [b for b in newest_first if b.verification in ("verified", "drilled")]
    if verified:
        reasons[verified[0].id].append("newest verified")
    kept = {i: r for i, r in reasons.items() if r}
    delete = [b.id for b in newest_first if not reasons[b.id]]
    return kept, delete
