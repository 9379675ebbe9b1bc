"""pytest plugin: a real Odoo 17.0 server for the tests (see TESTING.md, "Odoo itself").

``scripts/odoo.sh`` obtains Odoo 17.0 as an operator's machine would (ODOO_SRC, else ../shared/odoo, else a
shallow clone) into a cached venv outside the checkout and prints the path of its env file; the
``odoo_install`` session fixture runs it (about 0.1 s once cached) and reads that file. ``odoo_server`` is a
factory: each call writes a config file, starts ``odoo-bin`` for one database on the tests' PostgreSQL
cluster, on a free loopback port, with ``max_cron_threads = 0`` (the database stays as loaded), its own
data_dir and a log file, waits for ``/web/health`` and stops it (SIGTERM, then SIGKILL) at teardown.

Odoo refuses to run its server as the PostgreSQL user ``postgres``: it connects as a role ``odoo`` that
``odoo_db_role`` creates in the throwaway cluster (superuser there, because the databases the tests restore
belong to ``postgres``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from odoops.sandbox import Cluster, free_port

ROOT = Path(__file__).resolve().parent.parent
ODOO_DB_USER = "odoo"
START_TIMEOUT = 60.0  # a 2-core machine shared with other test runs: the server needs ~2 s when idle


@dataclass(frozen=True)
class OdooInstall:
    """Odoo 17.0 as scripts/odoo.sh installed it; ``odoo_bin`` is the wrapper that sets the bytecode cache."""

    env_file: Path
    venv: Path
    python: Path
    odoo_bin: Path
    root: Path
    addons_path: str
    version: str

    def command(self, *args: str) -> list[str]:
        return [str(self.odoo_bin), *args]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run an odoo-bin command (``db ...``, ``neutralize ...``) to completion, output captured."""
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines scripts/odoo.sh writes (shell-quoted values)."""
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = " ".join(shlex.split(value))
    return values


def write_odoo_config(path: Path, cluster: Cluster, install: OdooInstall, *, data_dir: Path,
                      http_port: int | None = None, logfile: Path | None = None, dbfilter: str | None = None,
                      **options: Any) -> Path:
    """An Odoo config for the tests' cluster: loopback only, no crons, a random master password."""
    values: dict[str, Any] = {
        "admin_passwd": secrets.token_hex(12),
        "db_host": cluster.host,
        "db_port": cluster.port,
        "db_user": ODOO_DB_USER,
        "db_password": False,
        "data_dir": data_dir,
        "addons_path": install.addons_path,
        "http_interface": "127.0.0.1",
        "http_port": http_port or free_port(),
        "workers": 0,
        "max_cron_threads": 0,
        "list_db": False,
        "log_level": "info",
    }
    if logfile:
        values["logfile"] = logfile
    if dbfilter:
        values["dbfilter"] = dbfilter
    values.update(options)
    path.write_text("[options]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    return path


@dataclass
class OdooServer:
    """A running ``odoo-bin`` server and the XML-RPC calls the tests make to it."""

    dbname: str
    port: int
    config: Path
    log: Path
    data_dir: Path
    proc: subprocess.Popen
    _output: Path = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self, timeout: float = 5) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/web/health", timeout=timeout) as resp:
            return json.loads(resp.read())

    def version(self) -> dict[str, Any]:
        return xmlrpc_version(self.url)

    def authenticate(self, login: str, password: str) -> int | bool:
        return xmlrpc_authenticate(self.url, self.dbname, login, password)

    def execute(self, uid: int, password: str, model: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``execute_kw`` on /xmlrpc/2/object, as any XML-RPC client of Odoo calls it."""
        with xmlrpc.client.ServerProxy(f"{self.url}/xmlrpc/2/object", allow_none=True) as proxy:
            return proxy.execute_kw(self.dbname, uid, password, model, method, list(args), kwargs)

    def log_text(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self._output, self.log) if p.exists()]
        return "\n".join(parts)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (Odoo shuts down gracefully), SIGKILL if it is still there after ``timeout`` s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode


def xmlrpc_version(url: str) -> dict[str, Any]:
    """``common.version()``: server_version, server_serie, protocol_version (no database touched)."""
    with xmlrpc.client.ServerProxy(f"{url.rstrip('/')}/xmlrpc/2/common") as proxy:
        return proxy.version()


def xmlrpc_authenticate(url: str, db: str, login: str, password: str) -> int | bool:
    """``common.authenticate()``: the user id on success, False on a wrong login or password."""
    with xmlrpc.client.ServerProxy(f"{url.rstrip('/')}/xmlrpc/2/common") as proxy:
        return proxy.authenticate(db, login, password, {})


def _wait_healthy(server: OdooServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"odoo-bin exited {server.proc.returncode} before it was healthy:\n"
                               f"{server.log_text()[-3000:]}")
        try:
            if server.health(timeout=2).get("status") == "pass":
                return
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"odoo-bin on port {server.port} not healthy within {timeout} s ({last}):\n"
                       f"{server.log_text()[-3000:]}")


@pytest.fixture(scope="session")
def odoo_install() -> OdooInstall:
    """Odoo 17.0 from scripts/odoo.sh (installs it on first use; ~0.1 s when cached)."""
    result = subprocess.run(["bash", str(ROOT / "scripts" / "odoo.sh")], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/odoo.sh failed ({result.returncode}):\n{result.stderr[-3000:]}")
    env_file = Path(result.stdout.strip().splitlines()[-1])
    values = read_env_file(env_file)
    return OdooInstall(env_file=env_file, venv=Path(values["ODOO_VENV"]), python=Path(values["ODOO_PYTHON"]),
                       odoo_bin=Path(values["ODOO_BIN"]), root=Path(values["ODOO_ROOT"]),
                       addons_path=values["ODOO_ADDONS_PATH"], version=values["ODOO_VERSION"])


@pytest.fixture(scope="session")
def odoo_db_role(pg_cluster: Cluster) -> str:
    """The PostgreSQL role Odoo connects as (Odoo's server refuses ``postgres``)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ODOO_DB_USER,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(ODOO_DB_USER)))
    return ODOO_DB_USER


@pytest.fixture
def odoo_config_file(pg_cluster: Cluster, odoo_install: OdooInstall, odoo_db_role: str,
                     tmp_path: Path) -> Callable[..., Path]:
    """Factory: write an Odoo config for the tests' cluster (see ``write_odoo_config``)."""
    def make(data_dir: Path, name: str = "odoo.conf", **options: Any) -> Path:
        return write_odoo_config(tmp_path / name, pg_cluster, odoo_install, data_dir=data_dir, **options)

    return make


@pytest.fixture
def odoo_server(pg_cluster: Cluster, odoo_install: OdooInstall, odoo_db_role: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., OdooServer]]:
    """Factory: ``odoo_server(dbname, data_dir=..., **config_options)`` starts a real Odoo server for that
    database (dbfilter ``^dbname$``) and returns it once ``/web/health`` passes; all are stopped at teardown."""
    started: list[OdooServer] = []

    def start(dbname: str, data_dir: Path | None = None, timeout: float = START_TIMEOUT, **options: Any) -> OdooServer:
        workdir = tmp_path_factory.mktemp(f"odoo-{dbname}")
        data_dir = data_dir or workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # a free port can be taken by someone else before Odoo binds it
            port = free_port()
            log = workdir / f"odoo-{attempt}.log"
            output = workdir / f"odoo-{attempt}.out"
            config = write_odoo_config(workdir / "odoo.conf", pg_cluster, odoo_install, data_dir=data_dir,
                                       http_port=port, logfile=log, dbfilter=f"^{re.escape(dbname)}$", **options)
            with open(output, "wb") as out:
                proc = subprocess.Popen(odoo_install.command("-c", str(config)), stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
            server = OdooServer(dbname=dbname, port=port, config=config, log=log, data_dir=data_dir, proc=proc,
                                _output=output)
            started.append(server)
            try:
                _wait_healthy(server, timeout)
                return server
            except RuntimeError:
                server.stop()
                if "Address already in use" not in server.log_text() or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    yield start
    for server in started:
        server.stop()
