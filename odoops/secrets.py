"""Where secrets come from: environment variables or Prefect Secret blocks, never the inventory."""

from __future__ import annotations

import os

from odoops.errors import ConfigError


def read_secret(env_var: str | None = None, block: str | None = None, what: str = "secret") -> str | None:
    """The secret named by an environment variable or a Prefect Secret block, or None if neither is named."""
    if env_var:
        value = os.environ.get(env_var)
        if value is None:
            raise ConfigError(f"{what}: environment variable {env_var} is not set: export it or use a Prefect Secret block")
        return value
    if block:
        try:
            from prefect.blocks.system import Secret

            return Secret.load(block).get()
        except ValueError:
            raise ConfigError(f"{what}: Prefect Secret block {block!r} not found: create it in the UI "
                              f"(Blocks > Secret) or with Secret(value=...).save({block!r})") from None
    return None
