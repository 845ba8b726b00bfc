"""Named scenarios after published analyses: a fixed fault script, a workload, extra checks.

Each scenario is data (`Scenario`): the cluster size, how long the workload runs, the faults
(`Fault`s at fixed times, targets resolved when they start: "the leader" is whoever leads
then), the workload's knobs, and the checks it adds to the standard ones. `scripts/jepsen
--scenario NAME` runs one; every standard check applies too (nothing lost, nothing unexpected,
every duplicate explained, dedup, FIFO, stale acks, delivery limit, final consistency).

| name | after | what must hold |
| --- | --- | --- |
| `partition-halves` | RabbitMQ (Jepsen, 2014) | random halves (the leader's side first the minority) while producers start at nodes on both sides; nothing acknowledged is lost |
| `isolate-then-kill-leader` | Kafka 0.8 (Jepsen, 2013) | the leader is cut off from both followers, sends go on, then it is killed: no confirmation without a majority, so nothing acknowledged is lost |
| `kill-leader-mid-send` | Redpanda 21.10 (Jepsen, 2022) | SIGKILL the leader while sends (retried by the client with one dedup id) are in flight: no value enqueued twice |
| `restart-all` | NATS 2.10 / 2.12 reports | kill every node together, restart, drain: nothing lost |
| `consumer-crash` | | consumers vanish holding messages, then a leader election: each such message comes back after its lease, delivery count +1 |
| `stale-ack` | nats-server#4786 | a consumer acks after its lease ended and the message went to another consumer: refused, and the message is not lost |
| `poison` | RabbitMQ quorum queues' delivery-limit | a message nacked every time stops after `max_deliveries` and is in the dead-letter queue with reason `delivery_limit`, across restarts of all nodes |
| `ring` | Jepsen's majorities ring | 5 nodes, majorities-ring partition for ten election timeouts: a leader stays or returns (sends succeed during the ring), nothing lost |
| `membership-grow-shrink` | issue 12 | 3 -> 4 -> 5 -> 4 -> 3 voters while producers and consumers run, the leader SIGKILLed (and started again) during each change: every change made, nothing lost, nothing unexpected |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jepsen_like.generator import QueueConf, Workload
from jepsen_like.history import pair_ops
from jepsen_like.nemesis import Fault
from jepsen_like.runner import RunOptions, RunOutcome

__all__ = ["SCENARIOS", "Scenario", "options_for"]

Check = Callable[[RunOutcome], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    """One named scenario.

    Attributes:
        name: its name (`--scenario NAME`).
        summary: one line: what happens and what must hold.
        duration_s: length of the workload, seconds.
        faults: the fault script (times relative to the start of the workload).
        workload: the clients' knobs.
        nodes: cluster size.
        rate: enqueue and receive invocations per second.
        concurrency: client processes.
        checks: extra checks; each returns a map with `name` and `valid`.
    """

    name: str
    summary: str
    duration_s: float
    faults: tuple[Fault, ...]
    workload: Workload = field(default_factory=Workload)
    nodes: int = 3
    rate: float = 200.0
    concurrency: int = 8
    checks: tuple[Check, ...] = ()


def _faults_of(out: RunOutcome, kind: str, variant: str | None = None) -> list[dict[str, Any]]:
    return [f for f in out.faults
            if f["kind"] == kind and (variant is None or f["variant"] == variant)]


def _section(name: str, problems: list[str], **figures: Any) -> dict[str, Any]:
    return {"name": name, "valid": not problems, "problems": problems, **figures,
            "summary": "; ".join(problems) or ", ".join(f"{k} {v}" for k, v in figures.items())}


def _ok_enqueues_between(out: RunOutcome, start_s: float, end_s: float) -> int:
    n = 0
    for inv, done in pair_ops(out.history.ops):
        if (inv.f == "enqueue" and done is not None and done.type == "ok"
                and start_s <= done.time_ns / 1e9 <= end_s):
            n += 1
    return n


def _require_faults(out: RunOutcome, kind: str, variant: str | None, at_least: int,
                    problems: list[str]) -> list[dict[str, Any]]:
    fs = _faults_of(out, kind, variant)
    ok = [f for f in fs if f.get("verified")]
    if len(ok) < at_least:
        problems.append(f"expected {at_least} verified {kind}/{variant or '*'} fault(s), "
                        f"got {len(ok)}")
    for f in fs:
        if "leader unknown" in (f.get("note") or ""):
            problems.append(f"fault {f['index']} could not find the leader ({f['note']})")
    return ok


def check_partition_halves(out: RunOutcome) -> dict[str, Any]:
    problems: list[str] = []
    fs = _require_faults(out, "partition", None, 2, problems)
    during = sum(_ok_enqueues_between(out, f["start_s"], f["end_s"]) for f in fs)
    starts = sorted({p % out.options.nodes for p in range(_producers(out.options))})
    if len(starts) < 2:
        problems.append("producers did not start on both sides")
    return _section("partition_halves", problems, partitions=len(fs),
                    enqueues_ok_during_partitions=during, producer_home_nodes=len(starts))


def _producers(o: RunOptions) -> int:
    return max(1, round(o.concurrency * o.workload.producer_share))


def check_isolate_then_kill(out: RunOutcome) -> dict[str, Any]:
    problems: list[str] = []
    parts = _require_faults(out, "partition", "leader", 1, problems)
    kills = _require_faults(out, "kill", None, 1, problems)
    if parts and kills and parts[0]["nodes"] != kills[0]["nodes"]:
        problems.append(f"killed {kills[0]['nodes']}, but isolated {parts[0]['nodes']}")
    if parts and kills and not parts[0]["start_s"] < kills[0]["start_s"] < parts[0]["end_s"]:
        problems.append("the kill did not happen while the leader was isolated")
    during = (_ok_enqueues_between(out, parts[0]["start_s"], parts[0]["end_s"])
              if parts else 0)
    return _section("isolate_then_kill_leader", problems,
                    enqueues_ok_while_isolated=during)


def check_kill_leader_mid_send(out: RunOutcome) -> dict[str, Any]:
    problems: list[str] = []
    kills = _require_faults(out, "kill", "leader", 2, problems)
    in_flight = 0
    for inv, done in pair_ops(out.history.ops):
        if inv.f != "enqueue" or done is None:
            continue
        t0, t1 = inv.time_ns / 1e9, done.time_ns / 1e9
        if any(t0 <= k["start_s"] <= t1 for k in kills):
            in_flight += 1
    if in_flight == 0:
        problems.append("no send was in flight when a leader was killed")
    if not out.check.get("dedup", {}).get("valid", False):
        problems.append("a deduplication id was enqueued more than once")
    return _section("kill_leader_mid_send", problems, leader_kills=len(kills),
                    sends_in_flight_at_kills=in_flight)


def check_restart_all(out: RunOutcome) -> dict[str, Any]:
    problems: list[str] = []
    fs = _require_faults(out, "restart-all", None, 1, problems)
    after = sum(_ok_enqueues_between(out, f["end_s"], f["end_s"] + 5) for f in fs)
    if fs and after == 0:
        problems.append("no send succeeded after a restart of all nodes")
    return _section("restart_all", problems, restarts=len(fs), enqueues_ok_after=after)


def check_consumer_crash(out: RunOutcome) -> dict[str, Any]:
    problems: list[str] = []
    kills = _require_faults(out, "kill", "leader", 1, problems)
    crashes = out.check.get("crashes", {})
    abandoned = crashes.get("abandoned", 0)
    if abandoned == 0:
        problems.append("no consumer crashed holding a message")
    if crashes.get("not_redelivered"):
        problems.append(f"{len(crashes['not_redelivered'])} abandoned message(s) never came back")
    # Abandoned before the election and delivered again after it.
    crossing = 0
    if kills:
        k = kills[0]["start_s"]
        crash_times = {}
        for op in out.history.ops:
            if op.f == "crash":
                for r in op.receipts or []:
                    crash_times[(op.queue, r.split(":")[0])] = op.time_ns / 1e9
        for inv, done in pair_ops(out.history.ops):
            if inv.f == "receive" and done is not None and done.type == "ok":
                for d in done.messages or []:
                    t = crash_times.get((inv.queue, str(d.message_id)))
                    if t is not None and t < k < done.time_ns / 1e9 and d.delivery_count > 1:
                        crossing += 1
    if kills and crossing == 0:
        problems.append("no abandoned message was delivered again across the leader election")
    return _section("consumer_crash", problems, abandoned=abandoned,
                    redelivered_plus_one=crashes.get("redelivered_plus_one", 0),
                    redelivered_after_unknown_receives=crashes.get(
                        "redelivered_after_unknown_receives", 0),
                    redelivered_across_election=crossing)


def check_stale_ack(out: RunOutcome) -> dict[str, Any]:
    problems: list[str] = []
    outcomes: dict[str, int] = {}
    for inv, done in pair_ops(out.history.ops):
        if inv.f == "ack" and inv.tag == "stale-ack" and done is not None:
            outcomes[done.type] = outcomes.get(done.type, 0) + 1
    if outcomes.get("ok"):
        problems.append(f"{outcomes['ok']} ack(s) after the lease ended were accepted")
    acks = out.check.get("acks", {})
    rejected_after_redelivery = acks.get("stale_acks_rejected", 0)
    if rejected_after_redelivery == 0:
        problems.append("no stale ack was tried after the message went to another consumer")
    return _section("stale_ack", problems, stale_acks=outcomes,
                    rejected_after_redelivery=rejected_after_redelivery)


def check_poison(out: RunOutcome) -> dict[str, Any]:
    problems: list[str] = []
    _require_faults(out, "restart-all", None, 1, problems)
    poison = out.generator.poison_values if out.generator else set()
    wl = out.options.workload
    limits = {q.name: q.max_deliveries for q in wl.queues}
    dlqs = {q.dlq: q.name for q in wl.queues}
    acknowledged = set()
    for inv, done in pair_ops(out.history.ops):
        if inv.f == "enqueue" and inv.value in poison and done is not None and done.type == "ok":
            acknowledged.add(inv.value)
    in_dlq: dict[int, dict[str, Any]] = {}
    acked_from_source: set[int] = set()
    for inv, done in pair_ops(out.history.ops):
        if inv.f == "receive" and done is not None and done.type == "ok":
            for d in done.messages or []:
                if d.value in poison and inv.queue in dlqs and d.death:
                    in_dlq[d.value] = d.death
        if (inv.f == "ack" and inv.value in poison and inv.queue in limits
                and done is not None and done.type == "ok"):
            acked_from_source.add(inv.value)
    missing = sorted(acknowledged - set(in_dlq))
    if missing:
        problems.append(f"{len(missing)} poison value(s) not in a dead-letter queue: "
                        f"{missing[:10]}")
    wrong = sorted(v for v, death in in_dlq.items()
                   if death.get("reason") != "delivery_limit"
                   or death.get("delivery_count") != limits.get(str(death.get("queue"))))
    if wrong:
        problems.append(f"{len(wrong)} poison value(s) dead-lettered with the wrong reason or "
                        f"count: {wrong[:10]}")
    if acked_from_source:
        problems.append(f"poison value(s) acked from their queue: {sorted(acked_from_source)[:10]}")
    if not acknowledged:
        problems.append("no poison message was sent")
    return _section("poison", problems, poison_sent=len(acknowledged),
                    dead_lettered_by_limit=len(in_dlq) - len(wrong))


def check_ring(out: RunOutcome) -> dict[str, Any]:
    problems: list[str] = []
    rings = _require_faults(out, "partition", "ring", 1, problems)
    o = out.options
    election_s = o.election_ticks * o.tick_ms / 1000
    during = 0
    for f in rings:
        if f["end_s"] - f["start_s"] < 10 * election_s * 0.95:
            problems.append(f"ring lasted {f['end_s'] - f['start_s']:.2f} s, under ten election "
                            f"timeouts ({10 * election_s:.2f} s)")
        # After two election timeouts of settling, sends must succeed inside the ring.
        during += _ok_enqueues_between(out, f["start_s"] + 2 * election_s, f["end_s"])
    if rings and during == 0:
        problems.append("no send succeeded during the ring: no leader kept or regained")
    return _section("ring", problems, enqueues_ok_during_ring=during,
                    election_timeout_s=election_s)


def check_membership_grow_shrink(out: RunOutcome) -> dict[str, Any]:
    """3 -> 5 -> 3 voters, a verified leader kill inside each change, work done meanwhile."""
    problems: list[str] = []
    fs = _require_faults(out, "membership", None, 4, problems)
    sizes = ([len(fs[0]["evidence"]["members_before"]["voters"])] if fs else []) + [
        len(f["evidence"]["members_after"]["voters"]) for f in fs]
    n = out.options.nodes
    cycle = [n + 1, n + 2, n + 1, n]  # once, or as many times as the script repeats it
    want = [n] + cycle * max(1, len(_faults_of(out, "membership")) // 4)
    if sizes != want:
        problems.append(f"voters went {sizes}, not {want}")
    kills_inside = 0
    for f in fs:
        ev = f["evidence"]
        k = ev.get("leader_kill") or {}
        if k.get("exit_code") != -9:
            problems.append(f"fault {f['index']}: no leader killed by SIGKILL ({k})")
            continue
        if ev["change"] == "add":  # between the admission and the promotion
            inside = ev["admitted_at_s"] <= k["at_s"] <= ev["voter_at_s"]
        else:  # before the removal was confirmed
            inside = k["at_s"] <= ev["removed_at_s"]
        if not inside:
            problems.append(f"fault {f['index']}: the leader kill at {k['at_s']} s was not "
                            "inside the change")
        kills_inside += inside
        if "restarted_pid" not in k:
            problems.append(f"fault {f['index']}: the killed leader was not started again "
                            f"({k.get('restart')})")
    during = 0
    for f in fs:
        ok = _ok_enqueues_between(out, f["start_s"], f["end_s"])
        if ok == 0:
            problems.append(f"fault {f['index']}: no send succeeded during the change")
        during += ok
    return _section("membership_grow_shrink", problems, voters=sizes,
                    leader_kills_inside_changes=kills_inside,
                    enqueues_ok_during_changes=during)


POISON_WORKLOAD = Workload(
    queues=(
        QueueConf("jq"),
        QueueConf("jqp", max_deliveries=3, weight=1.0, poison_fraction=0.3),
    ),
)

_TICK_MS = 30
_ELECTION_TICKS = 10
_RING_S = 10 * _ELECTION_TICKS * _TICK_MS / 1000

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "partition-halves",
            "random halves while producers send to both sides; heal; drain (RabbitMQ 2014)",
            duration_s=14,
            faults=(
                Fault("partition", "halves-leader", 2.0, 3.5, seed=1),
                Fault("partition", "halves", 7.0, 3.5, seed=2),
            ),
            checks=(check_partition_halves,),
        ),
        Scenario(
            "isolate-then-kill-leader",
            "cut both followers off the leader, keep sending, then kill it (Kafka 0.8)",
            duration_s=13,
            faults=(
                Fault("partition", "leader", 2.0, 6.0),
                Fault("kill", "leader", 5.0, 3.0, nodes_from=0),
            ),
            checks=(check_isolate_then_kill,),
        ),
        Scenario(
            "kill-leader-mid-send",
            "SIGKILL the leader while clients retry sends with one dedup id (Redpanda 21.10)",
            duration_s=12,
            faults=(
                Fault("kill", "leader", 2.0, 1.5),
                Fault("kill", "leader", 5.5, 1.5),
                Fault("kill", "leader", 9.0, 1.0),
            ),
            workload=Workload(producer_share=0.75),
            rate=300,
            checks=(check_kill_leader_mid_send,),
        ),
        Scenario(
            "restart-all",
            "kill every node together, restart, drain (NATS 2.10 / 2.12 reports)",
            duration_s=11,
            faults=(
                Fault("restart-all", "kill", 2.5, 0.8),
                Fault("restart-all", "kill", 6.5, 0.5),
            ),
            checks=(check_restart_all,),
        ),
        Scenario(
            "consumer-crash",
            "consumers vanish holding messages, then a leader election: each comes back, +1",
            duration_s=11,
            faults=(Fault("kill", "leader", 4.5, 1.5),),
            workload=Workload(p_crash=0.3, p_nack=0.02),
            checks=(check_consumer_crash,),
        ),
        Scenario(
            "stale-ack",
            "a consumer acks after its lease ended and another got the message: refused, "
            "not lost",
            duration_s=11,
            faults=(Fault("kill", "leader", 5.0, 1.5),),
            workload=Workload(p_stale=0.25, stale_lease_ms=300, stale_hold_s=0.8),
            checks=(check_stale_ack,),
        ),
        Scenario(
            "poison",
            "a message nacked every time ends in the dead-letter queue (delivery_limit), "
            "across restarts of all nodes",
            duration_s=11,
            faults=(
                Fault("restart-all", "kill", 3.0, 0.6),
                Fault("restart-all", "kill", 7.0, 0.6),
            ),
            workload=POISON_WORKLOAD,
            checks=(check_poison,),
        ),
        Scenario(
            "ring",
            "5 nodes, majorities-ring partition for ten election timeouts: a leader stays or "
            "returns, nothing lost",
            duration_s=_RING_S + 5,
            faults=(Fault("partition", "ring", 2.0, _RING_S, seed=3),),
            nodes=5,
            checks=(check_ring,),
        ),
        Scenario(
            "membership-grow-shrink",
            "3 -> 5 -> 3 voters under load, the leader killed during each change: nothing "
            "lost (issue 12)",
            duration_s=11,
            faults=(  # one change after another (the nemesis queues a change behind the last)
                Fault("membership", "add+kill-leader", 1.0, 0.3, seed=1),
                Fault("membership", "add+kill-leader", 3.5, 0.3, seed=2),
                Fault("membership", "remove+kill-leader", 6.0, 0.3, seed=3),
                Fault("membership", "remove+kill-leader", 8.0, 0.3, seed=4),
            ),
            checks=(check_membership_grow_shrink,),
        ),
    )
}
"""Every scenario by name."""


def options_for(
    name: str, out_dir: Path, *, seed: int | None = None, progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> RunOptions:
    """The run options of scenario `name`.

    Args:
        name: a key of `SCENARIOS`.
        out_dir: where the run writes its results.
        seed: the seed (random when None).
        progress: print progress lines.
        overrides: RunOptions fields to set (e.g. `{"duration_s": 20}`; the fault script
            keeps its times).

    Raises:
        KeyError: no such scenario.
    """
    s = SCENARIOS[name]
    opts = RunOptions(
        out_dir=out_dir,
        nemeses=tuple(sorted({f.kind for f in s.faults})),
        schedule=list(s.faults),
        duration_s=s.duration_s,
        rate=s.rate,
        concurrency=s.concurrency,
        seed=seed,
        nodes=s.nodes,
        tick_ms=_TICK_MS,
        election_ticks=_ELECTION_TICKS,
        workload=s.workload,
        require_faults=bool(s.faults),
        progress=progress,
        scenario=s.name,
        extra_checks=s.checks,
    )
    return replace(opts, **(overrides or {}))


def names() -> Sequence[str]:
    return list(SCENARIOS)
