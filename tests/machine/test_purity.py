"""node/machine stays pure: stdlib and cbor2 only, no clock, I/O, threads or randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import node.machine

FORBIDDEN = {
    "trio",
    "socket",
    "time",
    "os",
    "threading",
    "random",
    "asyncio",
    "subprocess",
    "datetime",
    "pickle",
    "rocksdict",
    "node.raft",
    "cluster",
}


def test_machine_imports_nothing_impure() -> None:
    root = Path(node.machine.__file__).parent
    files = sorted(root.glob("*.py"))
    assert files
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for stmt in ast.walk(tree):
            names: list[str] = []
            if isinstance(stmt, ast.Import):
                names = [a.name for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
                names = [stmt.module]
            for name in names:
                top = name.split(".")[0]
                assert name not in FORBIDDEN and top not in FORBIDDEN, (path.name, name)
                assert name.startswith(("node.machine",)) or top in {
                    "__future__",
                    "collections",
                    "dataclasses",
                    "enum",
                    "hashlib",
                    "heapq",
                    "re",
                    "typing",
                    "cbor2",
                }, (path.name, name)
