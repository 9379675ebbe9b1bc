"""odoops: the Odoo operations runbook as Prefect flows."""

__version__ = "0.1.0"
