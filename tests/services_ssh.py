"""pytest plugin: a real OpenSSH server on loopback for the SSH tests (see TESTING.md, section SSH).

sshd runs with its own host key, authorized_keys and sshd_config in a temp folder, needs no system
change, and can only log in as the user it runs as: ``postgres`` when the tests run as root (sshd
refuses nothing then, and that user can also read what the tests share with it), else the current
user. Files a test wants the server to serve go under ``sshd.mkdir()``, which that user can read.
"""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
SERVER_USER = "postgres"


@dataclass
class SSHServer:
    """A running test sshd: connect as ``user`` with ``key_file`` checking ``known_hosts``."""

    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    workdir: Path
    host_key_pub: str
    spare_key: Path  # a client key that is NOT authorized (and whose .pub can pose as a wrong host key)

    def mkdir(self, name: str) -> Path:
        """A fresh folder the server's user can read (and write), for trees a test wants served."""
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir / "share"))
        path.chmod(0o777)
        return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "odoops-test", "-f", str(path)],
                   check=True, capture_output=True)


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited {proc.returncode}: {log.read_text(errors='replace') if log.exists() else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within {timeout} s")


@pytest.fixture(scope="session")
def sshd() -> Iterator[SSHServer]:
    """A real sshd on 127.0.0.1:<free port> for the whole session."""
    as_root = os.geteuid() == 0
    user = SERVER_USER if as_root else getpass.getuser()
    workdir = Path(tempfile.mkdtemp(prefix="odoops-sshd-"))
    workdir.chmod(0o755)
    (workdir / "share").mkdir(mode=0o755)
    host_key = workdir / "ssh_host_ed25519_key"
    client_key = workdir / "client_key"
    spare_key = workdir / "spare_key"
    for key in (host_key, client_key, spare_key):
        _keygen(key)
    authorized = workdir / "authorized_keys"
    authorized.write_text(Path(f"{client_key}.pub").read_text())
    authorized.chmod(0o644)
    port = _free_port()
    log = workdir / "sshd.log"
    config = workdir / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"PidFile {workdir / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        "StrictModes no",
        "UsePAM no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "AllowTcpForwarding yes",
        "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE",
        "",
    ]))
    command = [SSHD, "-D", "-f", str(config), "-E", str(log)]
    if as_root:
        pw = pwd.getpwnam(SERVER_USER)
        for path in (workdir, workdir / "share", host_key, config):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        command = ["runuser", "-u", SERVER_USER, "--", *command]
    known_hosts = workdir / "known_hosts"
    host_pub = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_port(port, proc, log)
        yield SSHServer(host="127.0.0.1", port=port, user=user, key_file=client_key, known_hosts=known_hosts,
                        workdir=workdir, host_key_pub=host_pub, spare_key=spare_key)
    finally:
        # Signal sshd itself: runuser, when signalled, waits 2 s before it reaps its child.
        pidfile = workdir / "sshd.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                pass
        else:
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
