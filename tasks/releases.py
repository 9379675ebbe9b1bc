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


def copy_release(source: Path, folder: Path) -> Path:
    """Copy ``source`` to the release folder ``folder``, complete or not at all (a release folder, once
    named, is never half-written: temporary name, fsync, rename)."""
    import shutil

    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.odoops-tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, symlinks=True)
    for dirpath, _dirs, files in os.walk(tmp):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    os.replace(tmp, folder)
    fd = os.open(folder.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return folder


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


# ---------------------------------------------------------------- which modules a release updates

UPDATE_RULES = ("version", "files", "all", "none")


def full_version(version: str, series: str) -> str:
    """A manifest version as Odoo stores it: ``1.2`` in a 17.0 database is ``17.0.1.2`` (odoo.modules.adapt_version)."""
    if version == series or not version.startswith(f"{series}."):
        return f"{series}.{version}"
    return version


def manifests(release: Path) -> dict[str, str]:
    """Every module of a release folder and its manifest version (an addons folder holds one per subfolder)."""
    found = {}
    for manifest in sorted(release.glob("*/__manifest__.py")):
        found[manifest.parent.name] = manifest_version(release, manifest.parent.name) or ""
    return found


def modules_to_update(new: dict[str, str], installed: dict[str, tuple[str, str | None]], series: str, rule: str,
                      changed: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(modules to update, new modules) for a release whose manifests are ``new``.

    ``version`` (Odoo.sh's rule): installed modules whose manifest version differs from the database's;
    ``files``: installed modules with any file changed in the git range ``changed``; ``all``; ``none``.
    A module in the release that the database has not installed is reported, never installed silently.
    """
    if rule not in UPDATE_RULES:
        raise ConfigError(f"update rule {rule!r} is not one of {', '.join(UPDATE_RULES)}")
    ours = {m for m in new if installed.get(m, ("", None))[0] == "installed"}
    fresh = sorted(m for m in new if installed.get(m, ("uninstalled", None))[0] in ("uninstalled", "uninstallable"))
    if rule == "none":
        return [], fresh
    if rule == "all":
        return sorted(ours), fresh
    if rule == "files":
        touched = {path.split("/", 1)[0] for path in (changed or []) if "/" in path}
        return sorted(ours & touched), fresh
    return sorted(m for m in ours if full_version(new[m], series) != (installed[m][1] or "")), fresh


# ---------------------------------------------------------------- a major upgrade's target

def tree_series(tree: Path) -> str:
    """The series (``17.0``) of the Odoo source tree ``tree``, read from its ``odoo/release.py`` (never run)."""
    release = tree / "odoo" / "release.py"
    if not release.is_file():
        raise RefusedError(f"{tree} is not an Odoo tree (no odoo/release.py): name the folder holding odoo-bin")
    for node in ast.walk(ast.parse(release.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "version_info" for t in node.targets):
            major, minor = (ast.literal_eval(e) for e in node.value.elts[:2])  # (17, 0, 0, FINAL, 0, '')
            return f"{major}.{minor}"
    raise RefusedError(f"{release} names no version_info: is {tree} an Odoo tree?")


def available_modules(addons_paths: list[Path]) -> dict[str, str]:
    """Every module in ``addons_paths`` (the first folder that has it wins, as in Odoo) and its manifest version."""
    found: dict[str, str] = {}
    for folder in addons_paths:
        if folder.is_dir():
            for name, version in manifests(folder).items():
                found.setdefault(name, version)
    return found


def addons_paths(config: Path, replace: dict[str, str]) -> list[Path]:
    """The config's ``addons_path`` entries, each prefix in ``replace`` (a link) swapped for its target."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config)
    entries = [e.strip() for e in parser.get("options", "addons_path", fallback="").split(",") if e.strip()]
    swapped = []
    for entry in entries:
        for link, target in replace.items():
            if entry == link or entry.startswith(link.rstrip("/") + "/"):
                entry = target + entry[len(link.rstrip("/")):]
                break
        swapped.append(Path(entry))
    return swapped
