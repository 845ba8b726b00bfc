"""The seeded cluster simulator: many seeds, determinism, hypothesis schedules, and a check of
the checker (deliberately broken cores must be caught)."""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.raft import Config, Index, NodeId, RaftNode, ReadState, RequestVoteResponse
from tests.sim.raft_sim import FAULT_KINDS, Fault, SimResult, Simulator, simulate

SEEDS = int(os.environ.get("RAFTQ_SIM_SEEDS", "500"))
CHUNK = 50


def run_seeds(seeds: range, sizes: tuple[int, ...] = (3, 5), **kw: object) -> list[SimResult]:
    results = []
    for seed in seeds:
        for n in sizes:
            r = simulate(seed, n, **kw)
            if r.violation is not None:
                tail = "\n".join(r.trace[-30:])
                raise AssertionError(
                    f"seed {seed} nodes {n}: {r.violation}\n{tail}\n"
                    f"replay: scripts/simulate --seed {seed} --nodes {n}"
                )
            results.append(r)
    return results


def test_seeds() -> None:
    """At least 500 seeds, each with 3 and with 5 nodes (1,000 runs)."""
    results: list[SimResult] = []
    for start in range(0, SEEDS, CHUNK):
        results += run_seeds(range(start, min(SEEDS, start + CHUNK)))
    assert len(results) == 2 * SEEDS
    # The faults really happened and the cluster did real work through them.
    totals: dict[str, int] = {}
    for r in results:
        for k, v in r.counters.items():
            totals[k] = totals.get(k, 0) + v
    for key in (
        "crashes",
        "dropped",
        "duplicated",
        "partitioned",
        "compactions",
        "snapshots_installed",
        "snapshot_installs_refused",
        "proposals_unknown",
        "disk_wipe",
        "disk_truncate",
        "disk_corrupt",
        "repaired",
        "reads_confirmed",
        "reads_dropped",
        "membership_add",
        "membership_promote",
        "membership_remove",
        "membership_replace",
        "membership_retired",
        "membership_refused_change_in_progress",
        "membership_refused_learner_behind",
    ):
        assert totals.get(key, 0) > 0, f"no {key} in {SEEDS} seeds: {totals}"
    assert sum(r.acked for r in results) > 50 * len(results)
    assert sum(r.faults for r in results) > 5 * len(results)
    kinds_seen = {k for r in results for k in r.counters}
    assert "snapshots_installed" in kinds_seen


def test_same_seed_same_trace_byte_for_byte() -> None:
    a = simulate(1234, 5)
    b = simulate(1234, 5)
    assert a.trace == b.trace and len(a.trace) > 10
    c = simulate(1235, 5)
    assert c.trace != a.trace


def test_every_fault_kind_is_exercised() -> None:
    for kind in FAULT_KINDS:
        args: tuple[int, ...] = ()
        if kind in ("isolate", "restart", "compact"):
            args = (2,)
        elif kind in ("crash", "wipe", "truncate", "corrupt"):
            args = (2, 5)
        elif kind == "crash_leader":
            args = (5,)
        elif kind == "cut":
            args = (1, 2)
        elif kind == "lossy":
            args = (30, 30, 2)
        elif kind == "crashy":
            args = (50,)
        sched = [Fault(40, kind, args), Fault(60, "crash", (3, 0)), Fault(80, "restart", (3,))]
        r = Simulator(7, 3, fault_ticks=200, schedule=sched).run()
        assert r.violation is None, (kind, r.violation)
        assert any(f"fault {kind}" in line for line in r.trace), kind


faults = st.builds(
    Fault,
    at_tick=st.integers(1, 300),
    kind=st.sampled_from(FAULT_KINDS),
    args=st.tuples(st.integers(1, 5), st.integers(0, 40), st.integers(0, 3)),
)


def _normalise(f: Fault, n: int) -> Fault:
    a, b, c = f.args
    node = (a - 1) % n + 1
    if f.kind in ("isolate", "restart", "compact"):
        return Fault(f.at_tick, f.kind, (node,))
    if f.kind in ("crash", "wipe", "truncate", "corrupt"):
        return Fault(f.at_tick, f.kind, (node, b))
    if f.kind == "crash_leader":
        return Fault(f.at_tick, f.kind, (b,))
    if f.kind == "cut":
        other = node % n + 1
        return Fault(f.at_tick, f.kind, (node, other))
    if f.kind == "lossy":
        return Fault(f.at_tick, f.kind, (b, b // 2, c))
    if f.kind == "crashy":
        return Fault(f.at_tick, f.kind, (b * 2,))
    return Fault(f.at_tick, f.kind, ())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=st.lists(faults, max_size=25),
    seed=st.integers(0, 2**32),
    nodes=st.sampled_from((3, 5)),
)
def test_hypothesis_fault_schedules(schedule: list[Fault], seed: int, nodes: int) -> None:
    sched = [_normalise(f, nodes) for f in schedule]
    r = Simulator(seed, nodes, fault_ticks=300, schedule=sched).run()
    assert r.violation is None, f"{r.violation}\n" + "\n".join(r.trace[-30:])


# ---------------------------------------------------------------------------------------------
# The checker is checked: broken cores must be reported within the seed budget.
# ---------------------------------------------------------------------------------------------


class GrantsEveryVote(RaftNode):
    """Broken: grants a vote to every up-to-date candidate, even twice in one term."""

    def _handle_request_vote(self, msg):  # type: ignore[no-untyped-def]
        if self.log.is_up_to_date(msg.last_log_index, msg.last_log_term):
            self._send(RequestVoteResponse(msg.term, self.id, msg.from_id, True, msg.pre_vote))
            if not msg.pre_vote:
                self.vote = msg.from_id
                self.election_elapsed = 0
        else:
            self._send(RequestVoteResponse(self.term, self.id, msg.from_id, False, msg.pre_vote))


class ForgetsVote(RaftNode):
    """Broken: never persists its vote (PySyncObj#84), so a restart lets it vote again."""

    def _hard_state(self):  # type: ignore[no-untyped-def]
        from node.raft import HardState

        return HardState(self.term, None, self.log.committed)


class NeverTruncates(RaftNode):
    """Broken: appends only past its own end, keeping conflicting entries (no Figure 2 rule 3)."""

    def _handle_append_entries(self, msg):  # type: ignore[no-untyped-def]
        from node.raft import AppendEntriesResponse

        log = self.log
        if not log.match_term(msg.prev_log_index, msg.prev_log_term):
            self._send(
                AppendEntriesResponse(
                    self.term, self.id, msg.from_id, False, Index(0), msg.prev_log_index, Index(0)
                )
            )
            return
        new = [e for e in msg.entries if e.index > log.last_index()]
        if new:
            log.append(new)
        last = Index(msg.prev_log_index + len(msg.entries))
        log.commit_to(Index(min(msg.leader_commit, log.last_index())))
        self._send(AppendEntriesResponse(self.term, self.id, msg.from_id, True, last))


class ConfirmsReadsAtOnce(RaftNode):
    """Broken: answers a read from its commit index at once, without a heartbeat round (what
    a leader answering from its applied state does)."""

    def read_index(self, ctx: int) -> None:
        super().read_index(ctx)
        self.pending_reads.pop()
        self.read_states.append(ReadState(ctx, self.log.committed))


def first_violation(factory: type[RaftNode], budget: int) -> tuple[int, str] | None:
    for seed in range(budget):
        for n in (3, 5):
            r = simulate(seed, n, node_factory=factory)
            if r.violation is not None:
                return seed, r.violation.invariant
    return None


def test_checker_catches_double_votes() -> None:
    found = first_violation(GrantsEveryVote, 20)
    assert found is not None, "two votes in one term went unnoticed"
    assert found[1] in ("election-safety", "log-matching", "state-machine-safety")


def test_checker_catches_a_vote_that_is_not_persisted() -> None:
    found = first_violation(ForgetsVote, 200)
    assert found is not None, "a vote lost in a crash went unnoticed"
    assert found[1] in (
        "election-safety",
        "log-matching",
        "state-machine-safety",
        "leader-completeness",
        "durability",
    )


def test_checker_catches_a_follower_that_keeps_conflicting_entries() -> None:
    found = first_violation(NeverTruncates, 50)
    assert found is not None, "conflicting entries kept by a follower went unnoticed"


def test_checker_catches_a_leader_that_reads_without_confirming() -> None:
    found = first_violation(ConfirmsReadsAtOnce, 40)
    assert found is not None, "a stale read from a deposed leader went unnoticed"
    assert found[1] == "linearizable-read"


def test_checker_reports_liveness_failure() -> None:
    # A core whose election timer never fires can never elect a leader.
    class NeverCampaigns(RaftNode):
        def _campaign(self, transfer: bool) -> None:
            return None

    r = Simulator(
        1, 3, fault_ticks=20, schedule=[], node_factory=NeverCampaigns, liveness_ticks=100
    ).run()
    assert r.violation is not None and r.violation.invariant == "liveness"


def test_crash_loses_unsynced_state() -> None:
    # A crash between receiving and persisting loses the core's unpersisted entries: a
    # restarted node's log is exactly its disk.
    rng = random.Random(3)
    sim = Simulator(
        rng.randrange(10**6), 3, fault_ticks=100, schedule=[Fault(50, "crashy", (500,))]
    )
    r = sim.run()
    assert r.violation is None
    assert r.counters.get("crashes", 0) > 5
    for sn in sim.nodes.values():
        assert sn.core is not None
        assert sn.core.log.last_index() >= sn.storage.last_index()


def test_config_defaults_for_the_simulator_are_valid() -> None:
    Config(NodeId(1), election_ticks=10, heartbeat_ticks=2)
