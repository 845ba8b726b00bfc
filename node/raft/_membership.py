"""Cluster membership: who votes, who only learns, where each member is, and how it changes.

A `Membership` is carried in the log by CONFIG entries (the whole new membership, not the
change, so that any entry alone says what it is) and in every snapshot's meta. A node uses the
latest membership in its log, committed or not (Ongaro's thesis, 4.1: "a server always uses the
latest configuration in its log"); `RaftLog` keeps that history. Changes are single-server
(thesis 4.1): each adds or removes one voter, or adds or promotes a learner, so that every
majority of the old voters overlaps every majority of the new. The rules on when a leader may
propose one are in `RaftNode.propose_conf_change`; docs/architecture.md, "Membership changes", has
the safety argument.

Addresses are the driver's: the core carries them (so that every node and client learns where a
new member is from the log, not from a file) and never reads them.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from ._errors import RaftError
from ._ids import NodeId


class ChangeKind(enum.IntEnum):
    """What one membership change does."""

    ADD_LEARNER = 1
    """Admit a new node as a learner: it receives the log but neither votes nor counts."""
    PROMOTE = 2
    """Make a caught-up learner a voter."""
    REMOVE = 3
    """Take a voter or a learner out of the cluster."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership change, as a client asks for it.

    Attributes:
        kind: ADD_LEARNER, PROMOTE or REMOVE.
        node_id: the node it concerns.
        raft_addr: ADD_LEARNER only: "host:port" where peers reach the node.
        client_addr: ADD_LEARNER only: "host:port" where clients reach the node.
    """

    kind: ChangeKind
    node_id: NodeId
    raft_addr: str = ""
    client_addr: str = ""


class ConfChangeError(RaftError):
    """A membership change is refused; `code` says why (stable, crosses the wire).

    Codes: CHANGE_IN_PROGRESS (an earlier change is not committed yet, or this leader has not
    committed an entry of its term yet: retry shortly), UNKNOWN_MEMBER, ALREADY_MEMBER,
    ID_RETIRED (ids of removed nodes are never reused), NOT_LEARNER, LAST_VOTER,
    LEADER_REMOVAL (the leader hands over before it can be removed), LEARNER_BEHIND (the learner
    has not caught up yet), BAD_CHANGE (malformed).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Membership:
    """The members of the cluster at one log index.

    Attributes:
        voters: node ids that vote and make up majorities, sorted.
        learners: node ids that receive the log and do not vote, sorted, none a voter.
        addresses: (id, raft "host:port", client "host:port") per member that has them,
            sorted by id; opaque to the core. A cluster created from a configuration file starts
            without them (the file has them).
        max_id: the highest node id ever admitted; a removed node's id is never given again,
            so that a message from its old process can never pass for a new member's.
    """

    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()
    addresses: tuple[tuple[NodeId, str, str], ...] = ()
    max_id: int = 0

    @classmethod
    def of(
        cls, voters: tuple[NodeId, ...] | list[NodeId], learners: tuple[NodeId, ...] = ()
    ) -> Membership:
        """A membership of these voters and learners (sorted; max_id from them), no addresses."""
        ids = [*voters, *learners]
        return cls(tuple(sorted(voters)), tuple(sorted(learners)), (), max(ids, default=0))

    def members(self) -> tuple[NodeId, ...]:
        """Every member, voters and learners, sorted."""
        return tuple(sorted((*self.voters, *self.learners)))

    def is_voter(self, node_id: NodeId) -> bool:
        return node_id in self.voters

    def is_learner(self, node_id: NodeId) -> bool:
        return node_id in self.learners

    def address(self, node_id: NodeId) -> tuple[str, str] | None:
        """(raft, client) address of a member, or None if the membership does not hold one."""
        for nid, raft, client in self.addresses:
            if nid == node_id:
                return raft, client
        return None

    def with_addresses(self, addresses: dict[NodeId, tuple[str, str]]) -> Membership:
        """The same members with these addresses (entries for non-members are dropped)."""
        members = set(self.members())
        rows = tuple(
            (nid, raft, client) for nid, (raft, client) in sorted(addresses.items())
            if nid in members
        )
        return Membership(self.voters, self.learners, rows, self.max_id)

    def apply(self, change: ConfChange) -> Membership:
        """The membership after `change`.

        Raises:
            ConfChangeError: UNKNOWN_MEMBER, ALREADY_MEMBER, ID_RETIRED, NOT_LEARNER,
                LAST_VOTER or BAD_CHANGE, as the change does not fit this membership.
        """
        nid = change.node_id
        if type(nid) is not int or nid <= 0:
            raise ConfChangeError("BAD_CHANGE", f"node id must be a positive integer, got {nid!r}")
        kind = change.kind
        addrs = {a[0]: (a[1], a[2]) for a in self.addresses}
        if kind is ChangeKind.ADD_LEARNER:
            if nid in self.voters or nid in self.learners:
                raise ConfChangeError("ALREADY_MEMBER", f"node {nid} is already a member")
            if nid <= self.max_id:
                raise ConfChangeError(
                    "ID_RETIRED",
                    f"node id {nid} was given before (ids up to {self.max_id} were); ids are "
                    f"never reused: use {self.max_id + 1} or higher",
                )
            if not change.raft_addr or not change.client_addr:
                raise ConfChangeError("BAD_CHANGE", "a new member needs a raft and a client address")
            addrs[nid] = (change.raft_addr, change.client_addr)
            return Membership(
                self.voters, tuple(sorted((*self.learners, nid))), (), nid
            ).with_addresses(addrs)
        if kind is ChangeKind.PROMOTE:
            if nid in self.voters:
                raise ConfChangeError("NOT_LEARNER", f"node {nid} is already a voter")
            if nid not in self.learners:
                raise ConfChangeError("UNKNOWN_MEMBER", f"node {nid} is not a member")
            return Membership(
                tuple(sorted((*self.voters, nid))),
                tuple(x for x in self.learners if x != nid),
                self.addresses,
                self.max_id,
            )
        if kind is ChangeKind.REMOVE:
            if nid in self.learners:
                return Membership(
                    self.voters, tuple(x for x in self.learners if x != nid), (), self.max_id
                ).with_addresses(addrs)
            if nid not in self.voters:
                raise ConfChangeError("UNKNOWN_MEMBER", f"node {nid} is not a member")
            if len(self.voters) == 1:
                raise ConfChangeError(
                    "LAST_VOTER", f"node {nid} is the last voter: a cluster needs one"
                )
            return Membership(
                tuple(x for x in self.voters if x != nid), self.learners, (), self.max_id
            ).with_addresses(addrs)
        raise ConfChangeError("BAD_CHANGE", f"unknown change kind {kind!r}")

    # -- the bytes of a CONFIG entry ----------------------------------------------------------
    def encode(self) -> bytes:
        """The data of a CONFIG entry (JSON: the core stays free of codec libraries)."""
        return json.dumps(self.to_plain(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Membership:
        """Read a CONFIG entry's data.

        Raises:
            ValueError: the bytes are not a membership this module wrote.
        """
        try:
            obj = json.loads(bytes(data))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"membership entry is not JSON: {exc}") from None
        return cls.from_plain(obj)

    def to_plain(self) -> dict[str, object]:
        """As plain lists and ints (for CBOR or JSON)."""
        return {
            "voters": list(self.voters),
            "learners": list(self.learners),
            "addresses": [list(a) for a in self.addresses],
            "max_id": self.max_id,
        }

    @classmethod
    def from_plain(cls, obj: object) -> Membership:
        """The inverse of `to_plain`.

        Raises:
            ValueError: `obj` is not a well-formed membership (ids positive and unique, voters
                and learners disjoint, addresses only of members).
        """

        def ids(v: object) -> tuple[NodeId, ...]:
            if type(v) is not list or not all(type(i) is int and i > 0 for i in v):
                raise ValueError(f"membership ids must be positive integers, got {v!r:.80}")
            return tuple(sorted(NodeId(i) for i in v))

        if type(obj) is not dict:
            raise ValueError(f"membership must be a map, got {obj!r:.80}")
        voters = ids(obj.get("voters"))
        learners = ids(obj.get("learners", []))
        max_id = obj.get("max_id", 0)
        rows = obj.get("addresses", [])
        if len(set(voters) | set(learners)) != len(voters) + len(learners):
            raise ValueError("membership ids must be unique, voters and learners disjoint")
        if type(max_id) is not int or max_id < max((*voters, *learners), default=0):
            raise ValueError(f"membership max_id {max_id!r} is below a member's id")
        if type(rows) is not list:
            raise ValueError("membership addresses must be a list")
        members = set(voters) | set(learners)
        addresses = []
        for row in rows:
            if (
                type(row) is not list
                or len(row) != 3
                or row[0] not in members
                or not all(type(x) is str for x in row[1:])
            ):
                raise ValueError(f"malformed membership address {row!r:.80}")
            addresses.append((NodeId(row[0]), row[1], row[2]))
        return cls(voters, learners, tuple(sorted(addresses)), max_id)
