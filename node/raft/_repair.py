"""Storage-fault rules of `RaftNode`: joining, repair, and the leader's view of both.

The rules and their safety argument: docs/architecture.md, "Storage faults" (after
protocol-aware recovery, Alagappan et al., FAST 2018). In short: a node that cannot prove its
durable state intact neither votes nor counts towards a quorum until a leader repaired it.
"""

from __future__ import annotations

from ._base import NodeState
from ._progress import Progress
from ._types import (
    REPAIR_DONE,
    REPAIR_ENTER,
    REPAIR_NONE,
    Index,
    JoinQuery,
    JoinQueryResponse,
    NodeId,
    Standing,
    Term,
)


class RepairRules(NodeState):
    """Joining (an empty database), repairing (lost state) and the leader's repair."""

    def _tick_joining(self) -> None:
        """JOINING: ask every other voter, once per election timeout, whether it holds state."""
        if self._join_nonce and self.election_elapsed < self.config.election_ticks:
            return
        self.election_elapsed = 0
        self._join_nonce = self.rng.randrange(1, 1 << 62)
        self._join_answers = {}
        others = [pid for pid in self.voters if pid != self.id]
        if not others:
            if self.id in self.voters:
                self._bootstrap()  # a cluster of one
            # Else a new node that knows no voter: it waits for a leader to contact it.
            return
        for pid in others:
            self._send(JoinQuery(self.term, self.id, pid, self._join_nonce))

    def _handle_join(self, msg: JoinQuery | JoinQueryResponse) -> None:
        if isinstance(msg, JoinQuery):
            empty = self.log.last_index() == 0 and self.standing is not Standing.REPAIRING
            self._send(JoinQueryResponse(self.term, self.id, msg.from_id, msg.nonce, empty))
            return
        if self.standing is not Standing.JOINING or msg.nonce != self._join_nonce:
            return  # an answer to an earlier question (or we are past joining)
        if not msg.empty:
            self._start_repair(self._joining_reason(
                f"node {msg.from_id} says the cluster exists (it holds Raft state or is "
                "repairing)"
            ))
            return
        self._join_answers[msg.from_id] = msg
        if all(pid in self._join_answers for pid in self.voters if pid != self.id):
            self._bootstrap()

    def _joining_reason(self, evidence: str) -> str:
        """Why a JOINING node becomes REPAIRING: a new node being admitted, or a member that
        lost its disk; either way the leader repairs it (catches it up) before it votes."""
        if self.id not in self.log.membership().members():
            return (f"new node joining an existing cluster ({evidence}): catching up from the "
                    "leader before it may vote")
        return f"empty database, but {evidence}: this node lost its disk (or joined late)"

    def _bootstrap(self) -> None:
        """Every other voter is empty too: the cluster is brand new; become a VOTER.

        A brand-new cluster may have had failed elections: adopt the highest term seen and
        count our vote in it as given (we cannot prove we did not give it before a restart).
        """
        top = max([self.term, *(a.term for a in self._join_answers.values())])
        if top > self.term:
            self.term = Term(top)
            self.vote = self.id
        self.standing = Standing.VOTER
        self.repair_reason = None
        self._join_answers = {}
        self.election_elapsed = 0
        self._reset_randomized_timeout()

    def _start_repair(self, reason: str) -> None:
        if self.standing is not Standing.REPAIRING:
            self.standing = Standing.REPAIRING
            self.repair_reason = reason

    def _follower_news(
        self, pr: Progress, repairing: bool, boot: int, heartbeat_round: int | None = None
    ) -> bool:
        """Leader: take the standing a follower's answer reports. False: ignore the answer.

        While a follower repairs, answers of its earlier incarnations (another `boot`, saying
        it is a voter) are old: they are ignored, unless a heartbeat answer of a round sent
        after the repair began shows a newer incarnation that is a voter again.
        """
        if repairing:
            if not pr.repairing or boot != pr.repair_boot:
                self._note_follower_standing(pr, True, boot)
            return True
        if pr.repairing:
            if boot != pr.repair_boot and (
                heartbeat_round is None or heartbeat_round < pr.repair_round
            ):
                return False
            self._note_follower_standing(pr, False, boot)
        return True

    def _note_follower_standing(self, pr: Progress, repairing: bool, boot: int) -> None:
        """Leader: a response said whether the follower is a VOTER.

        A follower that says it is repairing lost state: whatever match it acknowledged before
        is void, so the leader forgets it and probes again from its own log's end (answers of
        the follower's earlier incarnations are ignored from now on).
        """
        if repairing:
            pr.regressed = False  # it knows
            if not pr.repairing or boot != pr.repair_boot:
                pr.repairing = True
                pr.repair_boot = boot
                pr.repair_target = self.log.last_index()
                pr.repair_round = self._heartbeat_round + 1
                pr.match = Index(0)
                pr.become_probe()
                pr.next = Index(self.log.last_index() + 1)
                self._repair_event(pr, f"is repairing; repaired once it holds index "
                                       f"{pr.repair_target}")
        elif pr.repairing:
            pr.repairing = False
            pr.repair_target = None
            self._repair_event(pr, "is a voter again")

    def _repair_event(self, pr: Progress, what: str) -> None:
        """Leader: note a follower's change of standing for the driver's log."""
        pid = next((p for p, other in self.progress.items() if other is pr), None)
        self.repair_events.append(f"follower {pid} {what}")

    def _repair_signal(self, pr: Progress) -> int:
        """What the next heartbeat tells this follower about its standing."""
        if pr.regressed:
            return REPAIR_ENTER
        if (
            pr.repairing
            and pr.repair_target is not None
            and pr.match >= pr.repair_target
            and self._confirmed_since(pr.repair_round)
        ):
            return REPAIR_DONE
        return REPAIR_NONE

    def _confirmed_since(self, heartbeat_round: int) -> bool:
        """A quorum of voters (not counting repairing ones) answered a heartbeat of round
        `heartbeat_round` or later: no leader of a later term was elected before then."""
        def confirmed(pid: NodeId) -> bool:
            pr = self.progress.get(pid)
            return pid == self.id or (
                pr is not None and pr.counts and pr.acked_round >= heartbeat_round
            )

        return self._has_quorum(confirmed)

    def _may_vote(self) -> bool:
        """Only a VOTER grants votes: a node that lost durable state might vote twice in a
        term, or for a candidate without entries it once acknowledged."""
        return self.standing is Standing.VOTER

    def _may_campaign(self) -> bool:
        """Only a VOTER campaigns (its log is what it claims to hold)."""
        return self.standing is Standing.VOTER

    @property
    def _not_voter(self) -> bool:
        return self.standing is not Standing.VOTER
