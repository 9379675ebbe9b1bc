"""Log sources: files, rotated ``.gz``, standard input, environments' logs (local or SSH), any stream.

Why apart: the analyzer only ever sees byte blocks. Where they come from (a path, ``-``, an
``env:NAME`` of the inventory read over SFTP or, for a ``platform: docker`` environment, its
container's log stream, any binary file-like object, an iterator of lines) and how a truncated
``.gz`` is read as far as it goes is decided here, with one-line errors that name the fix.
"""

from __future__ import annotations

import gzip
import io
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO

from odoops.errors import ConfigError, OdoopsError

if TYPE_CHECKING:
    from tasks.logs.analyzer import LogAnalyzer

CHUNK_SIZE = 4 << 20  # bytes read per call: big enough to amortise Python overhead, small for memory


class LogSourceError(OdoopsError):
    """A log source that cannot be read (missing file, not a file, unreadable, bad gzip)."""


def iter_chunks(stream: BinaryIO, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Big byte blocks from any binary file-like object (file, gzip, stdin, paramiko SFTP file)."""
    read = stream.read
    while True:
        block = read(size)
        if not block:
            return
        if isinstance(block, str):  # a text stream slipped in: keep going rather than crash
            block = block.encode("utf-8", "surrogateescape")
        yield block


def iter_lines_from_stream(binary_stream: BinaryIO, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Lines (bytes, newline stripped) from any binary file-like object, read in big blocks."""
    rest = b""
    for block in iter_chunks(binary_stream, chunk_size):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _is_gzip(stream: BinaryIO) -> bool:
    peek = getattr(stream, "peek", None)
    return peek is not None and peek(2)[:2] == b"\x1f\x8b"


@contextmanager
def open_source(source: str) -> Iterator[BinaryIO]:
    """Open a log source for binary reading: a path (plain or gzip-compressed) or ``-`` (stdin)."""
    if source == "-":
        stdin = sys.stdin.buffer
        yield gzip.GzipFile(fileobj=stdin) if _is_gzip(stdin) else stdin  # type: ignore[misc]
        return
    if source.startswith("env:"):
        raise ConfigError(f"{source}: environment sources are resolved by the CLI or flow, not by open_source")
    try:
        raw = open(source, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise LogSourceError(f"log file not found: {source}: check the path (use - for standard input)") from None
    except IsADirectoryError:
        raise LogSourceError(f"{source} is a directory: give the log file itself, e.g. {source}/odoo.log") from None
    except PermissionError:
        raise LogSourceError(f"cannot read {source}: permission denied; run as a user who can read it") from None
    try:
        yield gzip.GzipFile(fileobj=raw) if _is_gzip(raw) else raw  # type: ignore[misc]
    finally:
        raw.close()


def _feed_stream(analyzer: LogAnalyzer, stream: BinaryIO, name: str) -> None:
    """Feed a stream in big blocks; a truncated or corrupt compressed stream keeps what was readable."""
    read = getattr(stream, "read1", None) or stream.read  # read1: a gzip cut short still returns its data
    parts: list[bytes] = []
    size = 0
    try:
        while True:
            block = read(CHUNK_SIZE)
            if not block:
                break
            if isinstance(block, str):
                block = block.encode("utf-8", "surrogateescape")
            parts.append(block)
            size += len(block)
            if size >= CHUNK_SIZE:
                analyzer.feed(b"".join(parts))
                parts, size = [], 0
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        analyzer.warnings_io.append(f"{name}: compressed data is truncated or corrupt ({exc}); "
                                    "analysed the readable part")
    except OSError as exc:
        raise LogSourceError(f"cannot read {name}: {exc.strerror or exc}; check the file and the disk") from None
    finally:
        if parts:
            analyzer.feed(b"".join(parts))


class _LinesReader(io.RawIOBase):
    """A read-only binary stream over an iterator of lines (keeps memory flat)."""

    def __init__(self, lines: Iterable[bytes | str]) -> None:
        self._it = iter(lines)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        parts: list[bytes] = []
        total = 0
        for line in self._it:
            if isinstance(line, str):
                line = line.encode("utf-8", "surrogateescape")
            if not line.endswith(b"\n"):
                line += b"\n"
            parts.append(line)
            total += len(line)
            if 0 < size <= total:
                break
        return b"".join(parts)


@contextmanager
def _open_env_log(env: Any, path: str) -> Iterator[BinaryIO]:
    """One log file of an inventory environment: local, or over SSH when the environment has ``ssh``."""
    if env.ssh is None:
        with open_source(path) as stream:
            yield stream
        return
    from tasks.ssh import session_for

    with session_for(env.ssh) as session:  # an Odoo.sh build's refused login names envs set-ssh
        handle = session.open(path)
        try:
            yield gzip.GzipFile(fileobj=handle) if path.endswith(".gz") else handle  # type: ignore[misc]
        finally:
            handle.close()


@contextmanager
def open_container_log(env: Any, follow: bool = False, tail: int | None = None) -> Iterator[BinaryIO]:
    """The log stream of a ``platform: docker`` environment's Odoo container (stdout and stderr)."""
    with _container_log_chunks(env, follow=follow, tail=tail) as (chunks, cancel):
        from tasks.containers import ChunksReader

        stream = io.BufferedReader(ChunksReader(chunks, on_close=cancel), buffer_size=CHUNK_SIZE)
        try:
            yield stream  # type: ignore[misc]
        finally:
            stream.close()


@contextmanager
def _container_log_chunks(env: Any, follow: bool = False, tail: int | None = None
                          ) -> Iterator[tuple[Iterator[bytes], Callable[[], None]]]:
    """Byte blocks of the container's log and the function that cancels the read (see tasks.containers)."""
    from tasks import containers

    target = env.docker
    engine = target.engine_url
    client = containers.connect(engine)
    try:
        container = containers.find_container(client, engine, name=target.container, project=target.compose_project,
                                              service=target.compose_service)
        chunks, cancel = containers.log_chunks(container, engine, follow=follow, tail=tail)
        try:
            yield chunks, cancel
        finally:
            cancel()
    finally:
        client.close()


def container_source_name(env: Any) -> str:
    return f"{env.name}:{env.docker.describe()}"


def expand_sources(sources: Sequence[str], inventory: str | None = None) -> list[tuple[str, Callable[[], Any]]]:
    """``(name, opener)`` per log: paths, ``-``, and ``env:NAME`` (the environment's ``logs`` paths, or the
    container's log stream for a ``platform: docker`` environment)."""
    out: list[tuple[str, Callable[[], Any]]] = []
    for source in sources:
        if not source.startswith("env:"):
            out.append((source, lambda s=source: open_source(s)))
            continue
        from odoops.inventory import load_inventory

        env = load_inventory(inventory).environment(source[4:])
        if env.platform == "docker":
            out.append((container_source_name(env), lambda e=env: open_container_log(e)))
            continue
        if not env.logs:
            raise ConfigError(
                f"environment {env.name!r} has no 'logs' paths in the inventory: add e.g. logs: [/var/log/odoo/odoo.log]"
            )
        for path in env.logs:
            where = f"{env.name}:{path}" if env.ssh is None else f"{env.name}:{env.ssh.host}:{path}"
            out.append((where, lambda e=env, p=path: _open_env_log(e, p)))
    return out
