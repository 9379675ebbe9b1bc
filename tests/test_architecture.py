"""The layers of docs/architecture.md, checked on every import statement (lazy ones inside functions too):
a module imports only from its own layer or those below it."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS: list[tuple[str, list[str]]] = [  # bottom first, as in docs/architecture.md
    ("base", ["odoops", "odoops.errors", "odoops.inventory", "odoops.secrets", "odoops.redact", "odoops.holders",
              "odoops.platforms.base"]),
    ("tasks", ["tasks", "tasks.*"]),
    ("glue", ["odoops.platforms", "odoops.platforms.*", "odoops.runtime", "odoops.slots", "odoops.audit",
              "odoops.checks", "odoops.sizes", "odoops.sandbox", "odoops.devserver", "odoops.release_history",
              "odoops.localserver", "odoops.fleet"]),
    ("flows", ["flows", "flows.*"]),
    ("cli", ["odoops.cli", "odoops.cli_*", "odoops.demo", "odoops.__main__"]),
]


def layer_of(module: str) -> int | None:
    """The most specific pattern wins (odoops.platforms.base is base, odoops.platforms.host is glue)."""
    best: tuple[int, int] | None = None
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if fnmatch.fnmatchcase(module, pattern):
                score = len(pattern) - pattern.count("*") * 100
                if best is None or score > best[0]:
                    best = (score, index)
    return best[1] if best else None


def project_modules() -> dict[str, Path]:
    out = {}
    for package in ("odoops", "tasks", "flows"):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported(path: Path, module: str) -> set[str]:
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def test_every_module_has_a_layer():
    unplaced = [m for m in project_modules() if layer_of(m) is None]
    assert unplaced == [], f"place these in docs/architecture.md and LAYERS: {unplaced}"


def test_no_import_points_up():
    modules = project_modules()
    upward = []
    for module, path in modules.items():
        mine = layer_of(module)
        for name in imported(path, module):
            if name not in modules:
                continue  # a third-party module, or `from pkg import function`
            theirs = layer_of(name)
            if theirs is not None and mine is not None and theirs > mine:
                upward.append(f"{module} ({LAYERS[mine][0]}) imports {name} ({LAYERS[theirs][0]})")
    assert upward == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule itself can fail: a task importing the run-time glue is caught."""
    fake = tmp_path / "tasks" / "x.py"
    fake.parent.mkdir()
    fake.write_text("def f():\n    from odoops.runtime import repository_for\n    from ..flows import backup\n")
    names = imported(fake, "tasks.x")
    assert "odoops.runtime" in names and "flows.backup" in names
    assert layer_of("odoops.runtime") > layer_of("tasks.x") and layer_of("flows.backup") > layer_of("tasks.x")
    assert layer_of("odoops.platforms.base") < layer_of("tasks.x") < layer_of("odoops.platforms.host")
