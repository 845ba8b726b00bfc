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


def test_a_node_that_refuses_its_damaged_database_is_not_a_crash(tmp_path: Path) -> None:
    procs, fake = _procs(tmp_path)
    procs.nodes[2].may_refuse.add(200)
    line = "raftq node 2: cannot start: database /x/n2/raft: log entry 7: checksum mismatch"
    (tmp_path / "n2.log").write_text(f"earlier run\n{line}\n")
    fake.codes[2] = 2
    assert procs.unexpected_exits() == []
    assert procs.nodes[2].refusals == {200: line}
    assert procs.refusal_line(2, 200) == line


def test_a_refusal_needs_the_line_and_status_2(tmp_path: Path) -> None:
    procs, fake = _procs(tmp_path)
    procs.nodes[1].may_refuse.add(100)
    procs.nodes[2].may_refuse.add(200)
    (tmp_path / "n1.log").write_text("Traceback ...\nKeyError\n")
    (tmp_path / "n2.log").write_text("raftq node 2: cannot start: database /x: bad\n")
    fake.codes[1] = 2  # status 2 without the line
    fake.codes[2] = 1  # the line, another status
    crashes = procs.unexpected_exits()
    assert sorted(c["node_id"] for c in crashes) == [1, 2]


def test_output_starts_where_the_process_started(tmp_path: Path) -> None:
    procs, _ = _procs(tmp_path)
    (tmp_path / "n1.log").write_text("raftq node 1: cannot start: database old\n")
    procs.nodes[1].log_offsets[100] = (tmp_path / "n1.log").stat().st_size
    with open(tmp_path / "n1.log", "a") as f:
        f.write("starting\n")
    assert procs.output(1, 100) == "starting\n"
    assert procs.refusal_line(1, 100) is None
