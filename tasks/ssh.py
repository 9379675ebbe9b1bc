"""SSH: run commands, read files and reach remote-only ports on an Odoo host, over one paramiko session.

Odoo hosts managed over SSH keep their filestore, configuration and often their PostgreSQL (listening on
the host's loopback only) out of reach of odoops. This module is the one place that talks to paramiko:

- host keys are ALWAYS checked against a known_hosts file (paramiko's ``RejectPolicy``); an unknown or
  changed key is refused with the fix (``ssh-keyscan``), never accepted silently;
- commands are argv lists quoted with ``shlex.join`` for the remote shell, their exit status checked and
  their own last error line surfaced;
- files are listed and read over SFTP (prefetched reads); ``forward()`` opens a local port tunnelled to
  a host:port as seen from the remote machine, so psycopg and pg_dump reach a loopback-only database;
- paramiko's exceptions become the project's errors (``ConnectionFailed``, ``AuthenticationFailed``,
  ``HostKeyRejected``, ``ToolFailed``, ``ConfigError``), each one line without secrets.
"""

from __future__ import annotations

import errno
import logging
import posixpath
import select
import shlex
import socket
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, NamedTuple

import paramiko

from odoops.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    DiskFull,
    OdoopsError,
    RefusedError,
    ToolFailed,
    tool_error_line,
)
from odoops.inventory import SSH

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")


class HostKeyRejected(RefusedError):
    """The server's host key is unknown or differs from the known_hosts entry: never accepted."""


class RunResult(NamedTuple):
    """What a remote command returned; ``stdout`` is empty when it was streamed to a file."""

    exit_code: int
    stdout: bytes
    stderr: bytes


def _hostkey_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class SSHSession:
    """One authenticated SSH connection with strict host key checking (connects on creation)."""

    def __init__(self, host: str, port: int = 22, user: str | None = None, key_file: str | Path | None = None,
                 known_hosts: str | Path | None = None, timeout: float = 10) -> None:
        self.host = host
        self.port = int(port)
        self.user = user
        self.key_file = Path(key_file).expanduser() if key_file else None
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts else None
        self.timeout = timeout
        self._sftps: dict[threading.Thread, paramiko.SFTPClient] = {}  # one per thread: see sftp()
        self._lock = threading.Lock()
        self._client = self._connect()

    # ------------------------------------------------------------------ connection

    @property
    def where(self) -> str:
        """user@host:port, safe for messages."""
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    @property
    def _known_hosts_label(self) -> str:
        return str(self.known_hosts) if self.known_hosts else "~/.ssh/known_hosts"

    def _connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.known_hosts is not None:
            if not self.known_hosts.is_file():
                raise ConfigError(f"ssh {self.where}: known_hosts file {self.known_hosts} not found: create it "
                                  f"with ssh-keyscan -p {self.port} {self.host} (after verifying the key) or fix "
                                  "ssh.known_hosts")
            try:
                client.load_system_host_keys(str(self.known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise ConfigError(f"ssh {self.where}: cannot read known_hosts {self.known_hosts}: {exc}") from None
        else:
            client.load_system_host_keys()  # ~/.ssh/known_hosts, if any
            if SYSTEM_KNOWN_HOSTS.is_file():
                try:
                    client.load_system_host_keys(str(SYSTEM_KNOWN_HOSTS))
                except (OSError, paramiko.SSHException):
                    log.warning("could not read %s", SYSTEM_KNOWN_HOSTS)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if self.key_file is not None and not self.key_file.is_file():
            raise ConfigError(f"ssh {self.where}: key file {self.key_file} not found: fix ssh.key_file")
        try:
            client.connect(
                self.host, port=self.port, username=self.user,
                key_filename=str(self.key_file) if self.key_file else None,
                # An explicit key file means exactly that key; otherwise the agent and ~/.ssh keys.
                look_for_keys=self.key_file is None, allow_agent=self.key_file is None,
                timeout=self.timeout, banner_timeout=self.timeout, auth_timeout=self.timeout,
            )
        except Exception as exc:
            client.close()
            raise self._translate_connect(exc) from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(30)
            try:  # without it each new channel waits ~40 ms for a delayed ACK (Nagle)
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        return client

    def _translate_connect(self, exc: Exception) -> OdoopsError:
        name = _hostkey_name(self.host, self.port)
        if isinstance(exc, paramiko.BadHostKeyException):
            got = exc.key
            return HostKeyRejected(
                f"host key of {name} has CHANGED: the server offers {got.get_name()} {got.fingerprint}, which is not "
                f"the key recorded in {self._known_hosts_label}: this may be a man-in-the-middle attack; if the "
                f"server was really reinstalled, verify the new key and replace its line (ssh-keygen -R '{name}' "
                f"-f {self._known_hosts_label}, then ssh-keyscan -p {self.port} {self.host}) (odoops never accepts "
                "unknown host keys)")
        if isinstance(exc, paramiko.PasswordRequiredException):
            return AuthenticationFailed(f"ssh {self.where}: key file {self.key_file} is passphrase-protected: load it "
                                        "into ssh-agent and drop ssh.key_file, or use an unencrypted deploy key")
        if isinstance(exc, paramiko.AuthenticationException):
            key = f"key {self.key_file}" if self.key_file else "the agent's and ~/.ssh keys"
            return AuthenticationFailed(f"ssh {self.where}: authentication failed with {key}: add the public key to "
                                        "the remote user's authorized_keys, or fix ssh.user / ssh.key_file")
        if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
            return HostKeyRejected(
                f"host key of {name} is not in {self._known_hosts_label}: verify it and add it with "
                f"ssh-keyscan -p {self.port} {self.host} >> {self._known_hosts_label} "
                "(odoops never accepts unknown host keys)")
        if isinstance(exc, socket.gaierror):
            return ConnectionFailed(f"ssh {self.where}: unknown host name {self.host!r}: check ssh.host")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return ConnectionFailed(f"ssh {self.where}: timed out after {self.timeout:g} s: check the host, port and "
                                    "firewall")
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) or isinstance(exc, ConnectionError):
            return ConnectionFailed(f"ssh {self.where}: connection refused: check that sshd runs there and "
                                    "ssh.host / ssh.port are right")
        if isinstance(exc, OSError):
            return ConnectionFailed(f"ssh {self.where}: unreachable: {exc.strerror or exc}: check the host and network")
        if isinstance(exc, paramiko.SSHException):
            return ConnectionFailed(f"ssh {self.where}: SSH negotiation failed: {exc}")
        return ConnectionFailed(f"ssh {self.where}: {type(exc).__name__}: {exc}")

    @property
    def transport(self) -> paramiko.Transport:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionFailed(f"ssh {self.where}: the connection was lost: retry")
        return transport

    def close(self) -> None:
        """Close SFTP and the connection (idempotent)."""
        with self._lock:
            for client in self._sftps.values():
                client.close()
            self._sftps.clear()
        self._client.close()

    def __enter__(self) -> SSHSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ commands

    def run(self, argv: list[str], stdin: bytes | BinaryIO | None = None, stdout: BinaryIO | None = None,
            check: bool = True, label: str | None = None) -> RunResult:
        """Run ``argv`` on the remote host (quoted for its shell); stream stdout to ``stdout`` if given.

        ``stdin`` may be bytes or a binary file object (sent in chunks). With ``check``, a non-zero exit
        raises ``ToolFailed`` with the command's own last error line. ``label``: the tool's name in messages
        (default: ``argv[0]``'s, which names a wrapper when the tool runs through one).
        """
        command = _RemoteCommand(self, argv, stdin, label)
        out: list[bytes] = []
        try:
            while data := command.chan.recv(CHUNK):
                if stdout is not None:
                    stdout.write(data)
                else:
                    out.append(data)
        except BaseException as exc:
            command.abort()
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise DiskFull(f"no space left writing the output of {command.tool} from "
                               f"{self.host}: free space or choose another target") from None
            raise
        code, err = command.finish(check)
        return RunResult(code, b"".join(out), err)

    @contextmanager
    def stream(self, argv: list[str], check: bool = True, label: str | None = None) -> Iterator[BinaryIO]:
        """Run ``argv`` remotely and yield its stdout as a readable stream (``read(n)``, ``b""`` at the end):
        a dump flows straight into its consumer, with no file on either side. Leaving the context checks
        the exit status like :meth:`run`; a connection cut mid-way ends the stream early and then raises."""
        command = _RemoteCommand(self, argv, None, label)
        try:
            yield _ChannelReader(command.chan)  # type: ignore[misc]
        except BaseException:
            command.abort()
            raise
        command.finish(check)

    # ------------------------------------------------------------------ files

    def sftp(self) -> paramiko.SFTPClient:
        """This thread's SFTP client on the session, opened on first use.

        One per thread because paramiko's SFTPClient is not safe for requests from several threads at once:
        a thread waiting for its reply can read and drop another's, which then waits forever (the parallel
        filestore copy hung that way). Clients of threads that ended are closed here, so the channels stay
        within the server's MaxSessions."""
        me = threading.current_thread()
        with self._lock:
            for thread in [t for t in self._sftps if t is not me and not t.is_alive()]:
                self._sftps.pop(thread).close()
            client = self._sftps.get(me)
            if client is None:
                try:
                    client = self._sftps[me] = self._client.open_sftp()
                except paramiko.SSHException as exc:
                    raise ConnectionFailed(f"ssh {self.where}: SFTP unavailable: {exc}: enable the sftp "
                                           "subsystem in sshd_config") from None
            return client

    def _file_error(self, exc: OSError, path: str, what: str) -> OdoopsError:
        if exc.errno == errno.ENOENT:
            return ConfigError(f"{self.host}:{path} does not exist: check the path in the inventory")
        if exc.errno == errno.EACCES:
            return ToolFailed(f"{self.host}:{path}: permission denied {what} as {self.user or 'the ssh user'}: "
                              "grant read access or use another ssh.user")
        return ToolFailed(f"{self.host}:{path}: {what} failed: {exc.strerror or exc}")

    def stat(self, path: str) -> paramiko.SFTPAttributes | None:
        """The remote path's attributes (following links), or None when it does not exist."""
        try:
            return self.sftp().stat(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise self._file_error(exc, path, "reading attributes") from None

    def is_dir(self, path: str) -> bool:
        attrs = self.stat(path)
        return attrs is not None and stat.S_ISDIR(attrs.st_mode or 0)

    def walk(self, root: str) -> Iterator[tuple[str, int, int]]:
        """Every regular file under ``root``: (relative POSIX path, size, mtime in ns); symlinks skipped.

        SFTP carries whole seconds only, so ``mtime_ns`` is a multiple of 10**9.
        """
        sftp = self.sftp()
        stack = [""]
        while stack:
            rel = stack.pop()
            folder = posixpath.join(root, rel) if rel else root
            try:
                entries = sftp.listdir_attr(folder)  # READDIR attributes are lstat()'s
            except OSError as exc:
                raise self._file_error(exc, folder, "listing") from None
            for entry in entries:
                mode = entry.st_mode or 0
                child = f"{rel}/{entry.filename}" if rel else entry.filename
                if stat.S_ISDIR(mode):
                    stack.append(child)
                elif stat.S_ISREG(mode):
                    yield child, entry.st_size or 0, int(entry.st_mtime or 0) * 1_000_000_000

    def open(self, path: str, mode: str = "rb") -> BinaryIO:
        """A remote file opened for reading, prefetched when larger than one SFTP request."""
        if mode not in ("rb", "r"):
            raise ConfigError(f"SSHSession.open supports reading only, not mode {mode!r}")
        try:
            handle = self.sftp().open(path, "rb")
            size = handle.stat().st_size or 0
        except OSError as exc:
            raise self._file_error(exc, path, "opening") from None
        if size > 32768:
            handle.prefetch(size)
        return handle

    def read_bytes(self, path: str) -> bytes:
        with self.open(path) as handle:
            return handle.read()

    # ------------------------------------------------------------------ tunnels

    @contextmanager
    def forward(self, remote_host: str, remote_port: int) -> Iterator[int]:
        """A local 127.0.0.1 port forwarding each connection to remote_host:remote_port as seen by the server.

        Checks first that the server can reach the target, so a stopped database fails here with a clear
        message instead of inside psycopg.
        """
        target = (remote_host, int(remote_port))
        try:
            probe = self.transport.open_channel("direct-tcpip", target, ("127.0.0.1", 0), timeout=self.timeout)
            probe.close()
        except paramiko.ChannelException as exc:
            raise ConnectionFailed(f"ssh {self.where}: the server cannot reach {remote_host}:{remote_port} "
                                   f"({exc.text or 'connect failed'}): check that the service runs and listens "
                                   "there") from None
        except paramiko.SSHException as exc:
            raise ConnectionFailed(f"ssh {self.where}: port forwarding refused: {exc}: allow it "
                                   "(AllowTcpForwarding yes) in the server's sshd_config") from None
        forwarder = _Forwarder(self, target)
        try:
            yield forwarder.port
        finally:
            forwarder.close()



class _RemoteCommand:
    """One remote command on its own channel: started at once, stderr drained (and stdin fed) by helper threads
    so a chatty command never blocks, then ``finish()`` collects the exit status (or ``abort()`` stops it)."""

    def __init__(self, session: SSHSession, argv: list[str], stdin: bytes | BinaryIO | None,
                 label: str | None = None) -> None:
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError("a remote command must be a non-empty list of strings")
        self.session, self.argv = session, argv
        self.tool = label or posixpath.basename(argv[0])
        try:
            self.chan = session.transport.open_session()
            self.chan.exec_command(shlex.join(argv))
        except paramiko.SSHException as exc:
            raise ConnectionFailed(f"ssh {session.where}: cannot start {self.tool}: {exc}") from None
        self.errors: list[bytes] = []
        self.failures: list[BaseException] = []
        self.threads = [threading.Thread(target=self._pump_stderr, daemon=True)]
        if stdin is not None:
            self.threads.append(threading.Thread(target=self._feed_stdin, args=(stdin,), daemon=True))
        else:
            self.chan.shutdown_write()
        for thread in self.threads:
            thread.start()

    def _pump_stderr(self) -> None:
        try:
            while data := self.chan.recv_stderr(CHUNK):
                self.errors.append(data)
        except Exception as exc:  # noqa: BLE001 - reported by finish()
            self.failures.append(exc)

    def _feed_stdin(self, stdin: bytes | BinaryIO) -> None:
        try:
            if isinstance(stdin, (bytes, bytearray, memoryview)):
                view = memoryview(stdin)
                for start in range(0, len(view), CHUNK):
                    self.chan.sendall(view[start:start + CHUNK])
            else:
                while data := stdin.read(CHUNK):
                    self.chan.sendall(data)
            self.chan.shutdown_write()
        except OSError:
            pass  # the remote command exited without reading everything; its status tells
        except Exception as exc:  # noqa: BLE001 - reported by finish()
            self.failures.append(exc)

    def _join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=self.session.timeout)
        self.chan.close()

    def abort(self) -> None:
        """Stop waiting for the command: closing the channel unblocks the helper threads at once."""
        self.chan.close()
        self._join()

    def finish(self, check: bool) -> tuple[int, bytes]:
        """(exit status, stderr) once stdout has been read to its end; with ``check`` a failure raises."""
        try:
            code = self.chan.recv_exit_status()
        finally:
            self._join()
        where, host, tool = self.session.where, self.session.host, self.tool
        if self.failures:
            raise ConnectionFailed(f"ssh {where}: connection broke during {tool}: {self.failures[0]}")
        err = b"".join(self.errors)
        if check and code != 0:
            if code == 127:
                raise ToolFailed(f"{tool}: command not found on {host}: install it or fix the environment's "
                                 "command")
            if code == -1:
                raise ToolFailed(f"{tool} on {host} ended without an exit status (killed, or the connection "
                                 f"was cut): {tool_error_line(err)}")
            raise ToolFailed(f"{tool} on {host} exited {code}: {tool_error_line(err)}")
        return code, err


class _ChannelReader:
    """A remote command's stdout as a file-like ``read(n)``."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.chan.recv(CHUNK), b""))
        return self.chan.recv(n)


class _Forwarder:
    """Accept loop + two pump threads per connection, all stopped by ``close()``."""

    def __init__(self, session: SSHSession, target: tuple[str, int]) -> None:
        self.session = session
        self.target = target
        self.stopping = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.5)
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, name=f"ssh-forward-{self.port}", daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed
            try:
                chan = self.session.transport.open_channel("direct-tcpip", self.target, peer,
                                                           timeout=self.session.timeout)
            except (paramiko.SSHException, OdoopsError, OSError) as exc:
                log.warning("ssh %s: cannot forward to %s:%s: %s", self.session.where, *self.target, exc)
                conn.close()
                continue
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                if self.stopping.is_set():
                    conn.close()
                    chan.close()
                    return
                upstream = threading.Thread(target=self._sock_to_chan, args=(conn, chan),
                                            name=f"ssh-forward-{self.port}-up", daemon=True)
                downstream = threading.Thread(target=self._chan_to_sock, args=(conn, chan, upstream),
                                              name=f"ssh-forward-{self.port}-down", daemon=True)
                self.threads += [upstream, downstream]
                upstream.start()
                downstream.start()

    # Paramiko checks ``closed`` under the channel lock but sends outside it, so a ``close()`` in one
    # thread can overtake a ``sendall()`` in another; the data then reaches a channel the server has
    # already freed and OpenSSH drops the whole connection ("data packet referred to nonexistent
    # channel"). So each pair's channel is closed by its downstream thread only, after upstream ended.

    @staticmethod
    def _sock_to_chan(conn: socket.socket, chan: paramiko.Channel) -> None:
        try:
            while data := conn.recv(CHUNK):
                chan.sendall(data)
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def _chan_to_sock(self, conn: socket.socket, chan: paramiko.Channel, upstream: threading.Thread) -> None:
        try:
            while not self.stopping.is_set():
                readable, _, _ = select.select([chan], [], [], 0.5)  # wakes for close() on a silent server
                if not readable:
                    continue
                if not (data := chan.recv(CHUNK)):
                    break
                conn.sendall(data)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        # The server side ended (or we are stopping): nothing more can come through this pair.
        try:
            conn.shutdown(socket.SHUT_RDWR)  # wakes the upstream thread's recv()
        except OSError:
            pass
        upstream.join(timeout=5)  # only a server that stopped reading keeps it longer
        chan.close()
        conn.close()

    def close(self) -> None:
        self.stopping.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once on Linux
        except OSError:
            pass
        try:
            self.listener.close()
        except OSError:
            pass
        self.acceptor.join(timeout=2)
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(timeout=5)


def session_for(ssh: SSH, timeout: float = 10) -> SSHSession:
    """An ``SSHSession`` from an inventory ``ssh:`` block.

    A block with ``refused_fix`` (an Odoo.sh build, whose address changes at every rebuild) turns a refused
    login or an unreachable host into that fix; a changed host key stays a refusal of its own."""
    try:
        return SSHSession(host=ssh.host, port=ssh.port, user=ssh.user, key_file=ssh.key_file,
                          known_hosts=ssh.known_hosts, timeout=timeout)
    except (AuthenticationFailed, ConnectionFailed) as exc:
        if not ssh.refused_fix:
            raise
        what = "refused the login" if isinstance(exc, AuthenticationFailed) else "is unreachable"
        where = f"{ssh.user + '@' if ssh.user else ''}{ssh.host}:{ssh.port}"
        raise type(exc)(f"ssh {where} {what}: {ssh.refused_fix}") from None


__all__ = ["HostKeyRejected", "RunResult", "SSHSession", "session_for"]
