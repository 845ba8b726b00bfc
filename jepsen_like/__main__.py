"""`python -m jepsen_like` (or `scripts/jepsen`): one run against a fresh local cluster.

Starts a cluster, runs the workload and the nemesis together, heals, drains, checks, writes the
results to `--out` and exits 0 when the history is valid, 1 when it is not (2 on bad usage).
See docs/jepsen.md.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import click
from click.core import ParameterSource

from jepsen_like.nemesis import KINDS
from jepsen_like.runner import RunOptions, RunSetupError, run_sync
from jepsen_like.scenarios import SCENARIOS, options_for

DEFAULT_NEMESES = "kill,pause,partition,restart-all"


def _default_out(name: str, seed: int) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("jepsen-results") / f"{name}-{stamp}-seed{seed}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--nemesis", "nemesis", default=DEFAULT_NEMESES, show_default=True,
              help=f"Comma-separated nemesis kinds: {', '.join(KINDS)}; 'none' for none.")
@click.option("--duration", "duration_s", type=float, default=60.0, show_default=True,
              help="Seconds of workload (with faults).")
@click.option("--rate", type=float, default=200.0, show_default=True,
              help="Enqueue and receive invocations per second, all clients together.")
@click.option("--concurrency", type=click.IntRange(2, 256), default=8, show_default=True,
              help="Client processes (half producers, half consumers).")
@click.option("--seed", type=int, default=None, help="Seed of the schedule and workload.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Results directory (default jepsen-results/<name>-<time>-seed<S>).")
@click.option("--scenario", type=click.Choice(sorted(SCENARIOS)), default=None,
              help="Run a named scenario (its own faults and workload).")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True,
              help="Cluster size (a scenario may set its own).")
@click.option("--tick-ms", type=click.IntRange(5, 1000), default=30, show_default=True,
              help="Raft tick of the nodes, ms (election timeout is 10 to 20 ticks).")
@click.option("--snapshot-entries", type=click.IntRange(10, 10**9), default=None,
              help="Nodes snapshot after this many applied entries (default: the node's).")
@click.option("--net", type=click.Choice(["proxy", "netns"]), default="proxy", show_default=True,
              help="How partitions are made: TCP proxies (no privileges needed).")
@click.option("--list-scenarios", is_flag=True, help="List the scenarios and exit.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option("-v", "--verbose", count=True, help="Harness logging (-v info, -vv debug).")
@click.pass_context
def main(
    ctx: click.Context,
    nemesis: str,
    duration_s: float,
    rate: float,
    concurrency: int,
    seed: int | None,
    out_dir: Path | None,
    scenario: str | None,
    nodes: int,
    tick_ms: int,
    snapshot_entries: int | None,
    net: str,
    list_scenarios: bool,
    quiet: bool,
    verbose: int,
) -> None:
    """Fault injection against a real raftq cluster, a history checker, a report."""
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if list_scenarios:
        for s in SCENARIOS.values():
            click.echo(f"{s.name:<26} {s.duration_s:5.1f}s  {s.summary}")
        return
    if net == "netns":
        raise click.UsageError("--net netns is not implemented; use the proxy mode")
    import random

    seed = seed if seed is not None else random.randrange(1 << 31)

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is not ParameterSource.DEFAULT

    if scenario is not None:
        out = out_dir or _default_out(scenario, seed)
        overrides: dict[str, object] = {}
        for name, field_name in (("duration_s", "duration_s"), ("rate", "rate"),
                                 ("concurrency", "concurrency"), ("tick_ms", "tick_ms"),
                                 ("snapshot_entries", "snapshot_entries")):
            if given(name):
                overrides[field_name] = ctx.params[name]
        opts = options_for(scenario, out, seed=seed, progress=not quiet, overrides=overrides)
    else:
        kinds = tuple(k for k in nemesis.split(",") if k and k != "none")
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise click.BadParameter(f"unknown nemesis {unknown}; known: {', '.join(KINDS)}",
                                     param_hint="--nemesis")
        out = out_dir or _default_out("-".join(kinds) or "none", seed)
        opts = RunOptions(
            out_dir=out,
            nemeses=kinds,
            duration_s=duration_s,
            rate=rate,
            concurrency=concurrency,
            seed=seed,
            nodes=nodes,
            tick_ms=tick_ms,
            snapshot_entries=snapshot_entries,
            require_faults=bool(kinds),
            progress=not quiet,
        )
    opts = replace(opts, out_dir=opts.out_dir.resolve())
    click.echo(f"raftq jepsen: {opts.scenario or ','.join(opts.nemeses) or 'no nemesis'}, "
               f"{opts.nodes} nodes, {opts.duration_s:g}s, seed {opts.seed}, out {opts.out_dir}",
               err=True)
    try:
        outcome = run_sync(opts)
    except RunSetupError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"{'VALID' if outcome.valid else 'INVALID'}: {opts.out_dir / 'results.json'}"
               + ("" if outcome.valid else f" (failed: {', '.join(outcome.check['failed_checks'])})"))
    ctx.exit(0 if outcome.valid else 1)


if __name__ == "__main__":
    main()
