"""Entry points: analyse a stream, lines or sources into one summary; the Prefect task around it.

Why apart: this is what the CLI, the flow and tools call. A big plain local file (256 MB and more) is
cut at record boundaries and analysed by forked worker processes (one per CPU, at most 4) whose
results are merged in order into the same figures; only from a single-threaded process such as the
CLI, so a flow run analyses sequentially.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any, BinaryIO

from odoops.errors import OdoopsError
from tasks.logs.analyzer import AnalysisOptions, LogAnalyzer
from tasks.logs.records import _RX_FIRST
from tasks.logs.sources import CHUNK_SIZE, _feed_stream, _LinesReader, expand_sources

PARALLEL_MIN_BYTES = 256 << 20  # plain local files from this size are analysed by several processes


def analyze_stream(stream: BinaryIO, options: AnalysisOptions | None = None, name: str = "-") -> dict[str, Any]:
    """Analyse one binary file-like object (file, gzip, stdin, SFTP file, container log stream)."""
    analyzer = LogAnalyzer(options)
    _feed_stream(analyzer, stream, name)
    analyzer.end_source(name)
    return analyzer.summary()


def analyze_lines(lines: Iterable[bytes | str], options: AnalysisOptions | None = None,
                  name: str = "-") -> dict[str, Any]:
    """Analyse an iterator of lines (bytes or str), e.g. a docker logs stream or a generator."""
    return analyze_stream(_LinesReader(lines), options, name)


def _split_points(path: str, parts: int) -> list[int]:
    """Offsets that cut a plain log file into ``parts`` ranges, each starting on a record header."""
    size = os.path.getsize(path)
    points = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            f.seek(max(points[-1] + 1, size * k // parts))
            window = f.read(1 << 20)
            m = _RX_FIRST.search(window)
            if m is not None:
                points.append(f.tell() - len(window) + m.start() + 1)
    points.append(size)
    return points


def _analyze_range(path: str, start: int, end: int, options: AnalysisOptions | None) -> LogAnalyzer:
    """Worker: analyse ``path[start:end]`` (a range of whole records) and return the analyzer."""
    analyzer = LogAnalyzer(options)
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(CHUNK_SIZE, left))
            if not block:
                break
            left -= len(block)
            analyzer.feed(block)
    analyzer._flush()
    return analyzer


def _parallel_ok(name: str, jobs: int, min_bytes: int) -> bool:
    """Worker processes are forked, so only from a single-threaded process (the CLI, not a flow run)."""
    if jobs < 2 or name == "-" or not os.path.isfile(name) or threading.active_count() > 1 or os.name != "posix":
        return False
    with open(name, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            return False
    return os.path.getsize(name) >= min_bytes


def analyze_sources(sources: Sequence[str], options: AnalysisOptions | None = None,
                    inventory: str | None = None, jobs: int | None = None,
                    parallel_min_bytes: int = PARALLEL_MIN_BYTES) -> dict[str, Any]:
    """Analyse sources (paths, ``.gz``, ``-``, ``env:NAME``) into one summary, one after the other.

    A big plain local file is cut at record boundaries into ``jobs`` ranges analysed by worker
    processes (default: one per CPU, at most 4) and the results merged in order: same figures, faster.
    """
    jobs = min(os.cpu_count() or 1, 4) if jobs is None else jobs
    analyzer = LogAnalyzer(options)
    for name, opener in expand_sources(sources, inventory):
        if _parallel_ok(name, jobs, parallel_min_bytes):
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            points = _split_points(name, jobs)
            with ProcessPoolExecutor(len(points) - 1, mp_context=get_context("fork")) as pool:
                parts = [pool.submit(_analyze_range, name, a, b, options) for a, b in zip(points[:-1], points[1:], strict=True)]
                for part in parts:
                    analyzer.merge(part.result())
        else:
            with opener() as stream:
                _feed_stream(analyzer, stream, name)
        analyzer.end_source(name)
    return analyzer.summary()


# Prefect wrapper (thin; Prefect imported lazily so the CLI and tests of the parser stay light)
def analyze_logs_task(sources: Sequence[str], options: AnalysisOptions | None = None,
                      inventory: str | None = None) -> dict[str, Any]:
    """Prefect task (retried when a source is unreachable): analyse log sources (see ``analyze_sources``)."""
    from prefect import task

    def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except OdoopsError as exc:
            return not exc.permanent
        except Exception:  # noqa: BLE001
            return False
        return False

    wrapped = task(name="analyze-logs", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
    return wrapped(analyze_sources)(sources, options, inventory)
