"""The core simulator's membership nemesis (tests/sim/sim_members.py): nodes added, promoted,
removed and replaced among crashes, partitions and message loss; and the check of the
checker: cores that break the rules of membership changes are caught within a seed budget."""

from __future__ import annotations

from node.raft import NodeId, RaftNode
from tests.sim.raft_sim import simulate


class TwoChangesInFlight(RaftNode):
    """Broken: proposes a membership change while the previous one is not committed."""

    def _check_no_change_in_flight(self) -> None:
        if not self._committed_in_term():
            super()._check_no_change_in_flight()


class RemovedNodesStillVote(RaftNode):
    """Broken: counts the votes of every node that was ever a voter it knew, removed or not."""

    _ever: set[NodeId] | None = None

    def _electorate(self) -> tuple[NodeId, ...]:
        if self._ever is None:
            self._ever = set()
        self._ever |= set(self.voters)
        return tuple(sorted(self._ever))


def test_membership_changes_among_faults_keep_every_invariant() -> None:
    totals: dict[str, int] = {}
    for seed in range(40):
        r = simulate(seed, 5 if seed % 2 else 3, membership=True)
        assert r.violation is None, f"seed {seed}: {r.violation}\n" + "\n".join(r.trace[-30:])
        for k, v in r.counters.items():
            totals[k] = totals.get(k, 0) + v
    # The changes really happened, and the core refused what it must refuse.
    for key in (
        "membership_add",
        "membership_promote",
        "membership_remove",
        "membership_replace",
        "membership_retired",
        "membership_refused_change_in_progress",
        "membership_refused_learner_behind",
        "membership_refused_no_quorum",
        "crashes",
        "partitioned",
        "dropped",
    ):
        assert totals.get(key, 0) > 0, f"no {key} in 40 seeds: {totals}"


def _first_violation(factory: type[RaftNode], seeds: range, **kw: object) -> tuple[int, str]:
    for seed in seeds:
        r = simulate(seed, 5, node_factory=factory, membership=True, **kw)
        if r.violation is not None:
            return seed, r.violation.invariant
    raise AssertionError(f"{factory.__name__} was not caught in seeds {seeds}")


def test_two_changes_in_flight_are_caught() -> None:
    # A hotter nemesis (a change every 4 ticks on average, most in bursts of two).
    seed, invariant = _first_violation(
        TwoChangesInFlight, range(60), membership_pace=(250, 80)
    )
    assert invariant in ("leader-completeness", "election-safety", "durability"), invariant


def test_a_removed_node_that_still_votes_is_caught() -> None:
    seed, invariant = _first_violation(RemovedNodesStillVote, range(60))
    assert invariant in (
        "leader-completeness", "election-safety", "durability", "log-matching",
        "state-machine-safety",
    ), invariant
