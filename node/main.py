"""A raftq node process: `python -m node --config FILE --id ID` (or `raftq node ...`).

Opens the node's storage (recovering from its snapshot and log), then runs the transport, the
Raft loop, the leader's actors and the client listener in one nursery. SIGTERM or SIGINT stops
it cleanly: a leader first hands leadership to its most caught-up peer (thesis 3.10) so that
clients see no election timeout. Data that cannot be read stops it with one clear line.

The transport follows the membership in the replicated log (node/loop_members.py): the node
dials every member (and, while a removal is not committed, the removed node), at the `dial`
override of its configuration entry if any, else at the membership's raft address, else at
the configuration file's; it accepts connections from the members and from the file's nodes.

`--join HOST:PORT` (node/join.py): a node whose database does not exist yet asks the cluster at
HOST:PORT to admit it as a learner, creates its database with the cluster's membership, and
once running asks to be promoted to voter (unless `--learner`).
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
from functools import partial
from typing import Any

import trio

from node import config as config_mod
from node.config import ClusterConfig, ConfigError, parse_addr
from node.disk_alarm import DiskAlarm
from node.join import JoinError, ask_leader, join_cluster, promote_until_voter
from node.marker import MARK_FILE_NAME, MarkerFile
from node.raft import Membership, Message, NodeId
from node.replica import Replica
from node.storage import NoDatabase, RocksStorage, StorageError
from node.transport import Transport

logger = logging.getLogger("raftq.node")

LEADER_CHECK_S = 1.0
"""How often a node checks that it has a link to the leader it follows (`_follow_leader`)."""


class Node:
    """One node process's parts: RocksDB, the marker file, the TCP transport and the client
    listener around a `Replica` (node/replica.py). `run()` serves until cancelled or signalled.

    Args:
        cfg: the cluster configuration.
        node_id: this node (its entry must be in `cfg`).
        force_voter: vote at once even if durable state was lost (docs/operations.md).
        membership: the membership a new database is created with (a joining node's, from the
            cluster); default the configuration's `initial_membership()`. Not used when the
            database exists.
        promote: once running, ask the leader to promote this node while it is a learner
            (`--join` without `--learner`).
        join_addr: the client address it joined through (asked when no leader is known).

    Raises:
        StorageError: the database or its durability mark cannot be read.
    """

    def __init__(
        self,
        cfg: ClusterConfig,
        node_id: int,
        *,
        force_voter: bool = False,
        membership: Membership | None = None,
        promote: bool = False,
        join_addr: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.promote = promote
        self.join_addr = join_addr
        nc = cfg.node(node_id)
        nc.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = RocksStorage.open(
            nc.data_dir / "raft",
            cluster_id=cfg.cluster_id,
            node_id=node_id,
            membership=membership if membership is not None else cfg.initial_membership(),
        )
        self._raft_addrs: dict[int, str] = {}  # every member's raft address seen in the log
        try:
            inbound_send, inbound_receive = trio.open_memory_channel[Message](16384)
            self.transport = Transport(
                node_id,
                cfg.cluster_id,
                cfg.secret,
                nc.raft_addr,
                {},  # set from the membership below, then whenever it changes
                inbound_send,
                on_peer_lost=self._peer_lost,  # the replica exists by the time a peer is lost
            )
            self.disk = DiskAlarm(nc.data_dir, cfg.disk_free_limit_bytes)
            self.replica = Replica(
                cfg,
                node_id,
                self.storage,
                MarkerFile(nc.data_dir / MARK_FILE_NAME, cfg.cluster_id, node_id),
                self.transport,
                inbound_receive,
                rng=random.Random(),
                transport_stats=self.transport.stats,
                force_voter=force_voter,
                on_membership=self._on_membership,
                disk=self.disk,
                snapshot_fork_dir=nc.data_dir,
            )
        except BaseException:
            self.storage.close()
            raise
        self.loop = self.replica.loop
        self.app = self.replica.app
        self.actors = self.replica.actors
        self.server = self.replica.server
        self._warned: set[int] = set()
        self._was_member = True
        self._on_membership(self.loop.membership)

    def _peer_lost(self, peer_id: int) -> None:
        self.loop.peer_lost(peer_id)

    # -- peers follow the membership -------------------------------------------------------
    def _on_membership(self, membership: Membership) -> None:
        """The Raft loop's callback (it must not block): dial the nodes the core talks to."""
        for nid, raft, _ in membership.addresses:
            self._raft_addrs[nid] = raft
        self.transport.set_peers(self.dial_addrs(), accept=self.accepted_ids())
        member = NodeId(self.node_id) in membership.members()
        if member != self._was_member:
            self._was_member = member
            if member:
                logger.info("node %d is a member again", self.node_id)
            else:
                logger.warning(
                    "node %d is not a member of the cluster's membership (voters %s, learners "
                    "%s): it was removed, or is not admitted yet (a node added to a running "
                    "cluster starts with --join HOST:PORT); it does not campaign",
                    self.node_id, list(membership.voters), list(membership.learners),
                )

    def dial_addrs(self) -> dict[int, tuple[str, int]]:
        """Where this node dials each node its core talks to: its entry's `dial` override,
        else the membership's raft address, else the configuration file's."""
        me = self.cfg.node(self.node_id)
        out: dict[int, tuple[str, int]] = {}
        leader = self.loop.view.leader_id
        for pid in sorted({*self.loop.linked_ids, *([leader] if leader is not None else [])}):
            if pid == self.node_id:
                continue
            if pid in me.dial:
                out[pid] = me.dial[pid]
            elif pid in self._raft_addrs:
                try:
                    out[pid] = parse_addr(self._raft_addrs[pid])
                except ConfigError:
                    self._warn(pid, f"its raft address {self._raft_addrs[pid]!r} is not host:port")
            elif pid in self.cfg.nodes:
                out[pid] = self.cfg.nodes[pid].raft_addr
            else:
                self._warn(pid, "neither the membership nor the configuration has its address")
        return out

    def accepted_ids(self) -> set[int]:
        """Nodes allowed to connect: those the core talks to, the file's nodes, and every node
        a membership ever named (a node still catching up replays memberships older than the
        cluster's: it must still hear, and answer, the leader of now)."""
        leader = self.loop.view.leader_id
        extra = [leader] if leader is not None else []
        return {*self.loop.linked_ids, *self.cfg.nodes, *self._raft_addrs, *extra} - {
            self.node_id
        }

    def _warn(self, pid: int, why: str) -> None:
        if pid not in self._warned:
            self._warned.add(pid)
            logger.warning("node %d: cannot dial node %d: %s", self.node_id, pid, why)

    # -- running ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.disk.run)
                await nursery.start(self.transport.run)
                await nursery.start(self.replica.run)
                await nursery.start(self.server.run)
                nursery.start_soon(self._signals, nursery.cancel_scope)
                logger.info(
                    "node %d serving clients on %s, peers on %s",
                    self.node_id,
                    config_mod.format_addr(self.cfg.node(self.node_id).client_addr),
                    config_mod.format_addr(self.cfg.node(self.node_id).raft_addr),
                )
                if self.promote:
                    nursery.start_soon(self._promote)
                nursery.start_soon(self._follow_leader)
                task_status.started()
        finally:
            self.storage.close()

    def _ask_addrs(self) -> list[str]:
        """Client addresses to ask for a change, best first: the leader this node knows of,
        the address it joined through, then every member."""
        addrs = self.server.member_client_addrs()
        lid = self.loop.view.leader_id
        first = [addrs[lid]] if lid is not None and lid in addrs and lid != self.node_id else []
        join = [self.join_addr] if self.join_addr else []
        rest = [a for nid, a in sorted(addrs.items()) if nid != self.node_id]
        return list(dict.fromkeys([*first, *join, *rest]))

    async def _follow_leader(self) -> None:
        """Keep a link to the leader this node follows, also when no membership it holds names
        it (a node still catching up replays old memberships; the leader may have joined
        since): learn its address from the cluster's `members` (asked of the client addresses
        this node knows) and dial it, so that this node's answers reach it."""
        while True:
            with trio.move_on_after(LEADER_CHECK_S):
                await self.loop.role_changed.wait()
            lid = self.loop.view.leader_id
            if lid is None or lid == self.node_id:
                continue
            me = self.cfg.node(self.node_id)
            if lid not in self._raft_addrs and lid not in me.dial and lid not in self.cfg.nodes:
                await self._learn_addresses()
            if lid not in self.transport.peers():
                self._on_membership(self.loop.membership)

    async def _learn_addresses(self) -> None:
        """Ask the cluster for its members' raft addresses (best effort; logged when it fails)."""
        try:
            view = await ask_leader(self._ask_addrs(), "members", timeout_s=LEADER_CHECK_S)
        except JoinError as exc:
            logger.info("node %d: could not ask the members' addresses: %s", self.node_id, exc)
            return
        rows = view.get("members", []) if isinstance(view, dict) else []
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("id"), int) and isinstance(
                row.get("raft_addr"), str
            ):
                self._raft_addrs[row["id"]] = row["raft_addr"]

    async def _promote(self) -> None:
        await promote_until_voter(
            self.node_id,
            lambda: self.loop.membership,
            self._ask_addrs,
            changed=lambda: self.loop.membership_changed,
        )

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                logger.info("signal %s: stopping", signal.Signals(sig).name)
                await self.replica.hand_over()
                scope.cancel()
                return


def has_database(cfg: ClusterConfig, node_id: int) -> bool:
    """Whether the node's database exists (opened and closed again; nothing is created).

    Raises:
        StorageError: it exists but cannot be read.
    """
    nc = cfg.node(node_id)
    try:
        RocksStorage.open(nc.data_dir / "raft", cluster_id=cfg.cluster_id, node_id=node_id,
                          membership=None).close()
    except NoDatabase:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run one node until signalled. Returns the process exit status."""
    p = argparse.ArgumentParser(prog="raftq node", description="Run one raftq node.")
    p.add_argument("--config", required=True, help="cluster configuration file (TOML)")
    p.add_argument("--id", type=int, required=True, help="this node's id in the configuration")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument(
        "--force-voter",
        action="store_true",
        help="vote at once even if this node lost durable state: only to bring back a cluster "
        "whose majority lost its disks, accepting the loss of what only those disks held",
    )
    p.add_argument(
        "--join",
        metavar="HOST:PORT",
        help="join a running cluster through this node's client address: admitted as a "
        "learner, then promoted to voter once caught up (when this node has no database yet; "
        "else it only asks to be promoted while it is a learner)",
    )
    p.add_argument(
        "--learner",
        action="store_true",
        help="with --join: stay a learner (do not ask to be promoted)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s n{args.id} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    prefix = f"raftq node {args.id}"
    if args.learner and not args.join:
        print(f"{prefix}: --learner needs --join", file=sys.stderr)
        return 2
    membership = None
    try:
        cfg = config_mod.load(args.config)
        nc = cfg.node(args.id)
        if args.join:
            parse_addr(args.join, "--join")
            if has_database(cfg, args.id):
                logger.info("node %d already has a database: already a member, not joining "
                            "again (--join %s changes nothing)", args.id, args.join)
            else:
                others = [config_mod.format_addr(n.client_addr) for nid, n in sorted(cfg.nodes.items())
                          if nid != args.id]
                membership = trio.run(
                    partial(join_cluster, others=others),
                    args.id, nc.raft_addr, nc.client_addr, args.join,
                )
        node = Node(cfg, args.id, force_voter=args.force_voter, membership=membership,
                    promote=bool(args.join) and not args.learner, join_addr=args.join)
    except JoinError as exc:
        print(f"{prefix}: cannot join the cluster at {args.join}: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, StorageError) as exc:
        print(f"{prefix}: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(node.run)
    except KeyboardInterrupt:
        pass
    return 0

