"""A raftq node process: `python -m node --config FILE --id ID` (or `raftq node ...`).

Opens the node's storage (recovering from its snapshot and log), then runs the transport, the
Raft loop, the leader's actors and the client listener in one nursery. SIGTERM or SIGINT stops
it cleanly: a leader first hands leadership to its most caught-up peer (thesis 3.10) so that
clients see no election timeout. Data that cannot be read stops it with one clear line.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
from typing import Any

import trio

from node import config as config_mod
from node import machine
from node.actors import ActorSystem
from node.app import QueueApp
from node.config import ClusterConfig, ConfigError
from node.marker import MARK_FILE_NAME, MarkerFile
from node.raft import Config as RaftConfig
from node.raft import (
    DurabilityMark,
    HardState,
    Message,
    NodeId,
    RaftNode,
    Ready,
    Standing,
    assess_durability,
    mark_of,
)
from node.raft_loop import RaftLoop
from node.server import ClientServer
from node.storage import RocksStorage, StorageError
from node.transport import Transport

logger = logging.getLogger("raftq.node")


class Node:
    """One node's parts, wired together. `run()` serves until cancelled or signalled."""

    def __init__(self, cfg: ClusterConfig, node_id: int, *, force_voter: bool = False) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.force_voter = force_voter
        nc = cfg.node(node_id)
        nc.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = RocksStorage.open(
            nc.data_dir / "raft",
            cluster_id=cfg.cluster_id,
            node_id=node_id,
            voters=tuple(sorted(cfg.nodes)),
        )
        try:
            self.marker = MarkerFile(nc.data_dir / MARK_FILE_NAME, cfg.cluster_id, node_id)
            mark, repair_reason = self._check_durability()
        except BaseException:
            self.storage.close()
            raise
        snap = self.storage.snapshot()
        try:
            state = machine.restore(snap.data) if snap.meta.index > 0 else machine.new_state()
        except machine.SnapshotError as exc:
            raise StorageError(
                f"database {self.storage.path}: snapshot at index {snap.meta.index} does not "
                f"decode: {exc}"
            ) from None
        self.core = RaftNode(
            RaftConfig(
                NodeId(node_id),
                election_ticks=cfg.election_ticks,
                heartbeat_ticks=cfg.heartbeat_ticks,
                max_append_entries=4096,
                max_append_bytes=4 << 20,
                max_inflight_appends=64,
                max_snapshot_chunk_bytes=1 << 20,
            ),
            self.storage,
            random.Random(),
            repair_reason=repair_reason,
        )
        self.inbound_send, self.inbound_receive = trio.open_memory_channel[Message](16384)
        self.transport = Transport(
            node_id,
            cfg.cluster_id,
            cfg.secret,
            nc.raft_addr,
            cfg.peer_dial_addrs(node_id),
            self.inbound_send,
            on_peer_lost=self._peer_lost,  # the loop exists by the time a peer can be lost
        )
        self.app = QueueApp(state)
        self.loop = RaftLoop(
            self.core,
            self.storage,
            self.transport,
            self.app,
            tick_s=cfg.tick_ms / 1000,
            snapshot_entries=cfg.snapshot_entries,
            marker=self.marker,
            mark=mark,
        )
        self.actors = ActorSystem(self.loop)
        self.app.sink = self.actors
        self.server = ClientServer(
            node_id, cfg, self.loop, self.app, self.actors, self.transport.stats
        )

    def _check_durability(self) -> tuple[DurabilityMark, str | None]:
        """Compare the database with the durability mark; start REPAIRING if state was lost.

        Returns the mark now on disk and why the node lost durable state (None if it did not).
        """
        storage = self.storage
        hard, _ = storage.initial_state()
        mark = self.marker.load()
        fixed, reason = assess_durability(hard, storage, mark)
        if self.force_voter and fixed.standing is not Standing.VOTER:
            logger.warning(
                "node %d: --force-voter: votes at once although it %s; what only the lost "
                "disks held is lost (docs/operations.md, \"Recovery\")",
                self.node_id,
                reason or "has a new, empty database",
            )
            fixed = HardState(fixed.term, fixed.vote, fixed.commit, Standing.VOTER)
            reason = None
        if fixed != hard:
            storage.persist(Ready(fixed, (), None, (), (), (), None, (), must_sync=True))
        if reason is not None:
            logger.warning(
                "node %d lost durable state: %s; it neither votes nor counts towards a quorum "
                "until a leader has repaired it",
                self.node_id,
                reason,
            )
        if mark is None and not storage.created:
            logger.warning(
                "node %d: no durability mark beside its database (%s): a new one is written; "
                "a loss of state before now cannot be seen",
                self.node_id,
                self.marker.path,
            )
        last = storage.last_index()
        current = mark_of(fixed, last, storage.term(last))
        if mark is None or reason is not None or (mark.term, mark.vote, mark.standing) != (
            current.term, current.vote, current.standing
        ):
            self.marker.store(current)
            mark = current
        return mark, reason

    def _peer_lost(self, peer_id: int) -> None:
        self.loop.peer_lost(peer_id)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.transport.run)
                await nursery.start(self.actors.run)
                await nursery.start(self.loop.run, self.inbound_receive)
                await nursery.start(self.server.run)
                nursery.start_soon(self._signals, nursery.cancel_scope)
                logger.info(
                    "node %d serving clients on %s, peers on %s",
                    self.node_id,
                    config_mod.format_addr(self.cfg.node(self.node_id).client_addr),
                    config_mod.format_addr(self.cfg.node(self.node_id).raft_addr),
                )
                task_status.started()
        finally:
            self.storage.close()

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                logger.info("signal %s: stopping", signal.Signals(sig).name)
                await self.hand_over()
                scope.cancel()
                return

    async def hand_over(self, timeout_s: float = 2.0) -> None:
        """If leading, transfer leadership and wait (up to `timeout_s`) until it moved."""
        if not self.core.is_leader:
            return
        target = self.loop.transfer_leadership()
        if target is None:
            return
        logger.info("handing leadership to node %d", target)
        with trio.move_on_after(timeout_s):
            while self.core.is_leader:
                await self.loop.role_changed.wait()


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
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s n{args.id} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = config_mod.load(args.config)
        node = Node(cfg, args.id, force_voter=args.force_voter)
    except (ConfigError, StorageError) as exc:
        print(f"raftq node {args.id}: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(node.run)
    except KeyboardInterrupt:
        pass
    return 0
