#!/usr/bin/env python
"""raftq side by side with peers on this machine (scripts/bench compare).

A claim of speed counts only next to a peer measured in the same run on the same machine, as a
ratio. This runs each workload against every chosen system in turn (the order rotates from one
workload to the next, so that drift of the machine falls on all of them), then prints a table of
the figures and of raftq/peer ratios, writes `bench-results/<DATE>.json` and a PNG bar chart of
the ratios `bench-results/<DATE>.png`.

Systems (`--systems`, comma separated):
  raftq      the local three-node raftq cluster (`cluster.launcher.Launcher`), as a user runs it
  rabbitmq   a local three-node RabbitMQ cluster (Debian's rabbitmq-server, installed when
             missing) with one quorum queue; publisher confirms, persistent messages; aio-pika
  pysyncobj  pysyncobj's ReplQueue on three local processes with a password, behind a small
             TCP front end per process (bench_peers/syncobj_node.py)
  limits     fsync/s, synced RocksDB batches/s, trio loopback frames/s on this machine

Workloads (1 KiB bodies):
  1  confirmed sends one at a time, one producer: msgs/s, p50/p99 latency
  2  confirmed sends with 1,000 in flight (16 producers for raftq and pysyncobj; a confirm
     window of 1,000 over 16 channels for RabbitMQ)
  3  receive + ack throughput draining a backlog of 100,000
  4  a backlog of 1,000,000: enqueue (as 2), then drain (as 3); peak resident memory per node
  5  failover: SIGKILL the leader during workload 2; time until the first confirm of a send
     started after the kill; throughput before and after

Ratios are oriented so that above 1.0 means raftq did better: raftq/peer for rates, peer/raftq
for latencies, times and memory.

Usage: scripts/bench compare [--quick] [--systems raftq,rabbitmq,pysyncobj,limits] [--profile]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from bench_peers.common import ROOT, Unavailable, code_version  # noqa: E402

ALL_SYSTEMS = ("raftq", "rabbitmq", "pysyncobj", "limits")
PEERS = ("rabbitmq", "pysyncobj")


@dataclass(frozen=True)
class Sizes:
    """How much each workload does.

    Attributes:
        one_s: seconds of workload 1.
        window_s: seconds of workload 2.
        in_flight: operations outstanding in workload 2, 4 and 5.
        producers: producer connections in workload 2, 4 and 5.
        drain_backlog: messages drained in workload 3.
        big_backlog: messages enqueued then drained in workload 4.
        failover_before_s: seconds of load before the kill in workload 5.
        failover_after_s: seconds of load after the kill in workload 5.
        limits_s: seconds of each limit measurement.
    """

    one_s: float
    window_s: float
    in_flight: int
    producers: int
    drain_backlog: int
    big_backlog: int
    failover_before_s: float
    failover_after_s: float
    limits_s: float


FULL = Sizes(10.0, 10.0, 1000, 16, 100_000, 1_000_000, 8.0, 12.0, 2.0)
QUICK = Sizes(2.0, 2.0, 1000, 16, 2_000, 5_000, 2.0, 3.0, 0.5)

# (key, workload, label, unit, higher_is_better): one table row each.
ROWS: list[tuple[str, str, str, str, bool]] = [
    ("w1.rate_per_s", "1", "one at a time", "msgs/s", True),
    ("w1.p50_ms", "1", "  p50 latency", "ms", False),
    ("w1.p99_ms", "1", "  p99 latency", "ms", False),
    ("w2.rate_per_s", "2", "1,000 in flight", "msgs/s", True),
    ("w2.p50_ms", "2", "  p50 latency", "ms", False),
    ("w2.p99_ms", "2", "  p99 latency", "ms", False),
    ("w3.rate_per_s", "3", "receive + ack (drain)", "msgs/s", True),
    ("w4.enqueue_rate_per_s", "4", "big backlog: enqueue", "msgs/s", True),
    ("w4.drain_rate_per_s", "4", "big backlog: drain", "msgs/s", True),
    ("w4.rss_peak_mib", "4", "  peak RSS of a node", "MiB", False),
    ("w5.failover_ms", "5", "failover: to next confirm", "ms", False),
    ("w5.rate_before_per_s", "5", "  before the kill", "msgs/s", True),
    ("w5.rate_after_per_s", "5", "  after (2 nodes)", "msgs/s", True),
]


def machine_description(data_dir: Path) -> dict[str, Any]:
    """nproc, CPU model, memory, kernel, Python, the data disk (`df -h`) and the load average."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    df = subprocess.run(["df", "-h", str(data_dir)], capture_output=True, text=True, check=False)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "disk": df.stdout.strip().splitlines()[-1] if df.stdout.strip() else "unknown",
        "loadavg_at_start": os.getloadavg(),
        "code": code_version(),
    }


def make_system(name: str, sizes: Sizes) -> Any:
    """The system object for `name` (imported lazily: peers install their packages)."""
    if name == "raftq":
        from bench_peers.raftq_peer import RaftqSystem

        return RaftqSystem()
    if name == "rabbitmq":
        from bench_peers.rabbitmq_peer import RabbitSystem

        return RabbitSystem()
    if name == "pysyncobj":
        from bench_peers.syncobj_peer import SyncObjSystem

        return SyncObjSystem()
    raise ValueError(name)


def workload_calls(sizes: Sizes) -> list[tuple[str, Callable[[Any], dict[str, Any]]]]:
    """(workload key, function of a started system) for workloads 1 to 5, in order."""
    s = sizes
    return [
        ("w1", lambda sysm: sysm.one_at_a_time(s.one_s)),
        ("w2", lambda sysm: sysm.in_flight(s.in_flight, s.window_s, producers=s.producers)),
        ("w3", lambda sysm: sysm.drain(s.drain_backlog)),
        ("w4", lambda sysm: sysm.backlog(s.big_backlog, in_flight=s.in_flight,
                                         producers=s.producers)),
        ("w5", lambda sysm: sysm.in_flight(
            s.in_flight, s.failover_before_s + s.failover_after_s, producers=s.producers,
            kill_leader_at_s=s.failover_before_s)),
    ]


def get(results: dict[str, Any], system: str, key: str) -> float | None:
    """The figure `key` ("w1.rate_per_s") of `system`, or None."""
    wl, _, field = key.partition(".")
    value = results.get(system, {}).get(wl, {})
    if not isinstance(value, dict):
        return None
    v = value.get(field)
    return float(v) if isinstance(v, int | float) else None


def ratio(raftq: float | None, peer: float | None, higher_is_better: bool) -> float | None:
    """raftq vs peer, oriented so that above 1.0 is better for raftq."""
    if raftq is None or peer is None or raftq <= 0 or peer <= 0:
        return None
    return raftq / peer if higher_is_better else peer / raftq


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.2f}"


class Profiler:
    """py-spy on raftq's leader during chosen workloads (`--profile`): raw stacks + a summary.

    Args:
        out_dir: where `<stem>-<workload>.txt` (collapsed stacks) go.
        stem: file name prefix (the run's date).
    """

    def __init__(self, out_dir: Path, stem: str) -> None:
        from bench_peers.common import ensure_packages

        ensure_packages({"py_spy": "py-spy"} if shutil.which("py-spy") is None else {})
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.exe = exe
        self.out_dir = out_dir
        self.stem = stem
        self.proc: subprocess.Popen[bytes] | None = None
        self.path: Path | None = None
        self.summaries: dict[str, dict[str, Any]] = {}

    def start(self, pid: int, workload: str, duration_s: float) -> None:
        """Record `pid` (py-spy record -f raw) for at most `duration_s` seconds."""
        self.path = self.out_dir / f"{self.stem}-raftq-leader-{workload}.txt"
        self.proc = subprocess.Popen(
            [self.exe, "record", "-p", str(pid), "-f", "raw", "-r", "200", "--nonblocking",
             "-d", str(max(1, int(duration_s))), "-o", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self, workload: str) -> None:
        """Wait for py-spy to write its file and summarise the hot spots."""
        if self.proc is None or self.path is None:
            return
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self.path.exists():
            self.summaries[workload] = summarize_stacks(self.path)


def profile_raftq(
    sizes: Sizes, out_dir: Path, stamp: str, results: dict[str, Any]
) -> dict[str, Any]:
    """A separate pass after the comparison: raftq's workloads 1-3 again with py-spy on the
    leader (so that the profiler's cost is not in the compared figures)."""
    from bench_peers.raftq_peer import RaftqSystem

    profiler = Profiler(out_dir, stamp)
    calls = dict(workload_calls(sizes))
    durations = {"w1": sizes.one_s, "w2": sizes.window_s, "w3": 30.0}
    profiled: dict[str, Any] = {}
    for key in ("w1", "w2", "w3"):
        print(f"profiling raftq's leader during workload {key[1:]} ...", flush=True)
        sysm = RaftqSystem()
        try:
            sysm.start()
            profiler.start(sysm.leader_pid(), key, durations[key])
            profiled[key] = calls[key](sysm)
        except Exception:  # noqa: BLE001 - a profile is extra
            traceback.print_exc()
        finally:
            profiler.stop(key)
            sysm.stop()
    results.setdefault("raftq", {})["profiled_run"] = profiled
    return profiler.summaries


def summarize_stacks(path: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output.

    Inclusive shares are given for raftq's own functions (node/, cluster/) only, without the
    entry points that every sample passes through: that is where the time goes in our code.

    Returns:
        {"samples": int, "self": [(function, percent)], "inclusive": [(function, percent)],
         "threads": {"event loop": percent, "worker threads": percent}, "file": str}
    """
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    threads = {"event loop": 0, "worker threads": 0}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        threads["worker threads" if any("WorkerThread" in f for f in frames)
                else "event loop"] += count
        if frames:
            self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for f in set(frames):
            if ("node/" in f or "cluster/" in f) and not f.startswith(("main (", "<module>")):
                incl_counts[f] = incl_counts.get(f, 0) + count

    def best(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [(f, round(100 * c / total, 1)) for f, c in ranked] if total else []

    return {"samples": total, "self": best(self_counts), "inclusive": best(incl_counts),
            "threads": {k: round(100 * v / total, 1) if total else 0.0
                        for k, v in threads.items()},
            "file": str(path)}


def _short(frame: str) -> str:
    """'send_all (trio/_highlevel_socket.py:123)' -> 'send_all (trio/_highlevel_socket.py)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{name} ({file})" if file else name


def run(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    if args.big_backlog is not None:
        sizes = Sizes(**{**sizes.__dict__, "big_backlog": args.big_backlog})
    if args.drain_backlog is not None:
        sizes = Sizes(**{**sizes.__dict__, "drain_backlog": args.drain_backlog})
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in chosen:
        if s not in ALL_SYSTEMS:
            print(f"unknown system {s!r}; choose from {', '.join(ALL_SYSTEMS)}", file=sys.stderr)
            return 2
    workloads = [w.strip() for w in args.workloads.split(",")]
    stamp = dt.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_description(Path(os.environ.get("TMPDIR", "/tmp")))
    command = "scripts/bench compare " + " ".join(sys.argv[1:])
    print(f"machine: {machine['nproc']} cores, {machine['cpu']}, {machine['memory_gib']} GiB; "
          f"disk {machine['disk']}; load {machine['loadavg_at_start']}; code {machine['code']}",
          flush=True)

    results: dict[str, Any] = {name: {} for name in chosen}
    status: dict[str, str] = {}
    started_at = time.monotonic()
    report: dict[str, Any] = {
        "date": stamp, "command": command, "machine": machine, "sizes": sizes.__dict__,
        "status": status, "results": results, "elapsed_s": 0.0, "profiles": {},
    }
    json_path = out_dir / f"{stamp}.json"

    def save() -> None:
        report["elapsed_s"] = time.monotonic() - started_at
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if "limits" in chosen:
        from bench_peers import limits

        print("limits ...", flush=True)
        results["limits"] = limits.measure(None, sizes.limits_s)
        status["limits"] = "measured"
    # One system runs at a time: each workload starts the system afresh and stops it after,
    # so that an idle peer (pysyncobj's 1 ms timer, Erlang's busy-waiting schedulers) takes
    # no CPU from the one being measured.
    running = [n for n in chosen if n != "limits"]
    calls = [(k, f) for k, f in workload_calls(sizes) if k[1:] in workloads]
    for turn, (key, call) in enumerate(calls):
        order = running[turn % len(running):] + running[:turn % len(running)] if running else []
        for name in order:
            if "error" in results[name]:
                continue  # could not start before: the row says why
            print(f"workload {key[1:]} on {name} ...", flush=True)
            t0 = time.monotonic()
            load_before = os.getloadavg()[0]
            code = code_version()
            sysm = None
            started = False
            try:
                sysm = make_system(name, sizes)
                sysm.start()
                started = True
                status.setdefault(name, sysm.describe())
                results[name].setdefault("start_s", time.monotonic() - t0)
                results[name][key] = call(sysm)
            except Exception as exc:  # noqa: BLE001 - the row says why; the run goes on
                why = f"{type(exc).__name__}: {exc}".strip()
                if started:
                    results[name][key] = {"error": why}
                else:  # could not start: no more workloads for it
                    results[name]["error"] = why
                    status[name] = f"not run: {why}"
                if not isinstance(exc, Unavailable):
                    traceback.print_exc()
            finally:
                if sysm is not None:
                    try:
                        sysm.stop()
                    except Exception:  # noqa: BLE001 - go on with the next system
                        traceback.print_exc()
            if isinstance(results[name].get(key), dict):
                results[name][key]["loadavg_1min_before"] = load_before
                if name == "raftq":
                    results[name][key]["code"] = code
            print(f"  {time.monotonic() - t0:.1f} s: {_brief(results[name].get(key, results[name].get('error')))}",
                  flush=True)
            save()  # after every measurement: a run cut short keeps what it measured
    if args.profile and "raftq" in chosen:
        report["profiles"] = profile_raftq(sizes, out_dir, stamp, results)
    save()
    print_table(report)
    png = plot_ratios(report, out_dir / f"{stamp}.png")
    print(f"wrote {json_path}" + (f" and {png}" if png else ""))
    return 0


def _brief(r: Any) -> str:
    if not isinstance(r, dict):
        return str(r)
    parts = []
    for k, v in r.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:,.1f}")
        elif isinstance(v, int | str) and k != "body_bytes":
            parts.append(f"{k}={v}")
    return ", ".join(parts)[:300]


def print_table(report: dict[str, Any]) -> None:
    """The figures and ratios (rich), the limits, and the leader's hot spots when profiled."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    results = report["results"]
    systems = [s for s in ALL_SYSTEMS if s in results and s != "limits"]
    peers = [p for p in PEERS if p in systems]
    table = Table(title=f"raftq and peers, 1 KiB bodies, {report['date']} "
                        f"({report['machine']['nproc']} cores)")
    table.add_column("wl")
    table.add_column("figure")
    table.add_column("unit")
    for s in systems:
        table.add_column(s, justify="right")
    for p in peers:
        table.add_column(f"raftq/{p}", justify="right")
    for key, wl, label, unit, hib in ROWS:
        cells = [fmt(get(results, s, key)) for s in systems]
        ratios = []
        for p in peers:
            r = ratio(get(results, "raftq", key), get(results, p, key), hib)
            text = fmt(r)
            if r is not None:
                text = f"[green]{text}[/]" if r >= 1.0 else f"[red]{text}[/]"
            ratios.append(text)
        table.add_row(wl, label, unit, *cells, *ratios)
    notes = []
    for s in systems:
        if "error" in results[s]:
            notes.append(f"{s} not run: {results[s]['error'][:300]}")
        for wl in ("w1", "w2", "w3", "w4", "w5"):
            r = results[s].get(wl)
            if isinstance(r, dict) and "error" in r:
                notes.append(f"workload {wl[1:]} on {s} failed: {r['error'][:300]}")
    console.print(table)
    for note in notes:
        console.print(f"  [red]{note}[/]")
    if "rss_mib" in results.get("raftq", {}).get("w4", {}) or any(
        "rss_mib" in results.get(p, {}).get("w4", {}) for p in peers
    ):
        for s in systems:
            rss = results[s].get("w4", {}).get("rss_mib") if isinstance(results[s].get("w4"), dict) else None
            if rss:
                console.print(f"  peak RSS per node, {s}: " + ", ".join(f"{k} {v:,.0f} MiB" for k, v in rss.items()))
    lim = results.get("limits")
    if lim:
        t = Table(title="this machine's limits (same run)")
        t.add_column("limit")
        t.add_column("figure", justify="right")
        t.add_column("raftq's share", justify="right")
        rq = results.get("raftq", {})
        one = get(results, "raftq", "w1.rate_per_s")
        two = get(results, "raftq", "w2.rate_per_s")
        t.add_row("fsync of a 1 KiB append, per s", fmt(lim.get("fsync_per_s")),
                  f"w1 {fmt(one / lim['fsync_per_s'])}" if one and rq else "")
        t.add_row("synced RocksDB put (1-row batch), per s", fmt(lim.get("rocksdb_sync_1row_per_s")), "")
        t.add_row("synced RocksDB batch of 100 x 1 KiB, batches/s",
                  fmt(lim.get("rocksdb_sync_100rows_batches_per_s")), "")
        t.add_row("  rows/s", fmt(lim.get("rocksdb_sync_100rows_rows_per_s")),
                  f"w2 {fmt(two / lim['rocksdb_sync_100rows_rows_per_s'])}" if two and rq else "")
        t.add_row("trio loopback, 1 KiB frames, 64 per send_all, per s",
                  fmt(lim.get("trio_frames_per_s")),
                  f"w2 {fmt(two / lim['trio_frames_per_s'])}" if two and rq else "")
        t.add_row("trio loopback round trips (1 connection), per s",
                  fmt(lim.get("trio_round_trips_per_s")),
                  f"w1 {fmt(one / lim['trio_round_trips_per_s'])}" if one and rq else "")
        console.print(t)
    for wl, summ in report.get("profiles", {}).items():
        console.print(f"[bold]raftq leader, workload {wl[1:]}: where the time goes[/] "
                      f"(py-spy, {summ['samples']} samples, {summ['file']})")
        console.print("  self:      " + "; ".join(f"{f} {p}%" for f, p in summ["self"][:8]))
        console.print("  threads:   " + "; ".join(f"{k} {v}%" for k, v in summ["threads"].items()))
        console.print("  inclusive, raftq code: "
                      + "; ".join(f"{f} {p}%" for f, p in summ["inclusive"][:10]))


def plot_ratios(report: dict[str, Any], path: Path) -> Path | None:
    """A bar chart of raftq/peer ratios per figure (1.0 line); None when nothing to plot."""
    results = report["results"]
    peers = [p for p in PEERS if p in results and "error" not in results[p]]
    if "raftq" not in results or not peers:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{wl}: {label.strip()}" for _, wl, label, _, _ in ROWS]
    fig, ax = plt.subplots(figsize=(12, 6))
    width = 0.8 / len(peers)
    for i, p in enumerate(peers):
        vals = [ratio(get(results, "raftq", k), get(results, p, k), hib) or 0.0
                for k, _, _, _, hib in ROWS]
        xs = [x + i * width for x in range(len(ROWS))]
        ax.bar(xs, vals, width=width, label=f"raftq / {p}")
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks([x + width * (len(peers) - 1) / 2 for x in range(len(ROWS))])
    ax.set_xticklabels(labels, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("ratio (above 1: raftq better)")
    ax.set_yscale("log")
    ax.set_title(f"raftq vs peers, {report['date']}, {report['machine']['nproc']} cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> int:
    p = argparse.ArgumentParser(prog="scripts/bench compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small sizes, raftq only unless --systems is given (for CI)")
    p.add_argument("--systems", default=None,
                   help=f"comma-separated, from {','.join(ALL_SYSTEMS)} (default: all)")
    p.add_argument("--workloads", default="1,2,3,4,5", help="which workloads (default 1,2,3,4,5)")
    p.add_argument("--big-backlog", type=int, default=None, help="messages in workload 4")
    p.add_argument("--drain-backlog", type=int, default=None, help="messages in workload 3")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the raftq leader during workloads 1-3 and print hot spots")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench-results",
                   help="where DATE.json and DATE.png go")
    args = p.parse_args()
    if args.systems is None:
        args.systems = "raftq" if args.quick else ",".join(ALL_SYSTEMS)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
