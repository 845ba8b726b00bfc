"""`scripts/bench compare --quick` runs to the end on raftq alone and prints its table.

This is the only check CI makes of the benchmarks (issue 6): the figures themselves are not
tested, only that the script starts a real three-node cluster, runs every workload, stops it,
and prints the table and writes its JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_compare import ratio, summarize_stacks  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_compare_runs_to_the_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_compare.py"), "--quick",
         "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=170, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "raftq and peers" in out
    for label in ("one at a time", "1,000 in flight", "receive + ack", "big backlog: enqueue",
                  "failover: to next confirm"):
        assert label in out, label
    reports = list(tmp_path.glob("*.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    raftq = report["results"]["raftq"]
    for wl in ("w1", "w2", "w3", "w4", "w5"):
        assert "error" not in raftq[wl], raftq[wl]
    assert raftq["w1"]["rate_per_s"] > 0
    assert raftq["w5"]["failover_ms"] is not None


def test_ratio_is_oriented_so_above_one_is_better_for_raftq() -> None:
    assert ratio(200.0, 100.0, higher_is_better=True) == 2.0
    assert ratio(5.0, 10.0, higher_is_better=False) == 2.0
    assert ratio(None, 10.0, higher_is_better=True) is None
    assert ratio(1.0, 0.0, higher_is_better=True) is None


def test_summarize_stacks_counts_self_and_inclusive(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "main (node/main.py:1);loop (node/raft_loop.py:5);fsync (b.py:9) 30\n"
        "main (node/main.py:1);loop (node/raft_loop.py:5) 10\n"
    )
    summary = summarize_stacks(raw)
    assert summary["samples"] == 40
    assert summary["self"][0] == ("fsync (b.py)", 75.0)
    assert summary["inclusive"] == [("loop (node/raft_loop.py)", 100.0)]
    assert summary["threads"] == {"event loop": 100.0, "worker threads": 0.0}
