"""An Odoo.sh build's surroundings, built from real parts: a STAND-IN, since Odoo.sh cannot run here.

What it imitates is Odoo.sh's documented surface (MISSION.md, "Odoo.sh as it really is"), nothing more:

- ``ssh <build_id>@<host>``: a real OpenSSH server on loopback, run as a real non-root system user whose
  name is the build id (``b`` and seven digits: Odoo.sh's ids are digits, which useradd refuses), with its
  own host key and strict checking on the client side (tests/services_ssh.py explains the setup);
- the build's home with Odoo.sh's layout: ``~/src/user`` a git checkout of the branch (cloned from a bare
  repository standing in for the GitHub remote), ``~/data/filestore/<db>``, ``~/logs/odoo.log``,
  ``update.log``, ``install.log``, ``pip.log`` (real Odoo log lines from tests/fixtures/odoo-logs) and
  ``pg_long_queries.log``, and an Odoo configuration at ``~/.config/odoo/odoo.conf``;
- ``psql``/``pg_dump`` in the build reach its database with no argument: PGHOST, PGPORT, PGUSER and
  PGDATABASE are set for every session (sshd ``SetEnv``), the database being a real Odoo 17 copy on the
  tests' PostgreSQL cluster;
- Odoo.sh recycles builds: :meth:`new_build` moves the same home and data to a new build id (a new user,
  the same address otherwise) and deletes the old user, whose login is refused from then on.

Two fault switches stand in for what real software cannot do on cue: :meth:`cut_dumps_after` cuts the SSH
connection in the middle of a dump (a dropped link, a build recycled mid-backup), and :meth:`new_host_key`
gives the server another host key (a man-in-the-middle, or a reinstalled host).

It runs no Odoo server yet. Adding the real Odoo 17 (tests/services_odoo.py) fits as is: the config names
``data_dir = ~/data``, the database and ``logfile = ~/logs/odoo.log``; ``odoo-bin -c ~/.config/odoo/odoo.conf``
run as the build user (with ``addons_path`` extended by ``~/src/user``) would serve the same database and
write the log odoops reads.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.services_ssh import SSHD, _free_port, _keygen, _wait_for_port

FIXTURE_LOGS = Path(__file__).resolve().parent / "fixtures" / "odoo-logs"
MODULE = "acme_custom"


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", "-c", "user.name=Stand-in", "-c", "user.email=standin@example.invalid",
                           "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


class OdooShStandin:
    """One Odoo.sh branch's current build, reachable by SSH on 127.0.0.1 (see the module's docstring)."""

    def __init__(self, cluster, dbname: str, filestore: Path, project: str = "acme", branch: str = "main") -> None:
        self.cluster, self.dbname, self.project, self.branch = cluster, dbname, project, branch
        self.root = Path(tempfile.mkdtemp(prefix="odoosh-standin-"))
        self.root.chmod(0o755)
        self.home = self.root / "home" / "odoo"
        self.sshd_dir = self.root / "sshd"
        self.client_dir = self.root / "client"  # the operator's side: key and known_hosts
        for folder in (self.home, self.sshd_dir, self.client_dir):
            folder.mkdir(parents=True)
        self.port = _free_port()
        self.users: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.admin_passwd = f"standin-master-{random.getrandbits(48):x}"
        self.remote = self._make_remote()
        self._make_home(filestore)
        self.host_key = self.sshd_dir / "ssh_host_ed25519_key"
        self.key_file = self.client_dir / "id_ed25519"
        for key in (self.host_key, self.key_file):
            _keygen(key)
        (self.sshd_dir / "authorized_keys").write_text(Path(f"{self.key_file}.pub").read_text())
        self.known_hosts = self.client_dir / "known_hosts"
        self._trust_host_key()

    # ------------------------------------------------------------------ what a test reads

    @property
    def user(self) -> str:
        """The current build id (the SSH user)."""
        return self.users[-1]

    @property
    def address(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def filestore(self) -> Path:
        return self.home / "data" / "filestore" / self.dbname

    def odoosh_block(self) -> dict[str, str]:
        """The inventory's ``odoosh:`` block for this branch, as an operator writes it."""
        return {"project": self.project, "branch": self.branch, "remote": f"file://{self.remote}",
                "ssh": self.address, "known_hosts": str(self.known_hosts), "key_file": str(self.key_file)}

    # ------------------------------------------------------------------ building it

    def _make_remote(self) -> Path:
        """A bare repository standing in for the project's GitHub remote, with one small addon on the branch."""
        remote = self.root / "remote.git"
        _git("init", "--bare", str(remote))
        work = self.root / "work"
        _git("clone", str(remote), str(work))
        addon = work / MODULE
        addon.mkdir()
        (addon / "__init__.py").write_text("")
        (addon / "__manifest__.py").write_text(repr({"name": "Acme custom", "version": "17.0.1.0.0",
                                                     "depends": ["base"], "license": "LGPL-3"}) + "\n")
        _git("add", "-A", cwd=work)
        _git("commit", "-m", "Acme custom addon", cwd=work)
        _git("push", "origin", f"HEAD:{self.branch}", cwd=work)
        return remote

    def _make_home(self, filestore: Path) -> None:
        home = self.home
        _git("clone", "--branch", self.branch, str(self.remote), str(home / "src" / "user"))
        shutil.copytree(filestore, home / "data" / "filestore" / self.dbname)
        (home / "data" / "sessions").mkdir()
        logs = home / "logs"
        logs.mkdir()
        shutil.copy(FIXTURE_LOGS / "14-odoo17-login-failed-http500.log", logs / "odoo.log")
        shutil.copy(FIXTURE_LOGS / "11-odoo16-cli-update-ok.log", logs / "update.log")
        shutil.copy(FIXTURE_LOGS / "01-odoo12-debug-startup.log", logs / "install.log")
        (logs / "pip.log").write_text("Requirement already satisfied: num2words in /usr/lib/python3/dist-packages\n")
        # PostgreSQL's own format (log_min_duration_statement), as Odoo.sh collects it for the build
        (logs / "pg_long_queries.log").write_text(
            "2026-01-12 19:40:01.123 UTC [4242] LOG:  duration: 5234.567 ms  statement: SELECT id FROM "
            "res_partner WHERE name ILIKE '%acme%'\n")
        config = home / ".config" / "odoo"
        config.mkdir(parents=True)
        (config / "odoo.conf").write_text(
            "[options]\n"
            f"db_host = 127.0.0.1\ndb_port = {self.cluster.port}\ndb_user = postgres\ndb_name = {self.dbname}\n"
            f"dbfilter = ^{self.dbname}$\nlist_db = False\n"
            f"data_dir = {home / 'data'}\naddons_path = {home / 'src' / 'user'}\nlogfile = {home / 'logs' / 'odoo.log'}\n"
            f"admin_passwd = {self.admin_passwd}\nworkers = 2\nmax_cron_threads = 1\n")
        (home / ".profile").write_text('PATH="$HOME/bin:$PATH"\nexport PATH\n')
        (home / "bin").mkdir()

    def _trust_host_key(self) -> None:
        public = " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public}\n")

    def _config(self) -> Path:
        env = {"PGHOST": "127.0.0.1", "PGPORT": str(self.cluster.port), "PGUSER": "postgres",
               "PGDATABASE": self.dbname, "PGAPPNAME": "odoosh-build"}
        config = self.sshd_dir / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"PidFile {self.sshd_dir / 'sshd.pid'}", f"AuthorizedKeysFile {self.sshd_dir / 'authorized_keys'}",
            "StrictModes no", "UsePAM no", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "AllowTcpForwarding yes", "Subsystem sftp internal-sftp",
            "SetEnv " + " ".join(f"{k}={v}" for k, v in env.items()), "LogLevel VERBOSE", ""]))
        return config

    def _add_user(self) -> str:
        while True:
            name = f"b{random.randint(1_000_000, 9_999_999)}"
            try:
                pwd.getpwnam(name)
            except KeyError:
                break
        subprocess.run(["useradd", "--no-create-home", "--home-dir", str(self.home), "--shell", "/bin/bash",
                        "--user-group", name], check=True, capture_output=True)
        self.users.append(name)
        for path in (self.home, self.sshd_dir):
            subprocess.run(["chown", "-R", f"{name}:{name}", str(path)], check=True)
        self.host_key.chmod(0o600)
        return name

    def _start_sshd(self) -> None:
        log = self.sshd_dir / "sshd.log"
        self.proc = subprocess.Popen(["runuser", "-u", self.user, "--", SSHD, "-D", "-f", str(self._config()),
                                      "-E", str(log)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        _wait_for_port(self.port, self.proc, log)

    def _stop_sshd(self) -> None:
        if self.proc is None:
            return
        pidfile = self.sshd_dir / "sshd.pid"
        # signal sshd itself (runuser waits 2 s before it reaps a signalled child): its pid file, else runuser's child
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        pids = pidfile.read_text().split() if pidfile.exists() else \
            (children.read_text().split() if children.exists() else [])
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        if not pids:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        pidfile.unlink(missing_ok=True)
        self.proc = None

    @staticmethod
    def _drop_user(name: str) -> None:
        """The old build is gone: its user (and group) deleted, so a login as it is refused ("invalid user");
        a session a client still holds ends when that client closes it."""
        done = subprocess.run(["userdel", "--force", name], capture_output=True, text=True)
        try:
            pwd.getpwnam(name)
        except KeyError:
            return
        raise RuntimeError(f"cannot delete the stand-in's build user {name}: {done.stderr.strip()}")

    # ------------------------------------------------------------------ life cycle and faults

    def start(self) -> OdooShStandin:
        self._add_user()
        self._start_sshd()
        return self

    def new_build(self) -> str:
        """Odoo.sh rebuilt the branch: the same home and data under a new build id; the old one is refused."""
        old = self.user
        self._stop_sshd()
        self._add_user()
        self._drop_user(old)
        self.users.remove(old)
        self._start_sshd()
        return self.address

    def new_host_key(self) -> None:
        """The server now shows another host key (the operator's known_hosts keeps the old one)."""
        self._stop_sshd()
        self.host_key.unlink()
        Path(f"{self.host_key}.pub").unlink()
        _keygen(self.host_key)
        subprocess.run(["chown", f"{self.user}:{self.user}", str(self.host_key)], check=True)
        self._start_sshd()

    def cut_dumps_after(self, nbytes: int) -> None:
        """From now on the connection is cut after ``nbytes`` of any pg_dump output: a ``pg_dump`` earlier in
        the build's PATH forwards that much of the real one's output, then kills the sshd process serving
        the connection (the nearest sshd above it), as a dropped link or a recycled build would."""
        wrapper = self.home / "bin" / "pg_dump"
        wrapper.write_text(f"""#!/bin/sh
/usr/bin/pg_dump "$@" | head -c {int(nbytes)}
pid=$$
while [ "$pid" -gt 1 ]; do
    case "$(cat /proc/$pid/comm)" in sshd*) kill -9 "$pid"; exit 0;; esac
    pid=$(cut -d' ' -f4 /proc/$pid/stat)
done
""")
        wrapper.chmod(0o755)
        subprocess.run(["chown", f"{self.user}:{self.user}", str(wrapper)], check=True)

    def heal(self) -> None:
        """Remove the fault switches."""
        (self.home / "bin" / "pg_dump").unlink(missing_ok=True)

    def stop(self) -> None:
        try:
            self._stop_sshd()
            for name in list(self.users):
                self._drop_user(name)
        finally:
            self.users.clear()
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> OdooShStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
