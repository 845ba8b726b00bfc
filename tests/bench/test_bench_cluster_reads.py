"""`scripts/bench cluster --only reads --quick` runs to the end and writes its rows.

Only that it starts a real three-node cluster, measures the plain paced latency and the
queue_stats latency under the same load, stops the cluster and prints/writes the rows; the
figures themselves are not checked (about 10 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_only_reads_quick_writes_the_queue_stats_rows(tmp_path: Path) -> None:
    out_json = tmp_path / "reads.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_cluster.py"), "--only", "reads",
         "--quick", "--json", str(out_json)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {what: (figure, detail) for what, figure, detail in json.loads(out_json.read_text())}
    assert "latency at 1,000 sends/s offered" in rows
    figure, detail = rows["queue_stats latency at 1,000 sends/s"]
    assert figure.startswith("p50 ") and "p99 " in figure and "-" not in figure, figure
    assert "n=" in detail
    figure, detail = rows["  sends during those reads"]
    assert "achieved " in detail and "% of the plain row's" in detail, detail
    assert "queue_stats latency at 1,000 sends/s" in proc.stdout
