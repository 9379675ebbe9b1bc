"""Platforms: the small interface the flows talk to, whatever runs Odoo.

A flow asks a platform for the database's connection parameters, the filestore's files, the Odoo
configuration, to run an Odoo command, to stop and start Odoo, for its logs and its health URL. It
never asks how: ``host`` (Odoo on a machine, local or over SSH), ``docker`` (Odoo in a container on
a Docker engine) and ``odoosh`` (an Odoo.sh branch, through SSH into its current build) implement it.
"""

from __future__ import annotations

from odoops.inventory import Environment
from odoops.platforms.base import FilestoreEntry, Platform


def platform_for(env: Environment) -> Platform:
    """The platform implementation that drives ``env``."""
    if env.platform == "host":
        if env.ssh is not None:
            from odoops.platforms.ssh_host import SSHHostPlatform

            return SSHHostPlatform(env)
        from odoops.platforms.host import HostPlatform

        return HostPlatform(env)
    if env.platform == "docker":
        from odoops.platforms.docker import DockerPlatform

        return DockerPlatform(env)
    if env.platform == "odoosh":
        from odoops.platforms.odoosh import OdooShPlatform

        return OdooShPlatform(env)
    from odoops.errors import ConfigError

    raise ConfigError(f"environment {env.name}: platform {env.platform!r} is not implemented yet: "
                      "use platform: host or docker")


__all__ = ["FilestoreEntry", "Platform", "platform_for"]
