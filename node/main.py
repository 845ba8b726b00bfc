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
from node.config import ClusterConfig, ConfigError
from node.marker import MARK_FILE_NAME, MarkerFile
from node.raft import Message
from node.replica import Replica
from node.storage import RocksStorage, StorageError
from node.transport import Transport

logger = logging.getLogger("raftq.node")


class Node:
    """One node process's parts: RocksDB, the marker file, the TCP transport and the client
    listener around a `Replica` (node/replica.py). `run()` serves until cancelled or signalled.

    Raises:
        StorageError: the database or its durability mark cannot be read.
    """

    def __init__(self, cfg: ClusterConfig, node_id: int, *, force_voter: bool = False) -> None:
        self.cfg = cfg
        self.node_id = node_id
        nc = cfg.node(node_id)
        nc.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = RocksStorage.open(
            nc.data_dir / "raft",
            cluster_id=cfg.cluster_id,
            node_id=node_id,
            membership=cfg.initial_membership(),
        )
        try:
            inbound_send, inbound_receive = trio.open_memory_channel[Message](16384)
            self.transport = Transport(
                node_id,
                cfg.cluster_id,
                cfg.secret,
                nc.raft_addr,
                cfg.peer_dial_addrs(node_id),
                inbound_send,
                on_peer_lost=self._peer_lost,  # the replica exists by the time a peer is lost
            )
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
            )
        except BaseException:
            self.storage.close()
            raise
        self.loop = self.replica.loop
        self.app = self.replica.app
        self.actors = self.replica.actors
        self.server = self.replica.server

    def _peer_lost(self, peer_id: int) -> None:
        self.loop.peer_lost(peer_id)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
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
                task_status.started()
        finally:
            self.storage.close()

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                logger.info("signal %s: stopping", signal.Signals(sig).name)
                await self.replica.hand_over()
                scope.cancel()
                return


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
