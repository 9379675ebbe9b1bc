"""Real services for the tests: a throwaway PostgreSQL cluster with the real Odoo 17 sample loaded,
Prefect's test harness (one per session), and the plugins in tests/services_*.py (sshd, S3)."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="odoops-prefect-home-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest  # noqa: E402

from odoops.sandbox import SAMPLE_ZIP, Cluster, load_sample_database, start_cluster  # noqa: E402
from tests.helpers import copy_sample, drop_database  # noqa: E402

pytest_plugins = ["tests.services_ssh", "tests.services_s3", "tests.services_odoo", "tests.services_docker"]

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DB = "odoops_sample_template"


@pytest.fixture(scope="session")
def pg_cluster() -> Cluster:
    cluster = start_cluster()
    os.environ.update(cluster.env())
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def sample_template(pg_cluster, tmp_path_factory) -> tuple[str, Path]:
    """The real Odoo 17 sample loaded once as a template database, with its filestore."""
    root = tmp_path_factory.mktemp("template-data")
    filestore = load_sample_database(pg_cluster, TEMPLATE_DB, root / "filestore", SAMPLE_ZIP)
    return TEMPLATE_DB, filestore


@pytest.fixture
def odoo_db(pg_cluster, sample_template, tmp_path) -> tuple[str, Path]:
    """A fresh copy of the sample database and its filestore: (dbname, filestore folder)."""
    dbname, filestore = copy_sample(pg_cluster, sample_template, tmp_path)
    yield dbname, filestore
    drop_database(pg_cluster, dbname)


@pytest.fixture(scope="session", autouse=True)
def _no_local_prefect_server_left(tmp_path_factory):
    """CLI calls without PREFECT_API_URL start the local Prefect server of their PREFECT_HOME
    (odoops/localserver.py): the ones this session started (its home, homes in its temp folder) stop with it."""
    from odoops import localserver

    session_home = localserver.prefect_home()
    was_running = localserver.running(session_home) is not None
    yield
    base = tmp_path_factory.getbasetemp().resolve()

    def ours(home: Path) -> bool:
        return home.is_relative_to(base) or (home == session_home and not was_running)

    for home in {session_home, *localserver.local_servers().values()}:
        if ours(home):
            localserver.stop_local(home)
    for pid, home in localserver.local_servers().items():  # one its record no longer names
        if ours(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
