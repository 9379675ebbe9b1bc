"""Who holds a lock, and whether that holder is provably gone.

A lock record (the environment's Prefect slot, a repository lock) names its holder by host, boot id,
pid and the pid's start time, and carries a heartbeat. On the holder's own machine liveness is a fact:
the holder is dead when the machine rebooted since (another boot id), when its pid no longer exists,
or when the pid now belongs to a later process (another start time; pids are reused). From another
machine only the heartbeat speaks, and only after it has been silent far longer than the holder's
beat. A holder that is alive on this machine is never called dead, whatever its heartbeat says.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def boot_id() -> str:
    """Changes at every boot of this machine (Linux); empty where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """The pid's start time in clock ticks since boot (field 22 of /proc/PID/stat); None if no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    return stat.rsplit(")", 1)[1].split()[19]


def me(**extra: Any) -> dict[str, Any]:
    """This process as a lock holder; ``extra`` adds what the record is about (runbook, flow run...)."""
    now = time.time()
    return {"host": socket.gethostname(), "boot_id": boot_id(), "pid": os.getpid(),
            "pid_start": process_start(os.getpid()), "since": now, "heartbeat": now, **extra}


@dataclass(frozen=True)
class Liveness:
    """``dead`` is a proof, never a guess; ``reason`` says what was found, for the operator."""

    dead: bool
    local: bool
    reason: str


def liveness(holder: dict[str, Any], stale_after: float) -> Liveness:
    """Whether ``holder`` (a record made by :func:`me`) is gone.

    On this machine: dead when rebooted since, when its pid is gone or reused; alive otherwise.
    Elsewhere: dead when its heartbeat is older than ``stale_after`` seconds.
    """
    if holder.get("host") == socket.gethostname():
        if holder.get("boot_id") and boot_id() and holder["boot_id"] != boot_id():
            return Liveness(True, True, "this machine rebooted since it started")
        try:
            pid = int(holder["pid"])
        except (KeyError, TypeError, ValueError):
            return Liveness(False, True, "its record names no process")
        start = process_start(pid)
        if start is None:
            return Liveness(True, True, f"process {pid} no longer exists")
        if holder.get("pid_start") and start and start != holder["pid_start"]:
            return Liveness(True, True, f"process {pid} ended (the pid now belongs to another process)")
        return Liveness(False, True, f"process {pid} is running on this machine")
    silent = time.time() - float(holder.get("heartbeat") or holder.get("since") or 0)
    if silent > stale_after:
        return Liveness(True, False, f"no heartbeat from {holder.get('host')} for {silent:.0f} s")
    return Liveness(False, False, f"it heart-beat {silent:.0f} s ago from {holder.get('host')}")


def describe(holder: dict[str, Any]) -> str:
    """One line naming the holder: runbook, run, host, pid and since when."""
    since = datetime.fromtimestamp(float(holder.get("since") or 0), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    what = holder.get("runbook") or holder.get("operation") or "a run"
    run = f" (flow run {holder['flow_run_name']} {holder['flow_run_id']})" if holder.get("flow_run_id") else ""
    return f"{what}{run} on {holder.get('host')}, pid {holder.get('pid')}, since {since}"
