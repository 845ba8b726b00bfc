"""The membership faults of the nemesis: nodes join, leave and are replaced during the run.

`MembershipNemesis` is the part of a `Nemesis` that injects the `membership` kind. Its variants:

| variant | what it does |
| --- | --- |
| `add` | a new node (the next id, `max_id + 1`) is started with `--join`: admitted as a learner, caught up, promoted to voter |
| `remove` | a follower (a voter that does not lead) is removed, then its process stopped (SIGTERM) |
| `remove-leader` | the leader is removed: it hands leadership over first, the new leader removes it; then stopped |
| `replace` | a voter is lost (SIGKILL), removed, its data directory moved aside; a new id starts at its client and raft addresses with an empty data directory, joins and is promoted |

Each may end in `+kill-leader`: the leader is SIGKILLed while the change is in flight and
started again 0.3 to 1 s later. For `add` and `replace` the new node then starts with
`--learner` and the kill falls between its admission (seen as a learner in `members`) and its
promotion, which the nemesis asks for once the kill is done; for `remove` the kill is sent at
the same moment as the `remove_member` request (so the change is confirmed only after the
kill, by the leader elected next). Without it the new node promotes itself (`--join`, as
`raftq cluster add-node` does). Scenarios use these; a drawn schedule uses the plain four.

The cluster keeps between its initial size n and n + 2 voters: an `add` at n + 2 removes a
follower instead, a `remove` at n adds a node instead (the record says so in `note` and keeps
the drawn variant in `evidence["requested"]`). Removals and replacements first wait (up to
`quorum_wait_s`) until the voters left would have an active majority, as `raftq cluster
replace-node` checks; until then the change is not made (and the fault not verified). Changes
go one at a time (a lock: a change drawn while another is in flight waits for it); each runs
shielded from cancellation and bounded by `change_timeout_s`, so none is left half done when
the workload ends.

Every fault records what changed: `members_before` and `members_after` (voters, learners,
leader, term, membership index, max id, from `members`, a linearizable read at the leader),
`changed` (ids added, removed, promoted), the steps with their times, and the leader kill. It
is `verified` only when `members_after` shows the change (the new node a voter, the removed
one gone, the replacement a voter at the old client address) and, with `+kill-leader`, the
leader died of SIGKILL (exit -9). `check_membership` turns the records into a section of the
verdict: a run whose membership faults changed nothing is not valid.

How new nodes are connected: the runner binds, at the start, a proxy for every directed link
between all the ids the run may use (the n initial ones and one spare id per membership fault
of the schedule), and every node's `dial` names them, so a node added later is reached through
proxies like the others and the partitions and delays of the other nemeses cut and slow its
links too. A replacement takes the old node's addresses: the proxies towards its id are
pointed at the old raft address (`ProxyMesh.retarget`).

The workload's clients learn the new members from the cluster: after each change the runner
asks `members()` on every client it opened (`on_change`), as a client that refreshes its view
does, besides what NOT_LEADER answers teach them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import trio

from cluster.errors import (
    ChangeInProgress,
    ClusterUnavailable,
    LearnerBehind,
    NoQuorum,
    NotLeader,
    NotLearner,
    OutcomeUnknownError,
    RaftqError,
    Unavailable,
    UnknownMember,
)
from cluster.launcher import LauncherError
from cluster.members import MemberChange, Members
from jepsen_like import disk
from jepsen_like.faults import Fault, FaultRecord
from node.config import NodeConfig, format_addr

if TYPE_CHECKING:
    from jepsen_like.procs import NodeProcs
    from jepsen_like.proxy import ProxyMesh
    from jepsen_like.runner import RunOutcome

__all__ = [
    "CHANGES",
    "KILL_LEADER",
    "MembershipFaultError",
    "MembershipNemesis",
    "check_membership",
    "final_members",
    "members_diff",
    "parse_variant",
    "spare_ids_needed",
    "tell_clients",
    "view_summary",
]

logger = logging.getLogger("jepsen_like.nemesis")

CHANGES = ("add", "remove", "remove-leader", "replace")
"""The membership changes (the plain variants)."""

KILL_LEADER = "+kill-leader"
"""Suffix of a variant whose change has the leader killed while it is in flight."""

RETRY_ERRORS = (ChangeInProgress, ClusterUnavailable, NoQuorum, NotLeader, OutcomeUnknownError,
                Unavailable, LearnerBehind)
"""Answers to a change worth asking again (after a pause), until the change's deadline."""


class MembersClient(Protocol):
    """What the nemesis asks of the cluster (an `AsyncClient`)."""

    async def members(self, *, timeout_s: float | None = None) -> Members: ...

    async def remove_member(self, node_id: int, *,
                            timeout_s: float | None = None) -> MemberChange: ...

    async def promote_member(self, node_id: int, *,
                             timeout_s: float | None = None) -> MemberChange: ...


class MembershipFaultError(Exception):
    """A membership change could not be made (the message says what happened)."""


def parse_variant(variant: str) -> tuple[str, bool]:
    """(change, kill the leader during it) of a `membership` variant.

    Raises:
        ValueError: not a change of `CHANGES`, optionally with `KILL_LEADER`.
    """
    base, plus, rest = variant.partition("+")
    if base not in CHANGES or (plus and "+" + rest != KILL_LEADER):
        raise ValueError(f"unknown membership variant {variant!r}; known: "
                         f"{', '.join(CHANGES)}, each optionally with {KILL_LEADER}")
    return base, bool(plus)


def spare_ids_needed(schedule: Sequence[Fault]) -> int:
    """How many ids beyond the initial nodes a schedule may give (one per membership fault:
    an `add` or a `replace` takes one)."""
    return sum(1 for f in schedule if f.kind == "membership")


def view_summary(view: Members) -> dict[str, Any]:
    """The part of a `members` answer a fault record keeps."""
    return {
        "voters": [m.id for m in view.voters],
        "learners": [m.id for m in view.learners],
        "leader": view.leader_id,
        "term": view.term,
        "membership_index": view.membership_index,
        "max_id": view.max_id,
        "client_addrs": {str(m.id): m.client_addr for m in view.members},
    }


def _count(counts: dict[str, int], code: str | None) -> None:
    counts[str(code)] = counts.get(str(code), 0) + 1


def _only_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside nested groups of one, or None when there are more."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


async def tell_clients(clients: Sequence[MembersClient]) -> int:
    """Have every client read `members()` (so that it knows every member's address), in
    parallel, each bounded; clients that are not open (any more) are skipped. Returns how many
    read it."""
    told = 0

    async def tell(c: MembersClient) -> None:
        nonlocal told
        with trio.move_on_after(3.0):
            try:
                await c.members(timeout_s=2.0)
                told += 1
            except (RaftqError, RuntimeError):  # RuntimeError: not open (any more)
                pass

    async with trio.open_nursery() as nursery:
        for c in clients:
            nursery.start_soon(tell, c)
    return told


async def final_members(admin: MembersClient, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """`view_summary` of the members at the end, None when no answer came in `timeout_s`."""
    with trio.move_on_after(timeout_s):
        while True:
            try:
                return view_summary(await admin.members(timeout_s=3.0))
            except RaftqError:
                await trio.sleep(0.2)
    return None


def members_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[int]]:
    """Ids added, removed and promoted between two `view_summary`s."""
    b = set(before["voters"]) | set(before["learners"])
    a = set(after["voters"]) | set(after["learners"])
    return {
        "added": sorted(a - b),
        "removed": sorted(b - a),
        "promoted": sorted(set(after["voters"]) & set(before["learners"])),
    }


class MembershipNemesis:
    """Injects the `membership` faults of a `Nemesis` (see the module docstring).

    Args:
        procs: the node processes (it adds and retires nodes there).
        mesh: the link proxies (a replacement's links are pointed at the old address).
        admin: a client of the cluster (`members`, `remove_member`, `promote_member`).
        spare: the entries the run prepared for new ids (`initial = false`, their `dial`
            through the proxies), by id.
        find_leader: the current leader's id, asked of every member (None when none leads).
        clock_s: seconds since the start of the run (the history's clock).
        on_change: called with the membership after each change; tells the workload's
            clients (returns how many learned it).
        initial_size: the cluster's initial number of voters (default: the members now).

    Attributes:
        change_timeout_s: the longest one change may take, its wait for the previous one
            included.
        quorum_wait_s: how long a removal waits for the voters left to have an active majority.
        max_lag: a new node counts as caught up at most this many entries behind the leader.
        down_s: (min, max) seconds a killed leader stays down.
        self_promote_s: how long a node started with `--join` (without `--learner`) has to
            promote itself; after that the nemesis promotes it and records
            `self_promotion_missing` (the node's own lines about it). A node that replays an
            older membership entry without itself in it gives up asking (node/join.py
            `promote_until_voter`: "not a learner of its membership"), and stays a learner.
    """

    change_timeout_s = 45.0
    quorum_wait_s = 15.0
    max_lag = 100
    down_s = (0.3, 1.0)
    self_promote_s = 4.0
    poll_s = 0.05

    def __init__(
        self,
        procs: NodeProcs,
        mesh: ProxyMesh,
        admin: MembersClient,
        spare: dict[int, NodeConfig],
        find_leader: Callable[[], Awaitable[int | None]],
        clock_s: Callable[[], float],
        on_change: Callable[[Members], Awaitable[int]] | None = None,
        initial_size: int | None = None,
    ) -> None:
        self.procs = procs
        self.mesh = mesh
        self.admin = admin
        self.spare = dict(spare)
        self.find_leader = find_leader
        self.clock_s = clock_s
        self.on_change = on_change
        self.lo = initial_size if initial_size is not None else len(procs.member_ids)
        self.hi = self.lo + 2
        self._lock = trio.Lock()

    # -- the fault --------------------------------------------------------------------------
    async def start(
        self, fault: Fault, rec: FaultRecord, rng: random.Random
    ) -> Callable[[], Awaitable[None]]:
        """Make one change (shielded, bounded by `change_timeout_s`), recording on `rec` what
        it did. Returns its heal: nothing to undo (a membership change is permanent)."""
        change, kill = parse_variant(fault.variant)
        rec.evidence["requested"] = fault.variant
        rec.evidence["steps"] = []
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.change_timeout_s) as deadline:
                async with self._lock:
                    waited = self.clock_s() - rec.start_s
                    if waited > 0.05:  # the fault starts once the change before is done
                        rec.evidence["waited_for_previous_change_s"] = round(waited, 3)
                        rec.start_s = self.clock_s()
                        rec.start_wall_ms = time.time_ns() / 1e6
                    self._step(rec, "change starts")
                    await self._change(change, kill, rec, rng)
            if deadline.cancelled_caught:
                rec.verified = False
                last = (rec.evidence["steps"] or [{"what": "waiting for the change before"}])[-1]
                raise MembershipFaultError(
                    f"the change did not finish within {self.change_timeout_s:g} s "
                    f"(last step: {last['what']})")

        async def heal() -> None:
            return None

        return heal

    def _step(self, rec: FaultRecord, what: str) -> None:
        rec.evidence["steps"].append({"at_s": round(self.clock_s(), 3), "what": what})
        logger.info("membership fault %d: %s", rec.index, what)

    async def _change(self, change: str, kill: bool, rec: FaultRecord,
                      rng: random.Random) -> None:
        before = await self._members()
        rec.evidence["members_before"] = view_summary(before)
        change = self._resolve(change, before, rec)
        rec.evidence["change"] = change
        try:
            async with trio.open_nursery() as nursery:  # the killed leader's restart runs here
                if change == "add":
                    await self._add(before, kill, rec, rng, nursery)
                elif change in ("remove", "remove-leader"):
                    await self._remove(before, change == "remove-leader", kill, rec, rng,
                                       nursery)
                else:
                    await self._replace(before, kill, rec, rng, nursery)
        except BaseExceptionGroup as group:  # one error (in the body): raise it as it is
            inner = _only_error(group)
            if inner is None:
                raise
            raise inner from None
        after = await self._members()
        rec.evidence["members_after"] = view_summary(after)
        rec.evidence["changed"] = members_diff(rec.evidence["members_before"],
                                               rec.evidence["members_after"])
        rec.verified = self._verify(change, kill, rec, after)
        if self.on_change is not None:
            rec.evidence["clients_told"] = await self.on_change(after)
        self._step(rec, f"members now: voters {rec.evidence['members_after']['voters']}, "
                        f"learners {rec.evidence['members_after']['learners']}")

    def _resolve(self, change: str, view: Members, rec: FaultRecord) -> str:
        """The change to make, keeping between `lo` and `hi` voters and within the spare ids."""
        n = len(view.voters)
        wanted = change
        has_id = view.max_id + 1 in self.spare and view.max_id + 1 not in self.procs.nodes
        if change == "replace" and (n < 2 or not has_id):
            change = "add" if has_id else "remove"
        if change == "add" and (n >= self.hi or not has_id):
            change = "remove"
        if change in ("remove", "remove-leader") and n <= self.lo:
            change = "add"
        if change == "add" and not has_id:
            raise MembershipFaultError(
                f"not injected: no spare id left for a new node (next id {view.max_id + 1}; "
                f"the run prepared {sorted(self.spare)}) and {n} voters allow no removal")
        if change != wanted:
            rec.note = (f"{wanted} with {n} voters (kept between {self.lo} and {self.hi}): "
                        f"{change} instead").strip()
        return change

    def _verify(self, change: str, kill: bool, rec: FaultRecord, after: Members) -> bool:
        ev = rec.evidence
        before_ids = set(ev["members_before"]["voters"]) | set(ev["members_before"]["learners"])
        ok = True
        if change in ("add", "replace"):
            new = after.get(ev["added"])
            ok = (new is not None and new.is_voter and ev["added"] not in before_ids
                  and self.procs.running(ev["added"]))
        if change in ("remove", "remove-leader", "replace"):
            gone = ev["removed"]
            ok = ok and gone in before_ids and after.get(gone) is None
            ok = ok and not self.procs.running(gone)
        if change == "replace":
            new = after.get(ev["added"])
            ok = ok and new is not None and new.client_addr == ev["at_client_addr"]
        if kill:
            k = ev.get("leader_kill") or {}
            ok = ok and k.get("exit_code") == -9
        return ok

    # -- reading the cluster ------------------------------------------------------------------
    async def _members(self) -> Members:
        """`members`, asked again until it answers (the change's deadline bounds it)."""
        while True:
            try:
                return await self.admin.members(timeout_s=3.0)
            except RaftqError as exc:
                logger.info("members: %s; again", exc)
                await trio.sleep(0.1)

    async def _wait_member(self, rec: FaultRecord, nid: int, *, voter: bool,
                           within_s: float | None = None) -> Members | None:
        """Wait until `members` shows `nid` (a learner or a voter; with `voter`, a caught-up
        voter). Returns None when `within_s` passed first. Raises MembershipFaultError when
        its process exited by itself."""
        deadline = None if within_s is None else trio.current_time() + within_s
        while deadline is None or trio.current_time() < deadline:
            self._check_alive(nid)
            try:
                view = await self.admin.members(timeout_s=2.0)
            except RaftqError:
                await trio.sleep(self.poll_s)
                continue
            m = view.get(nid)
            if m is not None and (not voter or (m.is_voter and m.caught_up(self.max_lag))):
                return view
            await trio.sleep(self.poll_s)
        return None

    def _check_alive(self, nid: int) -> None:
        if self.procs.running(nid):
            return
        np = self.procs.nodes[nid]
        if np.pids and np.pids[-1] in np.killed:
            return  # killed on purpose (another fault): it is started again
        code = self.procs.launcher.exit_code(nid)
        tail = self.procs.output(nid, np.pids[-1]).splitlines()[-5:] if np.pids else []
        raise MembershipFaultError(f"node {nid} exited with status {code}: {tail}")

    async def _quorum_without(self, rec: FaultRecord, target: int) -> None:
        """Wait until the voters other than `target` have an active majority."""
        deadline = trio.current_time() + self.quorum_wait_s
        while True:
            view = await self._members()
            left = [v for v in view.voters if v.id != target]
            active = [v for v in left if v.leader or v.recent_active]
            if left and 2 * len(active) > len(left):
                return
            if trio.current_time() >= deadline:
                raise MembershipFaultError(
                    f"not injected: without node {target}, {len(active)} of the {len(left)} "
                    f"voters left answer the leader (waited {self.quorum_wait_s:g} s)")
            rec.note = f"waiting for the voters without node {target} to have a majority"
            await trio.sleep(0.2)
            rec.note = ""

    # -- the leader kill ------------------------------------------------------------------------
    async def _kill_leader(self, rec: FaultRecord, rng: random.Random, nursery: trio.Nursery,
                           during: str, leader: int | None = None) -> None:
        if leader is None:
            leader = await self.find_leader()
        if leader is None:
            rec.evidence["leader_kill"] = {"error": "no leader found", "during": during}
            return
        info: dict[str, Any] = {"node": leader, "during": during,
                                "at_s": round(self.clock_s(), 3)}
        rec.evidence["leader_kill"] = info
        pid, code = await self.procs.kill(leader)
        info.update(pid=pid, exit_code=code)
        if pid is not None:
            rec.pids.append(pid)
        self._step(rec, f"killed the leader, node {leader} (pid {pid}, exit {code}): {during}")
        nursery.start_soon(self._restart_later, rec, leader, rng.uniform(*self.down_s), info)

    async def _restart_later(self, rec: FaultRecord, nid: int, down_s: float,
                             info: dict[str, Any]) -> None:
        with trio.CancelScope(shield=True):  # also when the change failed meanwhile
            await trio.sleep(down_s)
            await self._restart(rec, nid, info)

    async def _restart(self, rec: FaultRecord, nid: int, info: dict[str, Any]) -> None:
        if nid not in self.procs.member_ids:
            info["restart"] = "not restarted: removed from the cluster"
            return
        if self.procs.running(nid):
            info["restart"] = "running already (started by another fault)"
            return
        try:
            info["restarted_pid"] = await self.procs.start(nid)
        except LauncherError as exc:
            info["restart"] = f"not restarted: {exc}"
            return
        info["restarted_at_s"] = round(self.clock_s(), 3)
        self._step(rec, f"started node {nid} again (pid {info['restarted_pid']})")

    # -- the changes ----------------------------------------------------------------------------
    async def _join(self, node: NodeConfig, kill: bool, rec: FaultRecord, rng: random.Random,
                    nursery: trio.Nursery) -> None:
        """Start `node` with --join; wait until it is a member, then a caught-up voter."""
        nid = node.id
        rec.evidence["added"] = nid
        self.procs.add_node(node, learner=kill)
        pid = await self.procs.start(nid)
        rec.evidence["started_pid"] = pid
        self._step(rec, f"started node {nid} (pid {pid}) with --join"
                        + (" --learner" if kill else ""))
        await self._wait_member(rec, nid, voter=False)
        rec.evidence["admitted_at_s"] = round(self.clock_s(), 3)
        self._step(rec, f"node {nid} admitted")
        if kill:
            await self._kill_leader(rec, rng, nursery,
                                    f"node {nid} is a learner, not yet promoted")
            await self._promote(rec, nid)
        rec.evidence["promoted_by"] = "nemesis" if kill else "node"
        if not kill and await self._wait_member(
                rec, nid, voter=True, within_s=self.self_promote_s) is None:
            # The node asks for its own promotion (--join); if it has not become a voter in
            # time, it gave up (see `self_promote_s`): the nemesis asks, and says so.
            why = [ln for ln in self.procs.output(nid, pid).splitlines()
                   if "not asking to be promoted" in ln or "promotion refused" in ln]
            rec.evidence["promoted_by"] = "nemesis"
            rec.evidence["self_promotion_missing"] = why[-3:] or [
                f"not a voter {self.self_promote_s:g} s after its admission"]
            self._step(rec, f"node {nid} did not promote itself in {self.self_promote_s:g} s: "
                            "the nemesis promotes it")
            await self._promote(rec, nid)
        await self._wait_member(rec, nid, voter=True)
        rec.evidence["voter_at_s"] = round(self.clock_s(), 3)
        self.procs.joining.pop(nid, None)
        self._step(rec, f"node {nid} is a caught-up voter")

    async def _promote(self, rec: FaultRecord, nid: int) -> None:
        while True:
            self._check_alive(nid)
            try:
                change = await self.admin.promote_member(nid, timeout_s=5.0)
            except NotLearner:
                return
            except RETRY_ERRORS as exc:
                _count(rec.evidence.setdefault("promote_retries", {}), exc.code)
                await trio.sleep(0.1)
                continue
            self._step(rec, f"promoted node {nid} (membership index {change.index})")
            return

    async def _remove_member(self, rec: FaultRecord, target: int) -> None:
        """Remove `target`, asking again through elections and refusals until it is gone."""
        while True:
            try:
                change = await self.admin.remove_member(target, timeout_s=10.0)
            except UnknownMember:
                if (await self._members()).get(target) is None:  # an earlier attempt did it
                    rec.evidence["removal_found_done"] = True
                    break
                raise
            except RETRY_ERRORS as exc:
                _count(rec.evidence.setdefault("remove_retries", {}), exc.code)
                await trio.sleep(0.1)
                continue
            rec.evidence["removal_index"] = change.index
            break
        rec.evidence["removed_at_s"] = round(self.clock_s(), 3)
        self._step(rec, f"node {target} removed")

    def _pick(self, ids: list[int]) -> list[int]:
        """The running ones of `ids` (all of them when none runs), sorted."""
        running = [i for i in ids if self.procs.running(i) and not self.procs.paused(i)]
        return sorted(running or ids)

    async def _add(self, view: Members, kill: bool, rec: FaultRecord, rng: random.Random,
                   nursery: trio.Nursery) -> None:
        node = self.spare[view.max_id + 1]
        rec.nodes = [node.id]
        await self._join(node, kill, rec, rng, nursery)

    async def _remove(self, view: Members, leader_too: bool, kill: bool, rec: FaultRecord,
                      rng: random.Random, nursery: trio.Nursery) -> None:
        leader = view.leader_id
        if leader_too and leader is not None:
            target = leader
        else:
            target = rng.choice(self._pick([v.id for v in view.voters if v.id != leader]))
        rec.nodes = [target]
        rec.evidence["removed"] = target
        rec.evidence["removed_was_leader"] = target == leader
        await self._quorum_without(rec, target)
        self._step(rec, f"removing node {target}" + (" (the leader)" if target == leader else ""))
        lead = await self.find_leader() if kill else None
        async with trio.open_nursery() as both:
            both.start_soon(self._remove_member, rec, target)
            if kill:  # at once: the request is on its way, its commit is not
                await self._kill_leader(rec, rng, nursery, f"remove_member({target}) sent",
                                        leader=lead)
        self.procs.retire(target)
        pid, code = await self.procs.stop(target)
        rec.evidence["stopped"] = {"pid": pid, "exit_code": code}
        if pid is not None:
            rec.pids.append(pid)
        self._step(rec, f"stopped node {target} (pid {pid}, exit {code})")

    async def _replace(self, view: Members, kill: bool, rec: FaultRecord, rng: random.Random,
                       nursery: trio.Nursery) -> None:
        target = rng.choice(self._pick([v.id for v in view.voters]))
        new_id = view.max_id + 1
        rec.nodes = [target, new_id]
        rec.evidence["removed"] = target
        old = self.procs.config.node(target)
        rec.evidence["at_client_addr"] = format_addr(old.client_addr)
        await self._quorum_without(rec, target)
        pid, code = await self.procs.kill(target)  # lost, with its disk
        self.procs.retire(target)
        rec.evidence["stopped"] = {"pid": pid, "exit_code": code}
        if pid is not None:
            rec.pids.append(pid)
        self._step(rec, f"node {target} lost (SIGKILL, pid {pid}, exit {code})")
        await self._remove_member(rec, target)
        if old.data_dir.exists():
            moved = await trio.to_thread.run_sync(disk.wipe, old.data_dir)
            rec.evidence["moved_aside"] = moved.to_json()
            self._step(rec, f"moved node {target}'s data directory aside")
        node = replace(self.spare[new_id], raft_addr=old.raft_addr,
                       client_addr=old.client_addr, data_dir=old.data_dir)
        self.mesh.retarget(new_id, old.raft_addr)
        await self._join(node, kill, rec, rng, nursery)


def check_membership(out: RunOutcome) -> dict[str, Any]:
    """The `membership` section of a run's verdict: every membership fault changed the
    members as recorded, at least one did, and the members at the end are the nodes the final
    checks asked (removed nodes excluded, every one a voter)."""
    problems: list[str] = []
    fs = [f for f in out.faults if f["kind"] == "membership"]
    changes = []
    for f in fs:
        ev = f.get("evidence", {})
        before, after = ev.get("members_before") or {}, ev.get("members_after") or {}
        changes.append({
            "index": f["index"], "variant": f["variant"], "change": ev.get("change"),
            "voters_before": before.get("voters"), "voters_after": after.get("voters"),
            "changed": ev.get("changed"), "leader_kill": (ev.get("leader_kill") or {}).get(
                "node"), "verified": f.get("verified", False),
        })
        if not f.get("verified"):
            problems.append(f"fault {f['index']} ({f['variant']}) did not change the members "
                            f"as intended: {f.get('note') or ev.get('changed')}")
    if not any(c["verified"] for c in changes):
        problems.append("no membership fault changed the members: this run proves nothing "
                        "about membership changes")
    not_self_promoted = [f["evidence"]["added"] for f in fs
                         if "self_promotion_missing" in f.get("evidence", {})]
    final = out.final_members
    asked = sorted(int(s["node_id"]) for s in out.final_statuses or [] if "node_id" in s)
    if final is None:
        problems.append("the members at the end could not be read")
    else:
        if final["learners"]:
            problems.append(f"learners left at the end: {final['learners']}")
        if sorted(final["voters"] + final["learners"]) != asked:
            problems.append(f"the cluster's members {final['voters']} are not the nodes the "
                            f"final checks asked {asked}")
    path = " -> ".join([str(changes[0]["voters_before"])]
                       + [str(c["voters_after"]) for c in changes]) if changes else ""
    if not_self_promoted:
        path += f" (nodes {not_self_promoted} promoted by the nemesis: they gave up asking)"
    return {
        "name": "membership",
        "valid": not problems,
        "problems": problems,
        "changes": changes,
        "final_members": final,
        "promoted_by_the_nemesis_after_the_node_gave_up": not_self_promoted,
        "summary": "; ".join(problems) or path,
    }
