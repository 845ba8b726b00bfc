"""Command line of the simulators: `scripts/simulate --seeds N` or `--seed S`.

Without `--node`: the Raft-core simulator (tests/sim/raft_sim.py), each seed with 3 and with 5
nodes (or `--nodes`). With `--node`: the whole-node simulator (tests/sim/node_sim.py), real
replicas with jepsen_like's workload and checker, 3 nodes (or `--nodes`); `--bug` plants a
known bug to show that the simulator catches it.

Stops at the first violation, prints the seed, what failed, the end of the trace and the
command that replays it, and exits 1. `--seed S` prints the whole trace of one seed; the same
seed prints the same trace, byte for byte.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from tests.sim.node_sim import BUGS, simulate_node
from tests.sim.raft_sim import simulate


def _at_least(lo: float, kind: Callable[[str], float] = int) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo:g}, not {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the seeds, return the process exit status (0 ok, 1 violation)."""
    p = argparse.ArgumentParser(prog="scripts/simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=_at_least(1), default=100,
                   help="run seeds 0..N-1 (default 100)")
    g.add_argument("--seed", type=int, help="run (replay) one seed and print its whole trace")
    p.add_argument("--first-seed", type=int, help="start of the --seeds range (default 0)")
    p.add_argument("--node", action="store_true",
                   help="simulate whole nodes (RaftLoop, app, actors, request handling)")
    p.add_argument("--nodes", type=_at_least(3), action="append",
                   help="cluster size (default: 3 and 5; with --node: 3)")
    p.add_argument("--ticks", type=_at_least(1),
                   help="without --node: ticks with faults (default 600)")
    p.add_argument("--duration", type=_at_least(0.5, float),
                   help="with --node: virtual seconds of workload with faults (default 8)")
    p.add_argument("--bug", choices=BUGS, help="with --node: plant this bug")
    p.add_argument("--trace-lines", type=_at_least(1), default=40,
                   help="trace lines shown on failure")
    args = p.parse_args(argv)
    if args.seed is not None and args.first_seed is not None:
        p.error("--first-seed goes with --seeds, not --seed")
    if args.node and args.ticks is not None:
        p.error("--ticks is for the Raft-core simulator; with --node use --duration")
    if not args.node and args.duration is not None:
        p.error("--duration needs --node (the Raft-core simulator counts --ticks)")
    args.first_seed = args.first_seed or 0
    args.ticks = 600 if args.ticks is None else args.ticks
    args.duration = 8.0 if args.duration is None else args.duration
    seeds = (
        [args.seed]
        if args.seed is not None
        else range(args.first_seed, args.first_seed + args.seeds)
    )
    if args.node:
        return _run_nodes(args, seeds)
    if args.bug:
        p.error("--bug needs --node")
    sizes = args.nodes or [3, 5]
    totals = {"runs": 0, "committed": 0, "acked": 0, "elections": 0, "faults": 0}
    for seed in seeds:
        for n in sizes:
            r = simulate(seed, n, fault_ticks=args.ticks)
            totals["runs"] += 1
            totals["committed"] += r.committed
            totals["acked"] += r.acked
            totals["elections"] += r.elections
            totals["faults"] += r.faults
            if args.seed is not None:
                print("\n".join(r.trace))
            if r.violation is not None:
                v = r.violation
                print(f"VIOLATION seed={seed} nodes={n} invariant={v.invariant}")
                print(f"  {v.detail}")
                if args.seed is None:
                    print("trace (last lines):")
                    for line in r.trace[-args.trace_lines :]:
                        print("  " + line)
                print(
                    f"replay: scripts/simulate --seed {seed} --nodes {n}"
                    + (f" --ticks {args.ticks}" if args.ticks != 600 else "")
                )
                return 1
    print(" ".join(f"{k}={v}" for k, v in totals.items()) + " violations=0")
    return 0


def _run_nodes(args: argparse.Namespace, seeds: range | list[int]) -> int:
    sizes = args.nodes or [3]
    totals = {"runs": 0, "ops": 0, "acknowledged": 0, "faults": 0}
    virtual_s = 0.0
    started = time.perf_counter()
    for seed in seeds:
        for n in sizes:
            r = simulate_node(seed, nodes=n, duration_s=args.duration, bug=args.bug)
            totals["runs"] += 1
            totals["ops"] += r.ops
            totals["acknowledged"] += r.acknowledged
            totals["faults"] += int(r.check.get("faults", {}).get("count", 0))
            virtual_s += r.virtual_s
            if args.seed is not None:
                print("\n".join(r.trace))
                print(f"history sha256 {r.history_sha256} ops={r.ops} "
                      f"acknowledged={r.acknowledged} virtual_s={r.virtual_s}")
            if not r.valid:
                print(f"VIOLATION seed={seed} nodes={n} failed={','.join(r.failed_checks)} "
                      f"lost={r.lost}")
                if args.seed is None:
                    print("trace (last lines):")
                    for line in r.trace[-args.trace_lines :]:
                        print("  " + line)
                print(f"replay: scripts/simulate --node --seed {seed}"
                      + (f" --nodes {n}" if n != 3 else "")
                      + (f" --duration {args.duration:g}" if args.duration != 8.0 else "")
                      + (f" --bug {args.bug}" if args.bug else ""))
                return 1
    wall_s = time.perf_counter() - started
    print(" ".join(f"{k}={v}" for k, v in totals.items()) + " violations=0")
    if args.seed is None:
        print(f"simulated {virtual_s:.0f} s in {wall_s:.1f} s wall "
              f"({virtual_s / wall_s:.1f} simulated s per wall s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
