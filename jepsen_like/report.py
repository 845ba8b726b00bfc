"""Results of a run: `results.json`, the history, a summary table, and plots.

Files written to the run's directory:

* `results.json`: the verdict (`valid`, `failed_checks`), every checker section, operation
  counts and latency percentiles, the faults (planned and as injected), the drain, the final
  node statuses, the proxies' counters, the timings, the options (seed included).
* `history.jsonl`: every operation (see `jepsen_like.history`).
* `latency.png`: latency of every operation against the time it was invoked, coloured by
  outcome (ok, fail, info), fault windows shaded.
* `throughput.png`: completed operations per second by outcome, fault windows shaded.
* `cluster.toml`, `logs/n<ID>.log`, `data/`: the cluster's configuration, logs and data.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from jepsen_like.history import History, Op, pair_ops

if TYPE_CHECKING:
    from jepsen_like.nemesis import FaultRecord
    from jepsen_like.runner import RunOutcome

__all__ = ["latency_summary", "op_counts", "progress_line", "results_dict", "write_all"]

OUTCOME_COLOURS = {"ok": "#2ca02c", "fail": "#d62728", "info": "#ff7f0e"}
FAULT_COLOURS = {
    "kill": "#d62728",
    "pause": "#9467bd",
    "partition": "#1f77b4",
    "restart-all": "#8c564b",
    "delay": "#7f7f7f",
    "disk-corruption": "#ff7f0e",
    "disk-loss": "#e377c2",
    "membership": "#17becf",
}


def op_counts(ops: Sequence[Op]) -> dict[str, dict[str, int]]:
    """Completions by function and type: {"enqueue": {"ok": n, "fail": n, "info": n}, ...}."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for op in ops:
        if op.type != "invoke" and op.f != "crash":
            out[op.f][op.type] += 1
        elif op.f == "crash":
            out["crash"]["info"] += 1
    return {f: dict(c) for f, c in sorted(out.items())}


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


def latency_summary(ops: Sequence[Op]) -> dict[str, dict[str, float]]:
    """Latency percentiles (ms) of `ok` completions by function."""
    lat: dict[str, list[float]] = defaultdict(list)
    for inv, done in pair_ops(ops):
        if done is not None and done is not inv and done.type == "ok":
            lat[inv.f].append((done.time_ns - inv.time_ns) / 1e6)
    out = {}
    for f, xs in sorted(lat.items()):
        xs.sort()
        out[f] = {
            "count": len(xs),
            "p50_ms": round(_percentile(xs, 0.5), 2),
            "p95_ms": round(_percentile(xs, 0.95), 2),
            "p99_ms": round(_percentile(xs, 0.99), 2),
            "max_ms": round(xs[-1], 2),
        }
    return out


def progress_line(
    t_s: float,
    phase: str,
    history: History,
    records: Sequence[FaultRecord],
    active: Mapping[int, FaultRecord],
) -> str:
    """One line: time, phase, operations by outcome, faults so far and the active ones."""
    c = Counter(op.type for op in history.ops if op.type != "invoke" and op.f != "crash")
    now = "; ".join(r.describe() for r in active.values()) or "-"
    return (
        f"[{t_s:7.1f}s] {phase:<8} ops {c['ok'] + c['fail'] + c['info']:>6} "
        f"(ok {c['ok']}, fail {c['fail']}, info {c['info']})  faults {len(records)}  now: {now}"
    )


def results_dict(out: RunOutcome) -> dict[str, Any]:
    """Everything about the run as JSON-ready data."""
    ops = out.history.ops
    chk = out.check
    tq = chk.get("total_queue", {})
    return {
        "valid": out.valid,
        "failed_checks": chk.get("failed_checks", []),
        "scenario": out.options.scenario,
        "seed": out.options.seed,
        "summary": {
            "operations": sum(1 for op in ops if op.type == "invoke"),
            "attempts": tq.get("attempt_count"),
            "acknowledged": tq.get("acknowledged_count"),
            "received": tq.get("received_count"),
            "lost": tq.get("lost_count"),
            "unexpected": tq.get("unexpected_count"),
            "duplicated": tq.get("duplicated_count"),
            "recovered": tq.get("recovered_count"),
            "unexplained_duplicates": chk.get("duplicates", {}).get("unexplained_count"),
            "reads": chk.get("reads", {}).get("ok_reads"),
            "stale_reads": chk.get("reads", {}).get("stale_count"),
            "non_monotonic_reads": chk.get("reads", {}).get("non_monotonic_count"),
            "faults": len(out.faults),
            "faults_verified": sum(1 for f in out.faults if f.get("verified")),
        },
        "counts": op_counts(ops),
        "latency": latency_summary(ops),
        "check": chk,
        "faults": out.faults,
        "schedule": [f.to_json() for f in out.schedule],
        "drain": out.drain,
        "final_statuses": out.final_statuses,
        "proxies": out.proxies,
        "pids": out.pids,
        "node_crashes": out.crashes,
        "timings_s": {k: round(v, 3) for k, v in out.timings_s.items()},
        "workload_window_s": list(out.workload_window_s),
        "poison_values": sorted(out.generator.poison_values) if out.generator else [],
        "options": out.options.describe(),
        "error": out.error,
    }


def _fault_spans(faults: Sequence[Mapping[str, Any]]) -> list[tuple[float, float, str, str]]:
    spans = []
    for f in faults:
        start = float(f.get("start_s") or 0.0)
        end = f.get("end_s")
        spans.append((start, float(end) if end is not None else start, str(f.get("kind")),
                      str(f.get("variant"))))
    return spans


def _shade(ax: Any, faults: Sequence[Mapping[str, Any]]) -> None:
    seen: set[str] = set()
    for start, end, kind, variant in _fault_spans(faults):
        colour = FAULT_COLOURS.get(kind, "#7f7f7f")
        label = f"fault: {kind}" if kind not in seen else None
        seen.add(kind)
        ax.axvspan(start, max(end, start + 0.05), color=colour, alpha=0.15, label=label, lw=0)
        ax.text(start, 0.98, f" {kind}/{variant}", transform=ax.get_xaxis_transform(),
                fontsize=6, va="top", ha="left", rotation=90, color=colour)


def plot_latency(ops: Sequence[Op], faults: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Latency of every operation over time, by outcome, faults shaded (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs = ["enqueue", "receive", "ack", "nack", "stats"]
    markers = {"enqueue": "o", "receive": "s", "ack": "^", "nack": "v", "stats": "x"}
    fig, axes = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    groups: dict[tuple[str, str], tuple[list[float], list[float]]] = defaultdict(
        lambda: ([], [])
    )
    for inv, done in pair_ops(ops):
        if done is None or done is inv or inv.f not in fs:
            continue
        xs, ys = groups[(inv.f, done.type)]
        xs.append(inv.time_ns / 1e9)
        ys.append(max((done.time_ns - inv.time_ns) / 1e6, 0.01))
    for ax, wanted in ((axes[0], ["enqueue"]), (axes[1], ["receive", "ack", "nack", "stats"])):
        for (f, type_), (xs, ys) in sorted(groups.items()):
            if f in wanted:
                ax.scatter(xs, ys, s=4, marker=markers[f], c=OUTCOME_COLOURS.get(type_, "k"),
                           alpha=0.6, label=f"{f} {type_}", linewidths=0)
        _shade(ax, faults)
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.2)
        ax.legend(loc="upper right", fontsize=7, markerscale=3, ncol=2)
    axes[0].set_title("enqueue latency", fontsize=9, loc="left")
    axes[1].set_title("receive / ack / nack / stats latency", fontsize=9, loc="left")
    axes[1].set_xlabel("time since start (s), at invocation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput(
    ops: Sequence[Op], faults: Sequence[Mapping[str, Any]], path: Path, bin_s: float = 0.5
) -> None:
    """Completed operations per second by outcome, faults shaded (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end_s = max((op.time_ns / 1e9 for op in ops), default=0.0)
    nbins = max(1, int(math.ceil(end_s / bin_s)) + 1)
    series = {t: [0.0] * nbins for t in ("ok", "fail", "info")}
    for op in ops:
        if op.type in series and op.f != "crash":
            series[op.type][int(op.time_ns / 1e9 / bin_s)] += 1 / bin_s
    xs = [i * bin_s for i in range(nbins)]
    fig, ax = plt.subplots(figsize=(12, 4))
    for t, ys in series.items():
        ax.plot(xs, ys, color=OUTCOME_COLOURS[t], label=t, lw=1.2, drawstyle="steps-post")
    _shade(ax, faults)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("completions per second")
    ax.grid(True, alpha=0.2)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(results: Mapping[str, Any]) -> Table:
    """The rich table printed at the end of a run."""
    verdict = "[bold green]VALID[/]" if results["valid"] else "[bold red]INVALID[/]"
    name = results.get("scenario") or "run"
    t = Table(title=f"raftq jepsen: {name}, seed {results['seed']}: {verdict}")
    t.add_column("check")
    t.add_column("valid")
    t.add_column("figures")
    chk = results["check"]
    for key, section in chk.items():
        if not isinstance(section, dict) or "valid" not in section:
            continue
        t.add_row(key, "[green]yes[/]" if section["valid"] else "[red]NO[/]",
                  _figures(key, section))
    s = results["summary"]
    t.add_section()
    t.add_row("operations", "", f"{s['operations']} invoked; " + ", ".join(
        f"{f}: " + "/".join(f"{c.get(k, 0)}" for k in ("ok", "fail", "info"))
        for f, c in results["counts"].items() if f != "crash") + " (ok/fail/info)")
    t.add_row("faults", "", ", ".join(
        f"{f['kind']}/{f['variant']}@{f['start_s']:.1f}s" for f in results["faults"]) or "none")
    t.add_row("timings", "", ", ".join(f"{k} {v:.1f}s" for k, v in results["timings_s"].items()))
    return t


def _figures(key: str, sec: Mapping[str, Any]) -> str:
    if key == "total_queue":
        return (f"attempts {sec['attempt_count']}, acknowledged {sec['acknowledged_count']}, "
                f"ok {sec['ok_count']}, lost {sec['lost_count']}, unexpected "
                f"{sec['unexpected_count']}, duplicated {sec['duplicated_count']}, recovered "
                f"{sec['recovered_count']}")
    if key == "duplicates":
        return f"explained {sec['explained']}, unexplained {sec['unexplained_count']}"
    if key == "dedup":
        return f"{sec['dedup_ids']} dedup ids, {len(sec['violations'])} violations"
    if key == "fifo":
        return (f"{sec['groups']} groups, {len(sec['inversions'])} inversions, "
                f"{len(sec['enqueue_order'])} enqueue-order violations")
    if key == "acks":
        return (f"ok {sec['ok_acks']}, stale rejected {sec['stale_acks_rejected']}, stale "
                f"accepted {len(sec['stale_acks_accepted'])}, late accepted "
                f"{len(sec['late_acks_accepted'])}")
    if key == "delivery_limit":
        return f"dead letters {sec['dead_letters_by_reason']}, over limit {len(sec['over_limit'])}"
    if key == "failed_enqueues":
        return f"failed {sec['failed_count']}, delivered anyway {len(sec['delivered_anyway'])}"
    if key == "crashes":
        return (f"abandoned {sec['abandoned']}, redelivered +1 {sec['redelivered_plus_one']}, "
                f"later {sec['redelivered_after_unknown_receives']}, dead-lettered "
                f"{sec['dead_lettered']}, not redelivered {len(sec['not_redelivered'])}")
    if key == "reads":
        r = sec["reads"]
        return (f"{sec['ok_reads']} ok reads of {', '.join(sec['queues']) or 'no queue'} "
                f"(fail {r.get('fail', 0)}, info {r.get('info', 0)}), stale "
                f"{sec['stale_count']}, non-monotonic {sec['non_monotonic_count']}")
    if key == "consistency":
        nodes = sec.get("nodes", [])
        return (", ".join(f"n{n.get('node_id')} commit {n.get('commit_index')} "
                          f"{str(n.get('digest'))[:8]}" for n in nodes) + (
            f" ({sec['why']})" if sec.get("why") else ""))
    if key == "faults":
        return f"{sec['count']} faults {sec['by_kind']}" + (
            f" ({sec['why']})" if sec.get("why") else "")
    if key == "node_crashes":
        return ", ".join(f"n{c['node_id']} pid {c['pid']} exit {c['exit_code']} at "
                         f"{c['seen_at_s']}s ({c['phase']})" for c in sec["crashes"]) or "none"
    if key == "drain":
        return f"rounds {sec.get('rounds')}, received {sec.get('received')}"
    return str(sec.get("summary") or sec.get("why") or sec.get("error") or "")


def write_all(out: RunOutcome, *, plots: bool = True, console: Console | None = None) -> dict[
        str, Any]:
    """Write results.json, history.jsonl and the plots; print the summary table."""
    d = out.options.out_dir
    d.mkdir(parents=True, exist_ok=True)
    out.history.write_jsonl(d / "history.jsonl")
    results = results_dict(out)
    if plots:
        try:
            plot_latency(out.history.ops, out.faults, d / "latency.png")
            plot_throughput(out.history.ops, out.faults, d / "throughput.png")
            results["plots"] = ["latency.png", "throughput.png"]
        except Exception as exc:  # plots are a convenience: never lose the verdict to them
            results["plots_error"] = f"{type(exc).__name__}: {exc}"
    (d / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=150)
    console.print(summary_table(results))
    return results
