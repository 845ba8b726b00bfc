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
* queue_stats latency at 1,000 sends/s: the same open-loop producer, and meanwhile one reader
  (its own client, to the leader) calling `queue_stats` on that queue one at a time; its p50,
  p99 and count, and the sends achieved per second with their p50/p99 in that window (and as a
  percentage of the plain row's achieved rate); `--only reads` runs just the plain row and
  this one;
* failover: the leader is sent SIGKILL during the 1,000-in-flight load; the time until the next
  confirmed send started after the kill;
* repair of a wiped follower: with a backlog of `--repair-backlog` queued messages (filled with
  `send_batch`, as the drain's; with `--repair-fill single` one send per message, so that the
  leader holds snapshots and the repair installs one), a follower is sent SIGKILL, its data
  directory moved away (`<data_dir>` -> `<data_dir>.lost`) and the node started again with the
  same id; the time until its `node_status` shows `standing` "voter" and the leader's
  `applied_index`. Then the same for the other follower with `--repair-load` sends in flight
  meanwhile (16 producers). Rates: the queue's messages and the bytes the node received, each
  over the repair time; bytes received are the TCP `bytes_received` (from `ss`) of the
  connections to its Raft port, i.e. what its peers sent it since the restart. The size of the
  moved directory and of the leader's snapshot (from its log) are shown beside them. The
  repaired node's log lines that say what it did (start, standing, snapshot installed) are
  printed under the table, in seconds after the restart. (Measured on a fresh cluster after the
  failover.)
* catch-up of a new node: with a backlog of `--catchup-backlog` queued messages (filled with
  `send_batch`) and 16 sends in flight, a fourth node is added as `raftq cluster add-node`
  does (its entry in the configuration file, `--join`: admitted as a learner, promoted once
  caught up); the time until it is a voter whose applied index reached the leader's, the bytes
  its peers sent it and the messages per second over that time, and the confirmed sends per
  second during the change against the 5 s before it. `--only catchup` runs just this, on its
  own cluster.

A confirmed send is one whose reply came: committed on a majority, fsynced and applied.
Everything it started is stopped by pid at the end (also on Ctrl-C) and its data removed.

Usage: scripts/bench cluster [--seconds S] [--backlog N] [--repair-backlog N] [--repair-load N]
                             [--repair-fill batch|single] [--catchup-backlog N]
                             [--only repair|reads|catchup] [--quick]
                             [--keep-data] [--json FILE]
       scripts/bench repair [options]       (the same as --only repair)
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
from bench_peers.raftq_members import catch_up  # noqa: E402
from bench_peers.raftq_peer import RaftqSystem  # noqa: E402
from bench_peers.raftq_reads import stats_under_load  # noqa: E402


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}" if value < 100 else f"{value:,.0f}{unit}"
    return f"{value}{unit}"


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _mb(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "-"
    return f"{n_bytes / 1e6:,.1f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:,.1f} kB"


def repair_rows(
    system: RaftqSystem, backlog: int, load_in_flight: int, notes: list[str], fill: str = "batch"
) -> list[tuple[str, str, str]]:
    """Fill `backlog` messages (`fill`: "batch" or "single", see `RaftqSystem.fill`), repair one
    wiped follower, then (with `load_in_flight`) the other under load. Appends each repaired
    node's timeline to `notes`."""
    rows: list[tuple[str, str, str]] = []
    f = system.fill(backlog, fill)
    done: list[int] = []
    for load in (0, load_in_flight) if load_in_flight else (0,):
        r = system.repair(f["queue"], exclude=done, load_in_flight=load)
        done.append(r["node"])
        how = "log only, no snapshot"
        if r["snapshot_installed"]:
            how = (f"snapshot installed (leader's at index {_count(r['leader_snapshot_index'])},"
                   f" {_mb(r['leader_snapshot_bytes'])}) + log")
        caught = r["caught_up_s"]
        detail = (
            f"n{r['node']}: applied = leader's at {_fmt(caught, ' s')}, voter at"
            f" {_fmt(r['voter_s'], ' s')}; {_count(r['messages'])} msgs queued,"
            f" {_count(r['entries'])} entries, moved dir {_mb(r['lost_bytes'])}, received"
            f" {_mb(r['received_bytes'])}; {_fmt(r['messages_per_s'], ' msgs/s')},"
            f" {_mb(r['bytes_per_s'])}/s; {how}"
        )
        if load:
            what = f"repair, {load} sends in flight meanwhile"
            detail += f"; {_fmt(r['sends_per_s'], ' sends/s')} confirmed during it"
        else:
            what = f"repair of a wiped follower, {backlog:,} queued"
            how_filled = "send_batch" if fill == "batch" else "one send per message"
            detail += f"; fill {_fmt(f['fill_rate_per_s'], ' msgs/s')} ({how_filled})"
        if r["timed_out"]:
            detail += "; TIMED OUT"
        rows.append((what, _fmt(r["repair_s"], " s"), detail))
        notes.append(f"{what}: n{r['node']} (leader n{r['leader']}), standing first seen "
                     + ", ".join(f"{k} {v:.2f} s" for k, v in r["standings"].items())
                     + f"; final {r['final_status']}; its log after the restart:")
        notes.extend(f"  {t:8.3f} s  {text}" for t, text in r["events"])
    return rows


def catch_up_rows(system: RaftqSystem, backlog: int, load_in_flight: int = 16) -> list[
    tuple[str, str, str]
]:
    """Fill `backlog` messages (send_batch), then add a new node under `load_in_flight` sends."""
    f = system.fill(backlog, "batch")
    r = catch_up(system, f["queue"], load_in_flight=load_in_flight)
    detail = (
        f"n{r['node']}: learner at {_fmt(r['learner_s'], ' s')}, applied = leader's at"
        f" {_fmt(r['caught_up_s'], ' s')}, voter at {_fmt(r['voter_s'], ' s')};"
        f" {_count(r['messages'])} msgs queued, {_count(r['entries'])} entries, received"
        f" {_mb(r['received_bytes'])} ({_mb(r['bytes_per_s'])}/s),"
        f" {_fmt(r['messages_per_s'], ' msgs/s')}; data dir {_mb(r['data_bytes'])}"
    )
    ratio = r["during_vs_before"]
    load = (
        f"{_fmt(r['sends_during_per_s'], '/s')} during the change,"
        f" {_fmt(r['sends_before_per_s'], '/s')} in the 5 s before"
        f" ({ratio * 100:.0f} %)" if ratio is not None else "no load"
    )
    if r["errors"]:
        load += f", {r['errors']} errors"
    gap = r.get("longest_confirm_gap_s")
    if gap is not None:
        load += f"; longest gap between confirms {gap:.2f} s"
    before_mib, peak_mib = r.get("memory_before_mib", {}), r.get("memory_peak_mib", {})
    memory = ", ".join(
        f"{k} {before_mib[k]:,.0f} -> {v:,.0f}" if k in before_mib else f"{k} (new) {v:,.0f}"
        for k, v in sorted(peak_mib.items())
    )
    if r["timed_out"]:
        detail += "; TIMED OUT"
    return [
        (f"catch-up of a new node, {backlog:,} queued", _fmt(r["done_s"], " s"), detail),
        (f"  sends during it ({load_in_flight} in flight)", load, ""),
        ("  memory of each node, before -> peak (MiB)", memory, ""),
    ]


def paced_row(system: RaftqSystem, rate_per_s: float, seconds_s: float) -> tuple[
    tuple[str, str, str], float | None
]:
    """The plain `latency at N sends/s offered` row, and its achieved sends/s."""
    r = system.paced(rate_per_s, seconds_s)
    row = (
        f"latency at {rate_per_s:,.0f} sends/s offered",
        f"p50 {_fmt(r['p50_ms'], ' ms')}, p99 {_fmt(r['p99_ms'], ' ms')}",
        f"achieved {_fmt(r['achieved_per_s'], '/s')}, max {_fmt(r['max_ms'], ' ms')}",
    )
    return row, r["achieved_per_s"]


def reads_rows(
    system: RaftqSystem, rate_per_s: float, seconds_s: float, plain_per_s: float | None
) -> list[tuple[str, str, str]]:
    """Two rows: queue_stats latency while `rate_per_s` sends/s are offered for `seconds_s`,
    and the sends of that window (achieved/s also as % of `plain_per_s`, the plain row's)."""
    r = stats_under_load(system, rate_per_s, seconds_s)
    versus = ""
    if plain_per_s and r["sends_per_s"] is not None:
        versus = f" ({r['sends_per_s'] / plain_per_s * 100:.1f} % of the plain row's)"
    errors = f", {r['stats_errors']} errors" if r["stats_errors"] else ""
    return [
        (
            f"queue_stats latency at {rate_per_s:,.0f} sends/s",
            f"p50 {_fmt(r['stats_p50_ms'], ' ms')}, p99 {_fmt(r['stats_p99_ms'], ' ms')}",
            f"one reader, one at a time: n={r['stats_n']:,}, {_fmt(r['stats_per_s'], '/s')},"
            f" max {_fmt(r['stats_max_ms'], ' ms')}{errors}",
        ),
        (
            "  sends during those reads",
            f"p50 {_fmt(r['sends_p50_ms'], ' ms')}, p99 {_fmt(r['sends_p99_ms'], ' ms')}",
            f"achieved {_fmt(r['sends_per_s'], '/s')}{versus}, max"
            f" {_fmt(r['sends_max_ms'], ' ms')}, n={r['sends_n']:,}",
        ),
    ]


def run(
    seconds_s: float,
    backlog: int,
    paced_rate_per_s: float,
    repair_backlog: int = 100_000,
    repair_load: int = 16,
    repair_fill: str = "batch",
    catchup_backlog: int = 100_000,
    only: str | None = None,
    keep_data: bool = False,
    notes: list[str] | None = None,
) -> list[tuple[str, str, str]]:
    """Run every measurement (or only the `only` group) against a fresh cluster; returns
    (what, figure, detail) rows; lines to print under the table go to `notes`."""
    rows: list[tuple[str, str, str]] = []
    notes = notes if notes is not None else []
    system = RaftqSystem(keep_data=keep_data)
    try:
        t0 = time.monotonic()
        system.start()
        rows.append(("cluster start to leader", _fmt((time.monotonic() - t0) * 1000, " ms"), ""))
        if keep_data:
            notes.append(f"data, config and node logs kept in {system.dir}")
        if only == "repair":
            rows.extend(repair_rows(system, repair_backlog, repair_load, notes, repair_fill))
            return rows
        if only == "catchup":
            rows.extend(catch_up_rows(system, catchup_backlog))
            return rows
        if only == "reads":
            row, plain_per_s = paced_row(system, paced_rate_per_s, seconds_s)
            rows.append(row)
            rows.extend(reads_rows(system, paced_rate_per_s, seconds_s, plain_per_s))
            return rows
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
        row, plain_per_s = paced_row(system, paced_rate_per_s, seconds_s)
        rows.append(row)
        rows.extend(reads_rows(system, paced_rate_per_s, seconds_s, plain_per_s))
        r = system.in_flight(1000, seconds_s * 2, producers=16, kill_leader_at_s=seconds_s)
        rows.append((
            "failover (leader SIGKILL)", _fmt(r["failover_ms"], " ms"),
            f"longest gap {_fmt(r['gap_ms'], ' ms')}; {_fmt(r['rate_before_per_s'], '/s')} before,"
            f" {_fmt(r['rate_after_per_s'], '/s')} after (2 nodes)",
        ))
        if repair_backlog > 0:
            # A fresh cluster: the failover left a node down and its queue (about 200,000
            # messages) behind, which would be in the repaired node's snapshot.
            system.stop()
            system.start()
            if keep_data:
                notes.append(f"repair measured on a fresh cluster, kept in {system.dir}")
            rows.extend(repair_rows(system, repair_backlog, repair_load, notes, repair_fill))
        if catchup_backlog > 0:
            system.stop()
            system.start()
            rows.extend(catch_up_rows(system, catchup_backlog))
    finally:
        system.stop()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(prog="scripts/bench cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measurement (s)")
    p.add_argument("--backlog", type=int, default=100_000, help="messages drained by receive+ack")
    p.add_argument("--rate", type=float, default=1000.0, help="offered sends/s for latency")
    p.add_argument("--repair-backlog", type=int, default=100_000,
                   help="messages queued when a wiped follower is repaired (0: no repair rows)")
    p.add_argument("--repair-load", type=int, default=16,
                   help="sends in flight during the second repair (0: only the first)")
    p.add_argument("--repair-fill", choices=("batch", "single"), default="batch",
                   help="backlog filled with send_batch (one entry per 100 messages: no snapshot)"
                        " or one send per message (the leader snapshots; the repair installs one)")
    p.add_argument("--catchup-backlog", type=int, default=100_000,
                   help="messages queued when a new node is added (0: no catch-up rows)")
    p.add_argument("--only", choices=("repair", "reads", "catchup"),
                   help="only this measurement (and the start); reads: the plain latency at"
                        " --rate sends/s offered, then queue_stats latency at that rate;"
                        " catchup: a new node added to a cluster holding --catchup-backlog")
    p.add_argument("--quick", action="store_true",
                   help="2 s measurements, backlogs 5,000")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the cluster's directory (config, node logs, data) and say where")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.backlog, args.repair_backlog = 2.0, 5_000, 5_000
        args.catchup_backlog = 5_000
    if args.only == "repair" and args.repair_backlog <= 0:
        p.error("--only repair needs --repair-backlog > 0")
    notes: list[str] = []
    if args.only == "catchup" and args.catchup_backlog <= 0:
        p.error("--only catchup needs --catchup-backlog > 0")
    rows = run(args.seconds, args.backlog, args.rate, args.repair_backlog, args.repair_load,
               args.repair_fill, args.catchup_backlog, args.only, args.keep_data, notes)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"raftq, local 3-node cluster, 1 KiB bodies (code {code_version()}, "
                        f"1-min load at the end {os.getloadavg()[0]:.1f})")
    for col in ("measurement", "figure", "detail"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)
    for line in notes:
        print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
