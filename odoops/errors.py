"""The project's error tree.

Every failure an operator can meet is an ``OdoopsError`` whose message is one line naming the
problem and the fix. External libraries' exceptions (psycopg, boto3, paramiko, docker) are
translated into these at the boundary of the module that uses the library, so flows and the CLI
handle one family of errors. ``permanent`` errors are never retried (disk full, permission
denied, bad input); the others may be.
"""

from __future__ import annotations


class OdoopsError(Exception):
    """Base class: a one-line, operator-facing message."""

    permanent: bool = True

    def __init__(self, message: str) -> None:
        # Keep the message on one line whatever the underlying tool printed.
        super().__init__(" ".join(str(message).split()))


class ConfigError(OdoopsError):
    """The inventory or a rules/inputs file is invalid."""


class UnknownEnvironmentError(ConfigError):
    """An environment name that the inventory does not define."""


class ConnectionFailed(OdoopsError):
    """A host, database, URL or S3 endpoint could not be reached (may be transient)."""

    permanent = False


class AuthenticationFailed(OdoopsError):
    """Wrong password, key or credentials."""


class ToolFailed(OdoopsError):
    """An external tool (pg_dump, pg_restore, psql, odoo-bin) exited non-zero."""


class TimedOut(ToolFailed):
    """A command ran past its time limit and was stopped."""


class DiskFull(OdoopsError):
    """No space left on the device holding the backups or the target."""


class StorageError(OdoopsError):
    """Reading or writing the backup storage failed (may be transient)."""

    permanent = False


class BackupNotFound(OdoopsError):
    """No complete backup with that id in the catalog."""


class IntegrityError(OdoopsError):
    """A checksum, a file count or a row count does not match what was recorded."""


class UnsafeArchive(OdoopsError):
    """An archive that tries to write outside its target, holds links, or is corrupt."""


class RefusedError(OdoopsError):
    """A safety gate refused the operation (production without confirmation, name taken, ...)."""


class LockedError(OdoopsError):
    """Another run holds the lock on this environment or repository."""

    permanent = False


class EnvironmentBusy(LockedError):
    """The environment's slot is held by a live run for longer than this run may wait."""

    permanent = True


def tool_error_line(stderr: bytes | str) -> str:
    """The most telling line of a tool's stderr: its last line mentioning an error, else its last line."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "fatal" in line.lower():
            return line
    return lines[-1] if lines else "(no message)"
