"""Memory and speed with a backlog: `scripts/bench backlog [--sizes A,B] [--systems raftq,rabbitmq]`.

For each backlog size (smallest first) and each system in turn (interleaved): a fresh 3-node
cluster, `n` messages of 1 KiB sent with 1,000 awaiting confirms (16 connections), each body
random bytes of its own (so that nothing compresses), then drained by 4 consumers (receive +
ack). Measured: enqueue and drain rates (msgs/s), each node's resident memory with all `n`
queued (2 s after the last confirm; a raftq node's forked snapshot writer, when one runs
then, is counted in its node's figure and named in the table) and its peak over the run.

The slope between two sizes is the growth of resident memory per queued message, in bytes:
(RSS at depth B - RSS at depth A) / (B - A), the largest node at each size. Fixed costs
(caches, memtables, the interpreter) cancel out; what is left is what each message costs.

Usage:
    scripts/bench backlog                              # raftq, 100,000 and 1,000,000
    scripts/bench backlog --sizes 20000,100000 --systems raftq,rabbitmq --json out.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from bench_peers.common import Unavailable  # noqa: E402


def _system(name: str) -> Any:
    if name == "raftq":
        from bench_peers.raftq_peer import RaftqSystem

        return RaftqSystem()
    if name == "rabbitmq":
        from bench_peers.rabbitmq_peer import RabbitSystem

        return RabbitSystem()
    raise SystemExit(f"unknown system {name!r} (raftq, rabbitmq)")


def run_one(name: str, n: int) -> dict[str, Any]:
    """One cluster of `name`, one backlog of `n`; the figures (or `error`)."""
    sysm = _system(name)
    try:
        sysm.start()
        return dict(sysm.backlog(n, random_bodies=True))
    except Unavailable as exc:
        return {"error": str(exc)}
    finally:
        sysm.stop()


def slope_bytes(rows: list[dict[str, Any]]) -> float | None:
    """Bytes of resident memory per queued message between the smallest and largest backlog
    (the largest node at each), or None without two sizes."""
    good = sorted((r for r in rows if "rss_at_depth_mib" in r), key=lambda r: r["n"])
    if len(good) < 2 or good[-1]["n"] == good[0]["n"]:
        return None
    lo, hi = good[0], good[-1]
    d_mib = max(hi["rss_at_depth_mib"].values()) - max(lo["rss_at_depth_mib"].values())
    return d_mib * 2**20 / (hi["n"] - lo["n"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000", help="backlog sizes, comma-separated")
    p.add_argument("--systems", default="raftq", help="raftq and/or rabbitmq, comma-separated")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    systems = args.systems.split(",")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": commit,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load": os.getloadavg()},
        "rows": {s: [] for s in systems},
    }
    for n in sizes:
        for name in systems:
            print(f"{name}: backlog of {n:,} ...", flush=True)
            row = run_one(name, n)
            row.setdefault("n", n)
            report["rows"][name].append(row)
            print(f"  {json.dumps(row)}", flush=True)
    report["slope_bytes_per_msg"] = {s: slope_bytes(rows) for s, rows in report["rows"].items()}

    table = Table(title=f"backlog, 1 KiB random bodies (code {commit})")
    for col in ("system", "queued", "enqueue msgs/s", "drain msgs/s", "RSS at depth MiB (max)",
                "peak RSS MiB", "snapshot child at depth"):
        table.add_column(col, justify="right")
    for name, rows in report["rows"].items():
        for r in rows:
            if "error" in r:
                table.add_row(name, f"{r['n']:,}", r["error"], "", "", "", "")
                continue
            table.add_row(name, f"{r['n']:,}", f"{r['enqueue_rate_per_s']:,.0f}",
                          f"{r['drain_rate_per_s']:,.0f}",
                          f"{max(r['rss_at_depth_mib'].values()):,.0f}",
                          f"{r['rss_peak_mib']:,.0f}",
                          ", ".join(k for k, v in r.get("children_at_depth", {}).items() if v))
    console = Console()
    console.print(table)
    for name, slope in report["slope_bytes_per_msg"].items():
        if slope is not None:
            console.print(f"{name}: {slope:,.0f} bytes of resident memory per queued message "
                          f"(slope {sizes[0]:,} -> {sizes[-1]:,})")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
