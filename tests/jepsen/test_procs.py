"""Crash detection of node processes, on a stand-in launcher (no processes)."""

from __future__ import annotations

import os
from pathlib import Path

from jepsen_like.procs import NodeProcess, NodeProcs, process_state


class FakeLauncher:
    def __init__(self, log_dir: Path) -> None:
        self.codes: dict[int, int | None] = {1: None, 2: None}
        self.log_dir = log_dir

    def exit_code(self, node_id: int) -> int | None:
        return self.codes[node_id]

    def log_path(self, node_id: int) -> Path:
        return self.log_dir / f"n{node_id}.log"


def _procs(tmp_path: Path) -> tuple[NodeProcs, FakeLauncher]:
    procs = object.__new__(NodeProcs)
    fake = FakeLauncher(tmp_path)
    procs.launcher = fake  # type: ignore[assignment]
    procs.nodes = {1: NodeProcess(1, pids=[100]), 2: NodeProcess(2, pids=[200])}
    procs._reported = set()
    return procs, fake


def test_a_node_that_exits_by_itself_is_reported_once(tmp_path: Path) -> None:
    procs, fake = _procs(tmp_path)
    (tmp_path / "n2.log").write_text("starting\nTraceback ...\nBrokenResourceError\n")
    assert procs.unexpected_exits() == []
    fake.codes[2] = 1
    (crash,) = procs.unexpected_exits()
    assert crash["node_id"] == 2 and crash["pid"] == 200 and crash["exit_code"] == 1
    assert crash["log_tail"][-1] == "BrokenResourceError"
    assert procs.unexpected_exits() == []  # reported once


def test_a_node_the_run_killed_is_not_a_crash(tmp_path: Path) -> None:
    procs, fake = _procs(tmp_path)
    procs.nodes[1].killed.add(100)
    fake.codes[1] = -9
    assert procs.unexpected_exits() == []


def test_process_state_reads_proc() -> None:
    assert process_state(os.getpid()) in ("R", "S")
    assert process_state(2**22 + 12345) is None
