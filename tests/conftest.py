"""Real services for the tests: a throwaway PostgreSQL cluster with the real Odoo 17 sample loaded,
Prefect's test harness (one per session), and the plugins in tests/services_*.py (sshd, S3)."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
