"""The ``host`` platform on the local machine: database by DSN, filestore by path, commands by subprocess."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from odoops.errors import ConfigError, TimedOut, ToolFailed, tool_error_line
from odoops.platforms.base import FilestoreEntry, Platform, kill_process_group
from tasks import releases


class HostPlatform(Platform):
    @property
    def filestore_path(self) -> Path:
        return Path(self.env.filestore)

    def filestore_exists(self) -> bool:
        return self.filestore_path.is_dir()

    def list_filestore(self) -> Iterator[FilestoreEntry]:
        root = self.filestore_path
        if not root.is_dir():
            raise ConfigError(f"environment {self.env.name}: filestore folder {root} does not exist: "
                              "check 'filestore:' in the inventory (<data_dir>/filestore/<dbname>)")
        stack = [root]
        while stack:
            folder = stack.pop()
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        rel = os.path.relpath(entry.path, root).replace(os.sep, "/")
                        yield FilestoreEntry(rel, st.st_size, st.st_mtime_ns)

    def open_filestore_file(self, relpath: str) -> BinaryIO:
        return open(self.filestore_path / relpath, "rb")

    def read_odoo_config(self) -> str | None:
        if not self.env.odoo_config:
            return None
        path = Path(self.env.odoo_config)
        if not path.is_file():
            raise ConfigError(f"environment {self.env.name}: odoo_config {path} not found: fix or remove 'odoo_config:'")
        return path.read_text(errors="replace")

    def running_release(self) -> dict[str, str]:
        """``{"path": addons release folder}``, and ``"odoo": Odoo tree`` where the inventory names odoo_link."""
        current = {"path": str(releases.current_release(self._addons_link()))}
        if self.env.odoo_link:
            current["odoo"] = str(releases.current_release(Path(self.env.odoo_link)))
        return current

    def switch_release(self, release: dict[str, str]) -> dict[str, str]:
        """Re-point the addons link (and, for a major upgrade, the Odoo tree's link), each in one rename."""
        if "path" not in release:
            raise ConfigError(f"environment {self.env.name}: a host release is a folder, not {sorted(release)}")
        if release.get("odoo") and not self.env.odoo_link:
            raise ConfigError(f"environment {self.env.name}: another Odoo tree needs odoo_link in the inventory (the "
                              "link odoo_bin and the service run Odoo through): add it")
        previous = self.running_release()
        releases.point_link(self._addons_link(), Path(release["path"]))
        if release.get("odoo"):
            releases.point_link(Path(self.env.odoo_link), Path(release["odoo"]))
        return previous

    def inspect_release(self, release: dict[str, str]) -> dict[str, Any]:
        """Read from the files: the tree's odoo/release.py and the manifests of the addons path the config names,
        with the links swapped for the release's folders (nothing runs, nothing is re-pointed)."""
        tree = Path(release.get("odoo") or (releases.current_release(Path(self.env.odoo_link))
                                            if self.env.odoo_link else ""))
        if not str(tree) or str(tree) == ".":
            raise ConfigError(f"environment {self.env.name}: name the target Odoo tree (--odoo DIR) and its link "
                              "(odoo_link in the inventory)")
        config = releases.config_path(list(self.env.odoo_bin)) or (Path(self.env.odoo_config)
                                                                    if self.env.odoo_config else None)
        swap = {self.env.addons_link: release.get("path")} if self.env.addons_link and release.get("path") else {}
        if self.env.odoo_link:
            swap[self.env.odoo_link] = str(tree)
        paths = releases.addons_paths(config, swap) if config else []
        return {"series": releases.tree_series(tree),
                "modules": releases.available_modules([*paths, tree / "odoo" / "addons", tree / "addons"])}

    def prepare_release(self, commit: str, tree: Path, addons: Path) -> dict[str, str]:
        """``<releases_dir>/<commit>``: the commit's addons folder, written under a temporary name and renamed."""
        folder = (Path(self.env.releases_dir) if self.env.releases_dir else self._addons_link().parent / "releases") \
            / commit
        releases.copy_release(addons, folder)
        return {"path": str(folder)}

    def _addons_link(self) -> Path:
        if not self.env.addons_link:
            raise ConfigError(f"environment {self.env.name}: switching code needs addons_link in the inventory (the "
                              "link its addons_path names, which odoops points at a release folder): add it")
        return Path(self.env.addons_link)

    def run(self, argv: list[str], check: bool = True, timeout: float | None = None,
            on_start: Callable[[int], None] | None = None) -> subprocess.CompletedProcess:
        try:
            # its own session: at a time limit the whole tree is killed, and a SIGKILL of odoops does not
            # kill it silently (the journal names its pid, so the next run can)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        except FileNotFoundError:
            raise ToolFailed(f"{argv[0]}: command not found on this host: check the environment's commands") from None
        if on_start is not None:
            on_start(proc.pid)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_process_group(proc.pid)
            proc.communicate()
            raise TimedOut(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s and was stopped "
                           "(it and every process it started)") from None
        except BaseException:
            kill_process_group(proc.pid)
            raise
        result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
        if check and result.returncode != 0:
            raise ToolFailed(f"{Path(argv[0]).name} exited {result.returncode}: {tool_error_line(result.stderr)}")
        return result
