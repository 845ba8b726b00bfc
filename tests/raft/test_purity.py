"""The pure rings import no I/O (DESIGN.md section 1): an AST scan of every import."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BANNED = {
    "trio",
    "anyio",
    "asyncio",
    "socket",
    "time",
    "os",
    "threading",
    "rocksdict",
    "subprocess",
    "selectors",
    "multiprocessing",
    "signal",
    "select",
    "io",
    "pathlib",
    "shutil",
}


def imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            found.append((node.lineno, "__import__"))
    return found


@pytest.mark.parametrize("package", ["node/raft", "node/machine"])
def test_pure_packages_import_no_io(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources found under {package}"
    bad = [
        f"{f.relative_to(ROOT)}:{line}: imports {mod}"
        for f in files
        for line, mod in imported_modules(f)
        if mod.split(".")[0] in BANNED or mod == "__import__"
    ]
    assert not bad, "\n".join(bad)


def test_scan_detects_a_banned_import(tmp_path: pathlib.Path) -> None:
    # The checker itself must be able to fail.
    f = tmp_path / "bad.py"
    f.write_text("import os\nfrom trio import sleep\n")
    mods = [m for _, m in imported_modules(f)]
    assert mods == ["os", "trio"]


def test_raft_does_not_use_global_random_state() -> None:
    # Randomness is injected: no module-level random functions anywhere in the core.
    for f in sorted((ROOT / "node/raft").rglob("*.py")):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
                and node.attr not in ("Random",)
            ):
                raise AssertionError(f"{f}:{node.lineno}: random.{node.attr} uses global state")
