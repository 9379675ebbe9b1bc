"""The user's addons repository, read with git: which commit a ref names, what changed, a commit's tree.

odoops keeps one bare mirror per repository in its cache (``$ODOOPS_CACHE`` or ``~/.cache/odoops/git``),
fetched before every deploy, so a release is always taken from what the remote holds now, and the
environment's own checkout is never a working copy someone can edit: a commit's tree is exported with
``git archive`` under a temporary name and renamed into place (a cache the platform makes its release
from: a release folder, an image).
Every call is an argv list; git's own error line is surfaced when it fails.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from odoops.errors import ConfigError, RefusedError, ToolFailed, tool_error_line

GIT_TIMEOUT = 600


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str


def cache_root() -> Path:
    return Path(os.environ.get("ODOOPS_CACHE") or Path.home() / ".cache" / "odoops") / "git"


def _git(args: list[str], cwd: Path | None = None, check: bool = True, stdout=subprocess.PIPE,
         timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        result = subprocess.run(["git", *args], cwd=cwd, stdout=stdout, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=env, timeout=timeout)
    except FileNotFoundError:
        raise ToolFailed("git: command not found: install git") from None
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"git {args[0]} did not finish within {timeout} s: check the repository's remote") from None
    if check and result.returncode != 0:
        raise ToolFailed(f"git {args[0]} failed: {tool_error_line(result.stderr)}")
    return result


def mirror(repository: str) -> Path:
    """The local bare mirror of ``repository``, fetched now (created on first use)."""
    folder = cache_root() / (hashlib.sha1(repository.encode()).hexdigest()[:16] + ".git")
    if not (folder / "HEAD").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        result = _git(["clone", "--mirror", "--quiet", "--", repository, str(tmp)], check=False)
        if result.returncode != 0:
            raise ConfigError(f"cannot read the git repository {repository}: {tool_error_line(result.stderr)}: "
                              "check git.repository in the inventory and that this machine may read it")
        os.replace(tmp, folder)
    else:
        result = _git(["fetch", "--prune", "--quiet", "origin", "+refs/*:refs/*"], cwd=folder, check=False)
        if result.returncode != 0:
            raise ConfigError(f"cannot fetch the git repository {repository}: {tool_error_line(result.stderr)}: "
                              "check git.repository in the inventory and the network")
    return folder


def resolve(repo: Path, ref: str, repository: str) -> str:
    """The full commit id ``ref`` names (a branch, a tag, a commit id)."""
    if not ref or ref.startswith("-"):
        raise RefusedError(f"git ref {ref!r} is not a ref: name a branch, a tag or a commit")
    result = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], cwd=repo, check=False)
    if result.returncode != 0:
        raise RefusedError(f"git ref {ref!r} not found in {repository}: push it, or check the branch, tag or commit name")
    return result.stdout.decode().strip()


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    return _git(["merge-base", "--is-ancestor", older, newer], cwd=repo, check=False).returncode == 0


def commits_between(repo: Path, old: str | None, new: str, limit: int = 50) -> list[Commit]:
    """The commits ``new`` has that ``old`` has not, newest first (all of ``new``'s history when old is None)."""
    span = f"{old}..{new}" if old else new
    out = _git(["log", f"--max-count={limit}", "--format=%H%x09%s", span, "--"], cwd=repo).stdout.decode()
    return [Commit(*line.split("\t", 1)) for line in out.splitlines() if "\t" in line]


def changed_files(repo: Path, old: str, new: str, subdir: str = "") -> list[str]:
    """Paths changed between two commits, relative to ``subdir``."""
    args = ["diff", "--name-only", "--no-renames", old, new, "--"] + ([subdir] if subdir else [])
    names = _git(args, cwd=repo).stdout.decode().splitlines()
    prefix = subdir.strip("/") + "/" if subdir else ""
    return [n[len(prefix):] for n in names if n.startswith(prefix)]


def commit_tree(repo: Path, commit: str) -> Path:
    """The whole repository at ``commit``, exported once into the cache (a commit never changes)."""
    return export(repo, commit, cache_root().parent / "trees" / commit)


def export(repo: Path, commit: str, target: Path) -> Path:
    """Write the tree of ``commit`` into ``target``, complete or not at all."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.odoops-tmp{os.getpid()}")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir()
    proc = subprocess.Popen(["git", "archive", "--format=tar", commit], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(tmp, filter="data")
    except tarfile.TarError:
        pass  # git's own error below says why the stream ended
    finally:
        stderr = proc.stderr.read() if proc.stderr else b""
        proc.wait()
    if proc.returncode != 0:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise ToolFailed(f"git archive failed: {tool_error_line(stderr)}")
    os.replace(tmp, target)
    return target
