"""The core simulator's membership nemesis: nodes come and go while the other faults run.

Owned by `Simulator` (tests/sim/raft_sim.py) when a run has membership changes. From its own
random stream (so that runs without it keep their seeds' traces) it asks whoever leads to:

- "add": start a new node (an id never used, an empty disk knowing the current voters, as
  `raftq node --join` does) and admit it as a learner;
- "promote": make a learner a voter (refused until it caught up);
- "remove": take a member out (the removed node keeps running: it must not disrupt);
- "replace": take a voter out and, once its removal is committed, stop it for good (its disk
  is gone); later "add" events bring new nodes in.

Every refusal the core gives (CHANGE_IN_PROGRESS, LEARNER_BEHIND, NO_QUORUM, ...) is counted,
not an error. The checks it adds: consecutive committed memberships never allow two disjoint
majorities (thesis 4.1), and a node campaigns only as a voter of its latest or of its committed
membership (a learner never; a removed node not once it knows its removal committed).
The paper's checks (election safety, leader completeness, durability of acknowledged writes)
run across memberships as before.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING

from node.raft import (
    ChangeKind,
    ConfChange,
    ConfChangeError,
    Membership,
    NodeId,
    NotLeader,
    ProposalDropped,
    Role,
    Standing,
)
from node.raft._quorum import overlapping

if TYPE_CHECKING:
    from .raft_sim import SimNode, Simulator

SPARE_IDS = 4
"""New nodes a run may add (ids are never reused)."""

CHANGE_PER_MILLE = 60
"""Chance per tick, in thousandths, that the nemesis asks for a change."""

BURST_PCT = 40
"""Chance, in percent, that a change comes with a second one in the same tick."""


class MembershipNemesis:
    """See the module docstring. `sim` owns it; it reads and changes `sim.nodes`."""

    def __init__(
        self, sim: Simulator, seed: int, change_per_mille: int = CHANGE_PER_MILLE,
        burst_pct: int = BURST_PCT,
    ) -> None:
        self.sim = sim
        self.change_per_mille = change_per_mille
        self.burst_pct = burst_pct
        self.rng = random.Random(f"{seed}/members")
        self.next_id = sim.n + 1
        self.last_id = sim.n + SPARE_IDS
        self.retiring: set[NodeId] = set()
        self.retired: set[NodeId] = set()
        # Committed memberships by index (index 0: the initial one), for the overlap check.
        self.committed: dict[int, Membership] = {0: Membership.of(tuple(sim.nodes))}

    # -- the nemesis ------------------------------------------------------------------------
    def tick(self) -> None:
        self._retire_removed()
        if self.rng.randrange(1000) >= self.change_per_mille:
            return
        # Sometimes a burst: a second change right behind the first, before it can commit
        # (the core must refuse it: one change at a time).
        for _ in range(2 if self.rng.randrange(100) < self.burst_pct else 1):
            self._change()

    def _change(self) -> None:
        leader = self.sim._leader()
        if leader is None or leader.core is None:
            return
        core = leader.core
        m = core.log.membership()
        kind = self.rng.choice(("add", "add", "promote", "promote", "remove", "replace"))
        if kind == "add":
            change = self._add(m)
        elif kind == "promote":
            if not m.learners:
                return
            change = ConfChange(ChangeKind.PROMOTE, self.rng.choice(m.learners))
        else:
            others = [v for v in m.voters if v != leader.id]
            pool = others if kind == "replace" else [*others, *m.learners]
            if len(m.voters) <= 3 and kind == "replace" or not pool:
                return
            if kind == "remove" and len(m.voters) <= 3:
                pool = list(m.learners) or pool
            change = ConfChange(ChangeKind.REMOVE, self.rng.choice(pool))
        if change is None:
            return
        self._propose(leader, change, kind)

    def _add(self, m: Membership) -> ConfChange | None:
        """A new node with an empty disk that knows the current voters, ready to be admitted;
        an earlier one whose admission was refused is tried again first."""
        sim = self.sim
        waiting = [
            nid for nid in sim.nodes
            if nid >= sim.n + 1 and nid not in m.members() and nid < self.next_id
            and nid not in self.retired and nid not in self.retiring and nid > m.max_id
        ]
        if waiting:
            nid = waiting[0]
        elif self.next_id <= self.last_id:
            nid = NodeId(self.next_id)
            self.next_id += 1
            self._start_node(nid, m)
        else:
            return None
        return ConfChange(ChangeKind.ADD_LEARNER, nid, f"n{nid}:raft", f"n{nid}:client")

    def _start_node(self, nid: NodeId, m: Membership) -> None:
        from .raft_sim import SimNode

        sim = self.sim
        base = sim.nodes[NodeId(1)].config
        cfg = replace(base, id=nid)
        factory = sim.nodes[NodeId(1)].node_factory
        sim.nodes[nid] = SimNode(
            nid, Membership.of(m.voters), cfg, random.Random(self.rng.random()), factory,
            Standing.JOINING,
        )
        sim._log(f"new node n{nid} (knows voters {list(m.voters)})")

    def _propose(self, leader: SimNode, change: ConfChange, kind: str) -> None:
        sim = self.sim
        assert leader.core is not None
        try:
            index = leader.core.propose_conf_change(change)
        except ConfChangeError as exc:
            sim._count(f"membership_refused_{exc.code.lower()}")
            return
        except (NotLeader, ProposalDropped):
            sim._count("membership_refused_not_leader")
            return
        entry = leader.core.log.entries(index, index + 1)[0]
        sim.pending[(leader.id, index)] = (leader.core.term, entry.data)
        if kind == "replace":
            self.retiring.add(change.node_id)
        sim._count(f"membership_{kind}")
        sim._log(f"membership {kind} n{change.node_id} proposed at {index} by n{leader.id}")

    def _retire_removed(self) -> None:
        """A replaced node stops for good once a leader committed its removal."""
        if not self.retiring:
            return
        latest = self.committed[max(self.committed)]
        for nid in sorted(self.retiring):
            if nid in latest.members():
                continue
            self.retiring.discard(nid)
            self.retired.add(nid)
            sn = self.sim.nodes[nid]
            if sn.alive:
                self.sim._crash(sn)
            self.sim._log(f"n{nid} retired (replaced: its disk is gone)")
            self.sim._count("membership_retired")

    # -- what the simulator asks --------------------------------------------------------------
    def may_restart(self, nid: NodeId) -> bool:
        return nid not in self.retired

    def must_converge(self, leader: SimNode) -> list[NodeId]:
        """The nodes that must have applied everything: the leader's members."""
        assert leader.core is not None
        return list(leader.core.log.membership().members())

    # -- checks -------------------------------------------------------------------------------
    def committed_config(self, sn: SimNode, index: int, data: bytes) -> None:
        """A CONFIG entry was applied (so committed): it must overlap the one before."""
        from .raft_sim import Violation

        new = Membership.decode(data)
        known = self.committed.get(index)
        if known is not None:
            return  # applied before elsewhere (state machine safety compares them)
        before = self.committed[max(i for i in self.committed if i < index)]
        if not overlapping(before.voters, new.voters):
            raise Violation(
                "membership-overlap",
                f"committed membership at {index} (voters {list(new.voters)}) and the one "
                f"before (voters {list(before.voters)}) allow two disjoint majorities",
            )
        self.committed[index] = new
        self.sim._log(
            f"membership committed at {index}: voters {list(new.voters)} "
            f"learners {list(new.learners)} (seen by n{sn.id})"
        )

    def check_tick(self) -> None:
        from .raft_sim import Violation

        for sn in self.sim._alive():
            core = sn.core
            assert core is not None
            if core.role not in (Role.CANDIDATE, Role.PRE_CANDIDATE):
                continue
            log = core.log
            committed = log.membership_at(log.committed)
            if sn.id not in core.voters and sn.id not in committed.voters:
                raise Violation(
                    "non-voter-campaigns",
                    f"n{sn.id} campaigns but is a voter neither of its membership "
                    f"{list(core.voters)} nor of the committed one {list(committed.voters)}",
                )
