#!/usr/bin/env python
"""raftq cluster speed (scripts/bench cluster): a local three-node cluster, real processes.

Starts three `python -m node` processes on 127.0.0.1 (free ports, data in a temporary
directory) with `cluster.launcher.Launcher`, and prints, for 1 KiB bodies:

* confirmed sends per second, one producer sending one at a time (and p50/p99 latency);
* confirmed sends per second with 16 producers, one send outstanding each, and with
  16 producers keeping 1,000 sends outstanding in all;
* receive + ack per second, draining a backlog (receives of up to 100 messages, each batch
  acked with one call);
* p50 and p99 confirm latency at 1,000 sends/s offered (open loop, counted from the time each
  send was due);
* failover: the leader is sent SIGKILL during the 1,000-in-flight load; the time until the next
  confirmed send started after the kill.

A confirmed send is one whose reply came: committed on a majority, fsynced and applied.
Everything it started is stopped by pid at the end (also on Ctrl-C) and its data removed.

Usage: scripts/bench cluster [--seconds S] [--backlog N] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from bench_peers.common import code_version  # noqa: E402
from bench_peers.raftq_peer import RaftqSystem  # noqa: E402


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}" if value < 100 else f"{value:,.0f}{unit}"
    return f"{value}{unit}"


def run(seconds_s: float, backlog: int, paced_rate_per_s: float) -> list[tuple[str, str, str]]:
    """Run every measurement against a fresh cluster; returns (what, figure, detail) rows."""
    rows: list[tuple[str, str, str]] = []
    system = RaftqSystem()
    try:
        t0 = time.monotonic()
        system.start()
        rows.append(("cluster start to leader", _fmt((time.monotonic() - t0) * 1000, " ms"), ""))
        r = system.one_at_a_time(seconds_s)
        rows.append((
            "1 producer, one at a time", _fmt(r["rate_per_s"], " sends/s"),
            f"p50 {_fmt(r['p50_ms'], ' ms')}, p99 {_fmt(r['p99_ms'], ' ms')}, n={r['n']}",
        ))
        for in_flight in (16, 1000):
            r = system.in_flight(in_flight, seconds_s, producers=16)
            rows.append((
                f"16 producers, {in_flight} in flight", _fmt(r["rate_per_s"], " sends/s"),
                f"p50 {_fmt(r['p50_ms'], ' ms')}, p99 {_fmt(r['p99_ms'], ' ms')}, n={r['n']}",
            ))
        r = system.drain(backlog)
        rows.append((
            f"receive + ack, backlog {backlog:,}", _fmt(r["rate_per_s"], " msgs/s"),
            f"batches of 100; fill {_fmt(r['fill_rate_per_s'], ' msgs/s')} (send_batch)",
        ))
        r = system.paced(paced_rate_per_s, seconds_s)
        rows.append((
            f"latency at {paced_rate_per_s:,.0f} sends/s offered",
            f"p50 {_fmt(r['p50_ms'], ' ms')}, p99 {_fmt(r['p99_ms'], ' ms')}",
            f"achieved {_fmt(r['achieved_per_s'], '/s')}, max {_fmt(r['max_ms'], ' ms')}",
        ))
        r = system.in_flight(1000, seconds_s * 2, producers=16, kill_leader_at_s=seconds_s)
        rows.append((
            "failover (leader SIGKILL)", _fmt(r["failover_ms"], " ms"),
            f"longest gap {_fmt(r['gap_ms'], ' ms')}; {_fmt(r['rate_before_per_s'], '/s')} before,"
            f" {_fmt(r['rate_after_per_s'], '/s')} after (2 nodes)",
        ))
    finally:
        system.stop()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(prog="scripts/bench cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measurement (s)")
    p.add_argument("--backlog", type=int, default=100_000, help="messages drained by receive+ack")
    p.add_argument("--rate", type=float, default=1000.0, help="offered sends/s for latency")
    p.add_argument("--quick", action="store_true", help="2 s measurements, backlog 5,000")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.backlog = 2.0, 5_000
    rows = run(args.seconds, args.backlog, args.rate)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"raftq, local 3-node cluster, 1 KiB bodies (code {code_version()}, "
                        f"1-min load at the end {os.getloadavg()[0]:.1f})")
    for col in ("measurement", "figure", "detail"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
