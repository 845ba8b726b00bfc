"""A node joining a running cluster (`raftq node --join HOST:PORT`), and its own promotion.

A new node on another host has a configuration file with the cluster's id and secret and its
own entry; it need not list the others. Before its database exists it asks the cluster (any
node: NOT_LEADER redirects lead to the leader) to admit it as a learner (`add_member`), reads
the membership (`members`), and creates its database with it, so that it knows every member's
address from the start and knows that it is a learner (it never campaigns). Once it runs, the
leader replicates the log to it (repairing it from JOINING to a voter standing as it catches
up); then `promote_until_voter` asks the leader to make it a voter (`promote_member`),
retrying while it is behind.

This is node-side code and talks the client protocol itself (node/codec.py frames, one request
per connection): node/ never imports cluster/ (DESIGN.md, "Rings").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import trio

from node.codec import FrameDecoder, WireError, encode_frame
from node.config import ConfigError, format_addr, parse_addr
from node.raft import Membership, NodeId
from node.transport import Backoff

__all__ = [
    "JoinError",
    "RETRY_CODES",
    "ask",
    "ask_leader",
    "join_cluster",
    "membership_from_members",
    "promote_until_voter",
]

logger = logging.getLogger("raftq.join")

RETRY_CODES = frozenset({
    "NOT_LEADER", "UNAVAILABLE", "OUTCOME_UNKNOWN", "TIMEOUT", "BUSY",
    "CHANGE_IN_PROGRESS", "LEARNER_BEHIND",
})
"""Error codes worth asking again (after a pause, or at once at another node)."""

REQUEST_TIMEOUT_S = 15.0
"""Longest wait for one answer (a change waits for its commit: 10 s on the leader)."""

MAX_FRAME_BYTES = 8 << 20


class JoinError(Exception):
    """The cluster refused (or could not be reached in time); `code` is the last error code
    (`UNREACHABLE` when no node answered), `message` says what happened."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


async def ask(
    addr: str, op: str, args: dict[str, Any] | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S
) -> dict[str, Any]:
    """Send one request to the client port at `addr` and return the reply frame (a map with
    `ok` and `result` or `error`).

    Raises:
        OSError: no connection.
        WireError: the reply is not a frame.
        trio.TooSlowError: no answer within `timeout_s`.
    """
    host, port = parse_addr(addr)
    with trio.fail_after(timeout_s):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            request: dict[str, Any] = {"id": 1, "op": op, "args": args or {}}
            await stream.send_all(encode_frame(request))
            decoder = FrameDecoder(MAX_FRAME_BYTES)
            while (frame := decoder.next_frame()) is None:
                data = await stream.receive_some(256 * 1024)
                if not data:
                    raise WireError("CLOSED", f"{addr} closed the connection")
                decoder.feed(data)
    if not isinstance(frame, dict):
        raise WireError("BAD_FRAME", f"reply from {addr} is not a map")
    return frame


async def ask_leader(
    addrs: Sequence[str],
    op: str,
    args: dict[str, Any] | None = None,
    *,
    timeout_s: float = 60.0,
    retry: frozenset[str] = RETRY_CODES,
    backoff: Backoff | None = None,
) -> Any:
    """Ask the cluster's leader: start at `addrs`, follow NOT_LEADER redirects (its `leader`,
    else the other `nodes`), and retry the codes in `retry` with backoff, up to `timeout_s`.

    Returns:
        The operation's result.

    Raises:
        JoinError: an error not in `retry` (at once), or the last error at the deadline
            (`UNREACHABLE` when no node answered at all).
    """
    known = list(dict.fromkeys(addrs))
    todo = list(known)  # this round: each known node once, redirects first
    tried: set[str] = set()
    backoff = backoff or Backoff(0.1, 1.0)
    last = JoinError("UNREACHABLE", f"no node of {known} answered")
    deadline = trio.current_time() + timeout_s

    async def pause() -> None:
        await trio.sleep(min(backoff.next_delay_s(), max(0.0, deadline - trio.current_time())))

    while trio.current_time() < deadline:
        if not todo:  # every node known was asked this round: pause, then start over
            await pause()
            todo, tried = list(known), set()
            continue
        addr = todo.pop(0)
        tried.add(addr)
        try:
            reply = await ask(addr, op, args, timeout_s=min(
                REQUEST_TIMEOUT_S, max(0.1, deadline - trio.current_time())
            ))
        except (OSError, WireError, trio.TooSlowError, ConfigError) as exc:
            last = JoinError("UNREACHABLE", f"{addr}: {type(exc).__name__}: {exc}")
            continue
        if reply.get("ok"):
            return reply.get("result")
        raw = reply.get("error")
        err: dict[str, Any] = raw if isinstance(raw, dict) else {}
        code, message = str(err.get("code")), str(err.get("message"))
        last = JoinError(code, message)
        if code not in retry:
            raise last
        if code == "NOT_LEADER":
            hint = err.get("leader")
            learned = [n for n in err.get("nodes") or [] if isinstance(n, str)]
            if isinstance(hint, str):
                learned.insert(0, hint)
            for n in learned:
                if n not in known:
                    known.append(n)
            if isinstance(hint, str) and hint not in tried:
                todo = [hint] + [n for n in todo if n != hint]
            todo += [n for n in learned if n not in tried and n not in todo]
            continue
        logger.info("%s: %s: %s; retrying", op, code, message)
        await pause()
        todo, tried = [addr] + [n for n in known if n != addr], set()
    raise last


def membership_from_members(result: Any) -> Membership:
    """The membership a `members` result describes (voters, learners, addresses, max id).

    Raises:
        JoinError: BAD_REPLY when the result is not a well-formed `members` answer.
    """
    try:
        rows = result["members"]
        voters = [NodeId(r["id"]) for r in rows if r["role"] == "voter"]
        learners = [NodeId(r["id"]) for r in rows if r["role"] == "learner"]
        addresses = [
            [r["id"], r["raft_addr"], r["client_addr"]]
            for r in rows
            if isinstance(r.get("raft_addr"), str) and isinstance(r.get("client_addr"), str)
        ]
        return Membership.from_plain({
            "voters": voters, "learners": learners, "addresses": addresses,
            "max_id": result["max_id"],
        })
    except (KeyError, TypeError, ValueError) as exc:
        raise JoinError("BAD_REPLY", f"malformed members answer: {exc}") from None


async def join_cluster(
    node_id: int,
    raft_addr: tuple[str, int],
    client_addr: tuple[str, int],
    join_addr: str,
    *,
    others: Sequence[str] = (),
    timeout_s: float = 60.0,
) -> Membership:
    """Have the cluster at `join_addr` admit this node as a learner and return the membership
    to create its database with (this node a learner of it). `others`: more client addresses
    of the cluster to try (the configuration file's other nodes), so that the join goes on
    when the node at `join_addr` dies meanwhile. A retry after a lost answer is safe: the
    cluster answers a second `add_member` of the same id and addresses with success.

    Raises:
        JoinError: the cluster refused (e.g. ID_RETIRED, ALREADY_MEMBER) or did not answer
            within `timeout_s`.
    """
    args = {"id": node_id, "raft_addr": format_addr(raft_addr),
            "client_addr": format_addr(client_addr)}
    logger.info("joining the cluster at %s as node %d (raft %s, clients %s)",
                join_addr, node_id, args["raft_addr"], args["client_addr"])
    addrs = list(dict.fromkeys([join_addr, *others]))
    added = await ask_leader(addrs, "add_member", args, timeout_s=timeout_s)
    logger.info("admitted as a learner (membership entry %s)", _field(added, "index"))
    result = await ask_leader(addrs, "members", timeout_s=timeout_s)
    membership = membership_from_members(result)
    if not membership.is_learner(NodeId(node_id)):
        raise JoinError(
            "BAD_REPLY", f"node {node_id} is not a learner of the membership the leader "
            f"reported ({membership.to_plain()})"
        )
    logger.info("the cluster's members: voters %s, learners %s (leader %s)",
                list(membership.voters), list(membership.learners), result.get("leader_id"))
    return membership


def _field(result: Any, name: str) -> Any:
    return result.get(name) if isinstance(result, dict) else None


async def promote_until_voter(
    node_id: int,
    membership: Callable[[], Membership],
    addrs: Callable[[], list[str]],
    *,
    changed: Callable[[], trio.Event],
    min_delay_s: float = 0.2,
    max_delay_s: float = 2.0,
) -> bool:
    """Ask the leader to promote this learner until it is a voter (LEARNER_BEHIND,
    CHANGE_IN_PROGRESS, NOT_LEADER and the like are retried with backoff, without end).

    Args:
        node_id: this node.
        membership: the membership this node has now (it learns its promotion from the log).
        addrs: client addresses to ask, best first (the leader it knows of, then the others).
        changed: the event set when this node's membership next changes.
        min_delay_s, max_delay_s: the backoff between attempts.

    Returns:
        True once this node is a voter; False when the cluster refused for good (it stays a
        learner, or it was removed; the reason is logged).
    """
    backoff = Backoff(min_delay_s, max_delay_s)
    nid = NodeId(node_id)
    while True:
        m = membership()
        if m.is_voter(nid):
            logger.info("node %d is a voter", node_id)
            return True
        # Not a learner of its own membership (yet): a node catching up replays memberships
        # older than its admission; the cluster decides (UNKNOWN_MEMBER: it was removed).
        event = changed()
        try:
            result = await ask_leader(addrs(), "promote_member", {"id": node_id},
                                      timeout_s=10.0, retry=frozenset({"NOT_LEADER"}))
        except JoinError as exc:
            if exc.code != "NOT_LEARNER":  # NOT_LEARNER: a voter already, the log says so soon
                if exc.code not in RETRY_CODES and exc.code != "UNREACHABLE":
                    logger.error("node %d: promotion refused: %s; it stays a learner",
                                 node_id, exc)
                    return False
                logger.info("node %d: not promoted yet (%s)", node_id, exc)
            with trio.move_on_after(backoff.next_delay_s()):
                await event.wait()  # or sooner, when the membership changes
            continue
        logger.info("node %d promoted to voter (membership entry %s)", node_id,
                    _field(result, "index"))
        backoff.reset()
