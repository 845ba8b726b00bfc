"""Command line for the Raft simulator: `scripts/simulate --seeds N` or `--seed S`.

Runs each seed with 3 and with 5 nodes (or `--nodes`), stops at the first violation, prints the
seed, the invariant, the end of the trace and the command that replays it, and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from tests.sim.raft_sim import simulate


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the seeds, return the process exit status (0 ok, 1 violation)."""
    p = argparse.ArgumentParser(prog="scripts/simulate", description=__doc__)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=int, default=100, help="run seeds 0..N-1 (default 100)")
    g.add_argument("--seed", type=int, help="run (replay) one seed and print its whole trace")
    p.add_argument("--first-seed", type=int, default=0, help="start of the --seeds range")
    p.add_argument("--nodes", type=int, action="append", help="cluster size (default: 3 and 5)")
    p.add_argument("--ticks", type=int, default=600, help="ticks with faults (default 600)")
    p.add_argument("--trace-lines", type=int, default=40, help="trace lines shown on failure")
    args = p.parse_args(argv)
    sizes = args.nodes or [3, 5]
    seeds = (
        [args.seed]
        if args.seed is not None
        else range(args.first_seed, args.first_seed + args.seeds)
    )
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


if __name__ == "__main__":
    sys.exit(main())
