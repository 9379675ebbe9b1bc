"""Code on an Odoo host: release folders and the link that says which one runs.

Self-hosted, the environment's ``addons_path`` names a symbolic link (inventory ``addons_link``) that
points at one release folder. Switching code is replacing that link atomically (a new link renamed over
the old one), so Odoo never sees half of two releases, and going back is pointing it at the previous
folder again.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from odoops.errors import ConfigError, RefusedError


def current_release(link: Path) -> Path:
    if not link.is_symlink():
        raise ConfigError(f"addons_link {link} is not a symbolic link: make the addons_path name a link to the "
                          "release folder (ln -s RELEASE_FOLDER LINK)")
    return Path(os.readlink(link))


def point_link(link: Path, target: Path) -> Path:
    """Point ``link`` at ``target`` in one rename; returns where it pointed before."""
    previous = current_release(link)
    tmp = link.with_name(f".{link.name}.odoops-new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return previous


def manifest_version(release: Path, module: str) -> str | None:
    """The ``version`` of ``release/module/__manifest__.py`` (read, never imported); None without a manifest."""
    manifest = release / module / "__manifest__.py"
    if not manifest.is_file():
        return None
    try:
        data = ast.literal_eval(manifest.read_text())
    except (SyntaxError, ValueError):
        raise ConfigError(f"{manifest} is not a valid manifest (a Python dict literal): fix it") from None
    return str(data.get("version", "")) if isinstance(data, dict) else None


def check_release(release: Path, modules: list[str], series: str) -> None:
    """The new code holds every module to update, each at a version of the database's Odoo series."""
    if not release.is_dir():
        raise RefusedError(f"release folder {release} does not exist: check the path of the new code")
    for module in modules:
        version = manifest_version(release, module)
        if version is None:
            raise RefusedError(f"module {module} is not in the new code {release}: an update needs every module "
                               "it updates in the addons path")
        if not version.startswith(f"{series}."):
            raise RefusedError(f"module {module} is version {version} in {release}, not a {series} version "
                               f"({series}.x.y.z): this database runs Odoo {series}")


def config_path(odoo_bin: list[str]) -> Path | None:
    """The Odoo config file the inventory's ``odoo_bin`` names (``-c FILE``, ``--config FILE|=FILE``)."""
    for i, word in enumerate(odoo_bin):
        if word in ("-c", "--config") and i + 1 < len(odoo_bin):
            return Path(odoo_bin[i + 1])
        if word.startswith("--config="):
            return Path(word.split("=", 1)[1])
    return None


def addons_path_with(config: Path, link: Path, release: Path) -> str:
    """The config's ``addons_path`` with the release folder in place of the link (a rehearsal of new code
    must not re-point the link the live Odoo runs from)."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config)
    entries = [e.strip() for e in parser.get("options", "addons_path", fallback="").split(",") if e.strip()]
    if str(link) not in entries:
        raise ConfigError(f"the addons_path of {config} does not name addons_link {link}: add the link to it")
    return ",".join(str(release) if e == str(link) else e for e in entries)
