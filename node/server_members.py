"""The client operations that change or show the cluster's membership (docs/protocol.md):
`add_member`, `promote_member`, `remove_member` and `members`.

Split from node/server.py (the listener and the queue operations). A change goes through the
Raft core's rules (node/raft/_conf_change.py: one at a time, after the leader committed in its
term, a learner promoted only once caught up, the leader never removes itself) and is answered
once its CONFIG entry is applied in this leader's term. `members` is a linearizable read
(ReadIndex, as `queue_stats`): a leader cut off from the others answers NOT_LEADER or
UNAVAILABLE, never an old membership.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from node.config import ConfigError, format_addr, parse_addr
from node.loop_api import ProposalFailed, TransferFailed
from node.loop_members import member_rows
from node.raft import ChangeKind, ConfChange, ConfChangeError, Membership, NodeId
from node.server_errors import RequestError

if TYPE_CHECKING:
    from node.server import ClientServer

__all__ = ["MEMBER_OPS", "MemberOps"]

MEMBER_OPS = frozenset({"add_member", "promote_member", "remove_member", "members"})

_ARGS = {
    "add_member": {"raft_addr": True, "client_addr": True, "id": False},
    "promote_member": {"id": True},
    "remove_member": {"id": True},
    "members": {},
}
"""Each operation's arguments: name -> required."""


def _error(code: str, message: str) -> RequestError:
    return RequestError(code, message)


def _node_id(op: str, value: object) -> int:
    if type(value) is not int or value <= 0:
        raise _error("BAD_REQUEST", f"{op}: id must be a positive integer, got {value!r:.40}")
    return value


def _address(op: str, name: str, value: object) -> str:
    if type(value) is not str:
        raise _error("BAD_REQUEST", f"{op}: {name} must be a \"host:port\" string")
    try:
        return format_addr(parse_addr(value, name))
    except ConfigError as exc:
        raise _error("BAD_REQUEST", f"{op}: {exc}") from None


class MemberOps:
    """The membership operations of one node's `ClientServer`.

    Args:
        server: the node's client server (its loop, configuration, NOT_LEADER and ReadIndex
            helpers).
    """

    def __init__(self, server: ClientServer) -> None:
        self.server = server
        self.loop = server.loop

    def _check_args(self, op: str, args: dict[Any, Any]) -> dict[str, Any]:
        spec = _ARGS[op]
        unknown = sorted(str(k) for k in args if k not in spec)
        if unknown:
            raise _error("BAD_REQUEST", f"{op}: unknown arguments {unknown} (known: "
                         f"{sorted(spec)})")
        missing = sorted(k for k, required in spec.items() if required and args.get(k) is None)
        if missing:
            raise _error("BAD_REQUEST", f"{op}: missing arguments {missing}")
        return {k: v for k, v in args.items() if v is not None}

    async def dispatch(self, op: str, args: dict[Any, Any]) -> Any:
        """Serve one membership operation; returns its result or raises RequestError."""
        args = self._check_args(op, args)
        if op == "members":
            return await self.members()
        if op == "add_member":
            return await self.add_member(
                _address(op, "raft_addr", args["raft_addr"]),
                _address(op, "client_addr", args["client_addr"]),
                _node_id(op, args["id"]) if "id" in args else None,
            )
        node_id = _node_id(op, args["id"])
        if op == "promote_member":
            return await self._change(ConfChange(ChangeKind.PROMOTE, NodeId(node_id)))
        return await self.remove_member(node_id)

    def _require_leader(self) -> None:
        if not self.loop.is_leader:
            raise self.server._not_leader()

    async def _change(self, change: ConfChange) -> dict[str, int]:
        """Propose `change` and wait (at most the commit timeout) until it is applied."""
        server = self.server
        self._require_leader()
        timeout_s = server.actors.commit_timeout_s
        index = None
        try:
            with trio.move_on_after(timeout_s):
                index = await self._propose(change)
        except ConfChangeError as exc:
            code = "BAD_REQUEST" if exc.code == "BAD_CHANGE" else exc.code
            raise _error(code, str(exc)) from None
        except ProposalFailed as exc:
            if exc.code == "NOT_LEADER":
                raise server._not_leader(exc.leader_id) from None
            raise _error(exc.code, str(exc)) from None
        if index is None:
            raise _error(
                "TIMEOUT", f"the membership change was not committed within {timeout_s:g} s "
                "(it may still be): check with members"
            )
        return {"node_id": int(change.node_id), "index": index}

    async def _propose(self, change: ConfChange) -> int:
        """`propose_conf_change`, asked again for up to one election timeout while the core
        says NO_QUORUM: a leader just elected has not heard from every follower yet (a voter
        counts as active once it answered within an election timeout), so the refusal is
        transient then; past that, the voters really are down or cut off."""
        give_up_at = trio.current_time() + self.server.election_timeout_s
        while True:
            try:
                return await self.loop.propose_conf_change(change)
            except ConfChangeError as exc:
                if exc.code != "NO_QUORUM" or trio.current_time() >= give_up_at:
                    raise
            await trio.sleep(self.server.election_timeout_s / 8)
            self._require_leader()

    # -- the operations ---------------------------------------------------------------------
    async def add_member(
        self, raft_addr: str, client_addr: str, node_id: int | None
    ) -> dict[str, int]:
        """Admit a node as a learner; idempotent for a retry (the same id, or no id, with the
        same addresses, already a learner: success without a new entry)."""
        self._require_leader()
        m = self.loop.membership
        same = [
            nid for nid in m.learners
            if m.address(nid) == (raft_addr, client_addr) and node_id in (None, nid)
        ]
        if same:
            return await self._already_admitted(same[0], m)
        for nid in m.members():
            addr = self.server.member_addr(nid)
            for mine in (raft_addr, client_addr):
                if addr is not None and nid != node_id and mine in addr:
                    raise _error(
                        "ALREADY_MEMBER", f"address {mine} is member {nid}'s (remove it first)"
                    )
        new_id = node_id if node_id is not None else m.max_id + 1
        return await self._change(
            ConfChange(ChangeKind.ADD_LEARNER, NodeId(new_id), raft_addr, client_addr)
        )

    async def _already_admitted(self, node_id: int, seen: Membership) -> dict[str, int]:
        """A retried add_member of a learner admitted before: success once its entry is known
        committed (after a ReadIndex round, so a deposed leader cannot say so)."""
        await self.server._confirm_leadership(self.server.read_timeout_s)
        st, m = await self.loop.membership_status()
        nid = NodeId(node_id)
        index = None
        if (
            m.is_learner(nid)
            and m.address(nid) == seen.address(nid)
            and st["applied_index"] >= st["membership_index"]
        ):
            index = int(st["membership_index"])
        if index is None:
            raise _error(
                "CHANGE_IN_PROGRESS",
                f"node {node_id}'s admission is not committed yet; retry shortly",
            )
        return {"node_id": node_id, "index": index}

    async def remove_member(self, node_id: int) -> dict[str, int]:
        """Remove a member; the leader's own removal hands leadership over first and then
        answers NOT_LEADER, so that the client asks the new leader (which removes it)."""
        self._require_leader()
        if node_id != self.server.node_id:
            return await self._change(ConfChange(ChangeKind.REMOVE, NodeId(node_id)))
        m = self.loop.membership
        if len(m.voters) == 1:
            raise _error("LAST_VOTER", f"node {node_id} is the last voter: a cluster needs one")
        await self._hand_over(node_id)
        raise self.server._not_leader(why=" (it handed leadership over to be removed)")

    async def _hand_over(self, node_id: int) -> None:
        """Transfer leadership to the most caught-up voter that answered recently and wait
        (two election timeouts at most) until this node no longer leads and knows who does."""
        server = self.server
        try:
            target = await self.loop.transfer_leadership(None)
        except (TransferFailed, ValueError) as exc:
            raise _error("UNAVAILABLE", f"cannot hand leadership over: {exc}") from None
        if target is None:
            if not self.loop.is_leader:
                raise server._not_leader()
            raise _error(
                "UNAVAILABLE",
                f"node {node_id} leads and no other voter answered it recently: it cannot hand "
                "leadership over before its removal",
            )
        wait_s = 2 * server.election_timeout_s
        with trio.move_on_after(wait_s):
            while self.loop.is_leader or self.loop.view.leader_id in (None, node_id):
                await self.loop.role_changed.wait()
        if self.loop.is_leader:
            raise _error(
                "UNAVAILABLE", f"leadership did not move to node {target} within {wait_s:g} s"
            )

    async def members(self) -> dict[str, Any]:
        """The membership and each member's replication, from the leader, linearizable."""
        server = self.server
        self._require_leader()
        await server._confirm_leadership(server.read_timeout_s)
        st, m = await self.loop.membership_status()
        if st["role"] != "leader":
            raise server._not_leader()
        return {
            "leader_id": st["node_id"],
            "term": st["term"],
            "commit_index": st["commit_index"],
            "membership_index": st["membership_index"],
            "max_id": m.max_id,
            "members": member_rows(st, m, server.node_id, server.member_addr),
        }
