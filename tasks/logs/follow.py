"""Follow mode: tail a log like ``tail -F`` (rotation, in-place truncation) and alert on error bursts.

Why: an operator watching a live incident wants the same analysis as lines arrive, and an alert when
more than N ERROR-or-worse records arrive within M minutes: logged on ``odoops.alerts``, and emitted
as the Prefect event ``odoops.logs.threshold-crossed`` inside a flow or task run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, BinaryIO

from odoops.errors import ConfigError
from tasks.logs.analyzer import AnalysisOptions, LogAnalyzer
from tasks.logs.records import _RX_HEADER_LEVEL, _level_value, parse_level
from tasks.logs.sources import CHUNK_SIZE, LogSourceError

alert_logger = logging.getLogger("odoops.alerts")
_log = logging.getLogger(__name__)


def _emit_prefect_event(alert: dict[str, Any]) -> bool:
    """Emit a Prefect event for an alert when running inside a flow or task run; never raise."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return False
        from prefect.events import emit_event

        emit_event(event="odoops.logs.threshold-crossed",
                   resource={"prefect.resource.id": f"odoops.logs.{alert['source']}"},
                   payload=alert)
        return True
    except Exception as exc:  # noqa: BLE001 - an alert must never break the watcher
        _log.debug("could not emit Prefect event: %s", exc)
        return False


def follow(path: str, options: AnalysisOptions | None = None, *, threshold_errors: int | None = None,
           window_minutes: float = 5.0, alert_level: str = "ERROR", from_start: bool = False,
           stop_event: threading.Event | None = None, max_seconds: float | None = None,
           poll_interval: float = 0.25, on_alert: Callable[[dict[str, Any]], None] | None = None,
           clock: Callable[[], float] = time.monotonic, inventory: str | None = None) -> dict[str, Any]:
    """Tail ``path`` like ``tail -F`` (rotation and truncation), analysing and alerting as lines arrive.

    An alert fires when more than ``threshold_errors`` records at ``alert_level`` or above arrived within
    the last ``window_minutes``; it is logged on ``odoops.alerts``, emitted as a Prefect event when
    inside a run, passed to ``on_alert``, and re-armed once the window drops back under the threshold.
    Stops when ``stop_event`` is set or after ``max_seconds``; returns the summary with ``alerts``.
    ``env:NAME`` of a ``platform: docker`` environment follows its container's log stream instead.
    """
    env = None
    if path.startswith("env:"):
        from odoops.inventory import load_inventory

        env = load_inventory(inventory).environment(path[4:])
    if path == "-" or (env is not None and env.platform != "docker"):
        raise ConfigError("--follow needs a local log file path or env:NAME of a docker environment; for other "
                          "sources run without --follow")
    min_level = parse_level(alert_level)
    analyzer = LogAnalyzer(options)
    window = window_minutes * 60.0
    seen: deque[float] = deque()
    alerts: list[dict[str, Any]] = []
    armed = True
    started = clock()
    stop = stop_event or threading.Event()

    def check_alert(now: float, new: int) -> None:
        nonlocal armed
        for _ in range(new):
            seen.append(now)
        while seen and now - seen[0] > window:
            seen.popleft()
        if threshold_errors is None:
            return
        if len(seen) > threshold_errors and armed:
            armed = False
            alert = {"source": path, "level": alert_level.upper(), "count": len(seen),
                     "threshold": threshold_errors, "window_minutes": window_minutes,
                     "at": datetime.now(UTC).isoformat(timespec="seconds")}
            alert_logger.warning("%s: %d %s-or-worse records in the last %g min (threshold %d)",
                                 path, len(seen), alert_level.upper(), window_minutes, threshold_errors)
            alert["prefect_event"] = _emit_prefect_event(alert)
            alerts.append(alert)
            if on_alert is not None:
                on_alert(alert)
        elif len(seen) <= threshold_errors:
            armed = True

    def open_file() -> tuple[BinaryIO | None, int | None]:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the loop
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise LogSourceError(f"cannot read {path}: {exc.strerror}; check the path and permissions") from None
        return f, os.fstat(f.fileno()).st_ino

    f, inode = open_file() if env is None else (None, None)
    if f is None and env is None:
        raise LogSourceError(f"log file not found: {path}: check the path")
    if f is not None and not from_start:
        f.seek(0, os.SEEK_END)
    partial = b""

    def consume(data: bytes) -> None:
        nonlocal partial
        analyzer.feed(data)
        text = partial + data
        cut = text.rfind(b"\n") + 1
        partial = text[cut:]
        new = sum(1 for m in _RX_HEADER_LEVEL.finditer(text, 0, cut) if _level_value(m.group(1)) >= min_level)
        check_alert(clock(), new)

    if env is not None:
        _follow_container(env, from_start, consume, check_alert, stop, started, max_seconds, poll_interval, clock)
        analyzer.end_source(path)
        summary = analyzer.summary()
        summary["alerts"] = alerts
        return summary

    try:
        while True:
            data = f.read(CHUNK_SIZE) if f is not None else b""
            if data:
                consume(data)
                continue
            check_alert(clock(), 0)
            # Rotation and truncation are handled before stopping, so what was written before the stop is read.
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if f is None:
                if st is not None:
                    f, inode = open_file()
                    if f is not None:
                        continue
            elif st is not None and st.st_ino != inode:
                rest = f.read()  # drain the rotated file, then switch to the new one
                if rest:
                    consume(rest)
                f.close()
                analyzer.end_source(path)
                partial = b""
                f, inode = open_file()
                continue
            elif st is not None and st.st_size < f.tell():
                f.seek(0)  # truncated in place (copytruncate)
                analyzer.end_source(path)
                partial = b""
                continue
            if stop.is_set() or (max_seconds is not None and clock() - started >= max_seconds):
                break
            stop.wait(poll_interval)
    finally:
        if f is not None:
            f.close()
    analyzer.end_source(path)
    summary = analyzer.summary()
    summary["alerts"] = alerts
    return summary


def _follow_container(env: Any, from_start: bool, consume: Callable[[bytes], None],
                      check_alert: Callable[[float, int], None], stop: threading.Event, started: float,
                      max_seconds: float | None, poll_interval: float, clock: Callable[[], float]) -> None:
    """Follow a docker environment's container log: a reader thread blocks on the engine's stream and
    hands blocks over a queue, so the stop event and ``max_seconds`` are honoured between blocks; at the
    end the read is cancelled (the connection shut down), which ends the blocked thread."""
    import queue

    from tasks.logs.sources import _container_log_chunks

    blocks: queue.Queue[bytes | BaseException | None] = queue.Queue()
    with _container_log_chunks(env, follow=True, tail=None if from_start else 0) as (chunks, cancel):
        def pump() -> None:
            try:
                for block in chunks:
                    blocks.put(block)
                blocks.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, or moot after a cancel
                blocks.put(exc)

        reader = threading.Thread(target=pump, name=f"odoops-follow-{env.name}", daemon=True)
        reader.start()
        try:
            while True:
                try:
                    item = blocks.get(timeout=poll_interval)
                except queue.Empty:
                    item = b""
                if isinstance(item, BaseException):
                    raise item
                if item is None:  # the container stopped: its log ends
                    break
                if item:
                    consume(item)
                    continue
                check_alert(clock(), 0)
                if stop.is_set() or (max_seconds is not None and clock() - started >= max_seconds):
                    break
        finally:
            cancel()
            reader.join(timeout=5)
        while not blocks.empty():  # what arrived before the stop is read
            item = blocks.get_nowait()
            if isinstance(item, bytes) and item:
                consume(item)
