"""The CLI's usage and exit codes, and the report, without starting a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import jepsen_like.__main__ as cli
from jepsen_like import report
from jepsen_like.runner import RunOptions, RunOutcome, check_outcome
from jepsen_like.scenarios import SCENARIOS

from .test_checker import STATUS, good


def _outcome(tmp_path: Path, *, lose_one: bool = False) -> RunOutcome:
    b = good()
    if lose_one:
        b.enqueue(0, 4242)
    out = RunOutcome(RunOptions(out_dir=tmp_path, seed=5, require_faults=True), b.h)
    out.final_statuses = STATUS
    out.drain = {"complete": True, "rounds": {"q": 3}, "received": {"q": 0}}
    out.faults = [{"index": 0, "kind": "kill", "variant": "leader", "nodes": [1], "links": [],
                   "pids": [10], "start_s": 0.5, "end_s": 1.0, "start_wall_ms": 1.0,
                   "end_wall_ms": 2.0, "evidence": {"exit_codes": {"1": -9}}, "verified": True,
                   "note": ""}]
    return out


def test_list_scenarios_and_bad_usage(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli.main, ["--list-scenarios"])
    assert res.exit_code == 0
    for name in SCENARIOS:
        assert name in res.output
    res = runner.invoke(cli.main, ["--nemesis", "flood"])
    assert res.exit_code == 2 and "unknown nemesis" in res.output
    res = runner.invoke(cli.main, ["--net", "netns"])
    assert res.exit_code == 2
    (tmp_path / "data").mkdir()
    res = runner.invoke(cli.main, ["--out", str(tmp_path), "--duration", "1"])
    assert res.exit_code == 2 and "already holds a run" in res.output


@pytest.mark.parametrize("valid", [True, False])
def test_exit_code_follows_validity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    valid: bool) -> None:
    seen: list[RunOptions] = []

    def fake_run(opts: RunOptions) -> RunOutcome:
        seen.append(opts)
        out = _outcome(tmp_path, lose_one=not valid)
        check_outcome(out)
        return out

    monkeypatch.setattr(cli, "run_sync", fake_run)
    res = CliRunner().invoke(cli.main, ["--scenario", "ring", "--seed", "9", "--duration", "7",
                                        "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == (0 if valid else 1), res.output
    assert ("VALID" if valid else "INVALID") in res.output
    (opts,) = seen
    assert opts.scenario == "ring" and opts.nodes == 5 and opts.seed == 9
    assert opts.duration_s == 7 and opts.schedule and opts.schedule[0].variant == "ring"


def test_report_writes_results_and_plots(tmp_path: Path) -> None:
    out = _outcome(tmp_path, lose_one=True)
    check_outcome(out)
    assert not out.valid and out.check["failed_checks"] == ["total_queue"]
    res = report.write_all(out)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["valid"] is False and data["failed_checks"] == ["total_queue"]
    assert data["summary"]["lost"] == 1 and data["check"]["total_queue"]["lost"] == [4242]
    assert data["faults"][0]["kind"] == "kill" and data["seed"] == 5
    assert res["plots"] == ["latency.png", "throughput.png"]
    for png in ("latency.png", "throughput.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == len(out.history.ops)
