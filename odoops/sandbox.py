"""A throwaway PostgreSQL cluster and the bundled sample Odoo database, for the demo and the tests.

Never used against a real deployment: it runs its own ``initdb`` cluster on loopback with trust
authentication in a temporary folder, and removes it on ``stop()``. As root (CI, these machines)
PostgreSQL refuses to run, so the cluster runs as the ``postgres`` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from odoops.errors import ToolFailed, tool_error_line

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample" / "odoo17"
SAMPLE_ZIP = SAMPLE_DIR / "acme_demo_odoo17.zip"
SAMPLE_DUMP = SAMPLE_DIR / "acme_demo_odoo17.dump"


def _pg_bindir() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise ToolFailed("PostgreSQL server binaries (initdb) not found: install postgresql (apt-get install postgresql)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    result = subprocess.run(args, capture_output=True, **kwargs)
    if result.returncode != 0:
        raise ToolFailed(f"{Path(args[0] if os.geteuid() else args[3]).name} failed: {tool_error_line(result.stderr)}")
    return result


@dataclass
class Cluster:
    """A running throwaway cluster."""

    root: Path
    port: int
    bindir: Path

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def env(self) -> dict[str, str]:
        """libpq variables for the client tools."""
        return {"PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": "postgres"}

    def stop(self, remove: bool = True) -> None:
        data = self.root / "pg" / "data"
        if data.exists():
            subprocess.run(
                (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
                + [str(self.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
            )
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(root: Path | None = None, port: int | None = None) -> Cluster:
    """initdb + start a cluster listening on 127.0.0.1 only, trust auth, fsync off (scratch data)."""
    bindir = _pg_bindir()
    root = Path(root or tempfile.mkdtemp(prefix="odoops-pg-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    pgdir = root / "pg"
    pgdir.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(pgdir, pw.pw_uid, pw.pw_gid)
    port = port or free_port()
    if (pgdir / "data" / "PG_VERSION").exists():  # an existing throwaway cluster (make demo, then make serve)
        _run_as_postgres([str(bindir / "pg_ctl"), "-D", str(pgdir / "data"), "-l", str(pgdir / "log"), "-w", "-o",
                          f"-p {port} -k {pgdir} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        return Cluster(root=root, port=port, bindir=bindir)
    _run_as_postgres(
        [str(bindir / "initdb"), "-D", str(pgdir / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--locale=C.UTF-8", "--no-sync"]
    )
    _run_as_postgres(
        [str(bindir / "pg_ctl"), "-D", str(pgdir / "data"), "-l", str(pgdir / "log"), "-w", "-o",
         f"-p {port} -k {pgdir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100", "start"]
    )
    return Cluster(root=root, port=port, bindir=bindir)


def load_sample_database(cluster: Cluster, dbname: str, filestore_root: Path, archive: Path = SAMPLE_ZIP) -> Path:
    """Load an Odoo zip the way Odoo's database manager does: createdb, psql dump.sql, copy filestore.

    Returns the database's filestore folder (``<filestore_root>/<dbname>``).
    """
    env = {**os.environ, **cluster.env()}
    subprocess.run(["createdb", "-T", "template0", "-E", "UTF8", dbname], env=env, check=True, capture_output=True)
    target = Path(filestore_root) / dbname
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf, tempfile.TemporaryDirectory() as tmp:
        zf.extract("dump.sql", tmp)
        result = subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-f", str(Path(tmp) / "dump.sql")],
            env=env, capture_output=True,
        )
        if result.returncode != 0:
            raise ToolFailed(f"psql failed loading the sample: {tool_error_line(result.stderr)}")
        for info in zf.infolist():
            if info.filename.startswith("filestore/") and not info.is_dir():
                dest = target / info.filename[len("filestore/"):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
    return target
