"""Client-side membership: the results of the membership operations, and their arguments.

The operations themselves are methods of `cluster.client.AsyncClient` (and `Client`):
`members()`, `add_member(raft_addr, client_addr, node_id=None)`, `promote_member(node_id)`,
`remove_member(node_id)`; docs/protocol.md has their wire form, docs/operations.md
("Membership") the procedures built on them.

Why the changes may be retried (the client treats them as idempotent): each one names a state
rather than a step ("node 4 is a learner at these addresses", "node 4 is a voter", "node 4 is
not a member"), and node ids are never reused, so a change that took effect cannot be undone
by anyone re-using its id. A retry after an unknown outcome therefore either succeeds (the node
answers `add_member` of the same learner with the same addresses as a success) or is refused
with the code that says the state is already reached (`ALREADY_MEMBER`, `NOT_LEARNER`,
`UNKNOWN_MEMBER`); the client then reads `members()` and reports success when the membership
shows the state asked for (`reached`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster.errors import BadFrame
from node.config import ConfigError, parse_addr

__all__ = [
    "Member",
    "MemberChange",
    "Members",
    "add_member_args",
    "change_from_wire",
    "check_node_id",
    "members_from_wire",
    "reached",
]

ROLES = ("voter", "learner")


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the cluster, as the leader sees it.

    Attributes:
        id: the node id (never reused once removed).
        role: "voter" or "learner".
        raft_addr: "host:port" where peers reach it, or None when no one knows.
        client_addr: "host:port" where clients reach it, or None when no one knows.
        match_index: the highest log index the leader knows it holds; None while the leader
            has no progress for it (e.g. just after an election).
        lag: the leader's commit index minus `match_index` (0 for the leader), or None.
        state: the leader's replication state for it (e.g. "probe", "replicate",
            "snapshot"), "" when it has none (the leader itself).
        recent_active: it answered the leader within the last election timeout.
        repairing: it is being repaired (it lost state; it neither votes nor counts).
        leader: it is the leader.
    """

    id: int
    role: str
    raft_addr: str | None
    client_addr: str | None
    match_index: int | None
    lag: int | None
    state: str
    recent_active: bool
    repairing: bool
    leader: bool

    @property
    def is_voter(self) -> bool:
        return self.role == "voter"

    @property
    def is_learner(self) -> bool:
        return self.role == "learner"

    def caught_up(self, max_lag: int) -> bool:
        """It answers the leader, is not being repaired, and lags by at most `max_lag`."""
        return (self.leader or self.recent_active) and not self.repairing and (
            self.lag is not None and self.lag <= max_lag)

    def to_json(self) -> dict[str, Any]:
        """The wire form of the member (JSON-ready)."""
        return {
            "id": self.id, "role": self.role, "raft_addr": self.raft_addr,
            "client_addr": self.client_addr, "match_index": self.match_index, "lag": self.lag,
            "state": self.state, "recent_active": self.recent_active,
            "repairing": self.repairing, "leader": self.leader,
        }


@dataclass(frozen=True, slots=True)
class Members:
    """The cluster's membership, read from the leader (a linearizable read).

    Attributes:
        leader_id: the leader that answered.
        term: its term.
        commit_index: its commit index.
        membership_index: the log index of the CONFIG entry in effect (0: the membership the
            cluster was created with).
        max_id: the highest node id ever admitted; the next new node gets `max_id + 1`.
        members: every member, sorted by id.
    """

    leader_id: int | None
    term: int
    commit_index: int
    membership_index: int
    max_id: int
    members: tuple[Member, ...]

    @property
    def voters(self) -> list[Member]:
        return [m for m in self.members if m.is_voter]

    @property
    def learners(self) -> list[Member]:
        return [m for m in self.members if m.is_learner]

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.members]

    @property
    def leader(self) -> Member | None:
        """The member that leads, or None."""
        return next((m for m in self.members if m.leader), None)

    def get(self, node_id: int) -> Member | None:
        """The member with this id, or None when it is not a member."""
        return next((m for m in self.members if m.id == node_id), None)

    def client_addrs(self) -> list[str]:
        """The members' known client addresses, the leader's first."""
        ordered = sorted(self.members, key=lambda m: (not m.leader, m.id))
        return [m.client_addr for m in ordered if m.client_addr]

    def to_json(self) -> dict[str, Any]:
        """The wire form of the `members` result (JSON-ready)."""
        return {
            "leader_id": self.leader_id, "term": self.term, "commit_index": self.commit_index,
            "membership_index": self.membership_index, "max_id": self.max_id,
            "members": [m.to_json() for m in self.members],
        }


@dataclass(frozen=True, slots=True)
class MemberChange:
    """The result of `add_member`, `promote_member` or `remove_member`.

    Attributes:
        node_id: the node the change concerns (for `add_member`, the id it was given).
        index: the log index of the committed CONFIG entry that made the change; for a change
            confirmed only on a retry (`on_retry`), the index of the membership in effect then.
        on_retry: the first attempt's outcome was unknown and a retry found the change already
            made (by that attempt, or by someone else asking for the same state).
    """

    node_id: int
    index: int
    on_retry: bool = False


def _addr(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadFrame(None, f"malformed reply to members: {what} {value!r:.100}")
    return value


def _int(obj: dict[str, Any], key: str, what: str, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if type(value) is not int:
        raise BadFrame(None, f"malformed reply to {what}: {key} is {value!r:.100}")
    return value


def _member_from_wire(m: Any) -> Member:
    if not isinstance(m, dict):
        raise BadFrame(None, f"malformed member in a members reply: {m!r:.200}")
    role = m.get("role")
    if role not in ROLES:
        raise BadFrame(None, f"malformed member in a members reply: role {role!r:.50}")
    return Member(
        id=_int(m, "id", "members"),
        role=role,
        raft_addr=_addr(m.get("raft_addr"), "raft_addr"),
        client_addr=_addr(m.get("client_addr"), "client_addr"),
        match_index=_int(m, "match_index", "members", optional=True),
        lag=_int(m, "lag", "members", optional=True),
        state=str(m.get("state") or ""),
        recent_active=bool(m.get("recent_active")),
        repairing=bool(m.get("repairing")),
        leader=m.get("leader") is True,
    )


def members_from_wire(result: Any) -> Members:
    """Read the result of `members`.

    Raises:
        BadFrame: it is not the map docs/protocol.md describes.
    """
    if not isinstance(result, dict) or not isinstance(result.get("members"), list):
        raise BadFrame(None, f"malformed reply to members: {result!r:.200}")
    members = tuple(sorted((_member_from_wire(m) for m in result["members"]),
                           key=lambda m: m.id))
    return Members(
        leader_id=_int(result, "leader_id", "members", optional=True),
        term=_int(result, "term", "members", optional=True) or 0,
        commit_index=_int(result, "commit_index", "members", optional=True) or 0,
        membership_index=_int(result, "membership_index", "members", optional=True) or 0,
        max_id=_int(result, "max_id", "members", optional=True) or max(
            (m.id for m in members), default=0),
        members=members,
    )


def change_from_wire(op: str, result: Any) -> MemberChange:
    """Read the result of a membership change (`{"node_id", "index"}`).

    Raises:
        BadFrame: it is not that map.
    """
    if not isinstance(result, dict):
        raise BadFrame(None, f"malformed reply to {op}: {result!r:.200}")
    return MemberChange(_int(result, "node_id", op), _int(result, "index", op))


def check_node_id(node_id: Any, what: str = "node_id") -> int:
    """`node_id` when it is a positive int (not a bool).

    Raises:
        ValueError: it is not.
    """
    if type(node_id) is not int or node_id < 1:
        raise ValueError(f"{what} must be a positive integer, got {node_id!r}")
    return node_id


def add_member_args(raft_addr: str, client_addr: str, node_id: int | None) -> dict[str, Any]:
    """The arguments of `add_member`, checked.

    Raises:
        ValueError: an address is not "host:port", or the id is not a positive integer.
    """
    for value, what in ((raft_addr, "raft_addr"), (client_addr, "client_addr")):
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a 'host:port' string, got {value!r}")
        try:
            parse_addr(value, what)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    args: dict[str, Any] = {"raft_addr": raft_addr, "client_addr": client_addr}
    if node_id is not None:
        args["id"] = check_node_id(node_id)
    return args


def reached(op: str, args: dict[str, Any], view: Members) -> bool:
    """True when `view` shows the state the change `op` with `args` asked for.

    `add_member`: the id is a member (learner or, promoted since, voter) with the same
    addresses; `promote_member`: the id is a voter; `remove_member`: the id is no member.
    """
    member = view.get(args["id"])
    if op == "add_member":
        return (member is not None and member.raft_addr == args["raft_addr"]
                and member.client_addr == args["client_addr"])
    if op == "promote_member":
        return member is not None and member.is_voter
    if op == "remove_member":
        return member is None
    raise ValueError(f"not a membership change: {op!r}")
