"""A tiny hand-driven network of Raft cores for rule-by-rule unit tests (no sockets, no time)."""

from __future__ import annotations

import random
from collections.abc import Callable

from node.raft import (
    Config,
    Entry,
    HardState,
    Index,
    MemoryStorage,
    Message,
    NodeId,
    RaftNode,
    Ready,
    Role,
    Term,
    follow_readies,
    run_sync,
)


class _NetIO:
    """One node's `ReadyIO`: its in-memory disk, the shared outbox, its applied entries."""

    def __init__(self, net: Net, i: int) -> None:
        self.net = net
        self.i = i

    def send(self, msg: Message) -> None:
        self.net.outbox.append(msg)

    async def persist(self, rd: Ready) -> bool:
        st = self.net.storage[self.i]
        st.stage_snapshot(rd.snapshot_chunks)
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        return True

    def apply(self, rd: Ready) -> None:
        self.net.applied[self.i].extend(rd.committed_entries)
        self.net.readies[self.i].append(rd)

    def after_advance(self, rd: Ready) -> None:
        meta = rd.snapshot_received
        if meta is not None:  # installed at once, from what persist assembled
            self.net.nodes[self.i].snapshot_prepared(meta, self.net.storage[self.i].staged_snapshot(meta))


class Net:
    """N cores with in-memory disks. Messages queue in `outbox` until `deliver()`."""

    def __init__(
        self,
        n: int,
        *,
        factory: Callable[[Config, MemoryStorage, random.Random], RaftNode] = RaftNode,
        logs: dict[int, list[int]] | None = None,
        terms: dict[int, int] | None = None,
        **cfg: int | bool,
    ) -> None:
        self.ids = [NodeId(i) for i in range(1, n + 1)]
        self.storage: dict[int, MemoryStorage] = {}
        self.cfg = cfg
        self.factory = factory
        for i in self.ids:
            st = MemoryStorage(tuple(self.ids))
            if logs and i in logs:
                st.append(
                    [Entry(Term(t), Index(k + 1), data=b"x%d" % t) for k, t in enumerate(logs[i])]
                )
            if terms and i in terms:
                st.set_hard_state(HardState(Term(terms[i]), None, Index(0)))
            self.storage[i] = st
        self.nodes: dict[int, RaftNode] = {}
        for i in self.ids:
            self.start(i)
        self.outbox: list[Message] = []
        self.readies: dict[int, list[Ready]] = {i: [] for i in self.ids}
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.ids}
        self.cut: set[int] = set()  # isolated nodes
        self.down: set[int] = set()
        self.delivered: list[Message] = []

    def add(self, i: int) -> RaftNode:
        """A new node `i` with an empty log that knows the current voters (not a member yet):
        what a node started to join an existing cluster looks like."""
        nid = NodeId(i)
        self.ids.append(nid)
        self.storage[nid] = MemoryStorage(tuple(n for n in self.ids if n != nid))
        self.readies[nid] = []
        self.applied[nid] = []
        self.start(nid)
        return self.nodes[nid]

    def start(self, i: int) -> None:
        config = Config(NodeId(i), **self.cfg)  # type: ignore[arg-type]
        self.nodes[i] = self.factory(config, self.storage[i], random.Random(i))

    def crash(self, i: int) -> None:
        self.down.add(i)

    def restart(self, i: int) -> None:
        self.down.discard(i)
        self.start(i)
        self.applied[i] = []

    def drive(self) -> None:
        """Run every live node's Ready loop (node/raft/_driver.py) until it has no Ready."""
        for i in self.ids:
            if i not in self.down:
                run_sync(follow_readies(self.nodes[i], _NetIO(self, i)))

    def deliver(self, rounds: int = 50, drop: Callable[[Message], bool] | None = None) -> int:
        """Deliver messages until quiet; returns how many were delivered."""
        count = 0
        for _ in range(rounds):
            self.drive()
            if not self.outbox:
                break
            batch, self.outbox = self.outbox, []
            for m in batch:
                if m.from_id in self.cut or m.to_id in self.cut or m.to_id in self.down:
                    continue
                if m.from_id in self.down:
                    continue
                if drop is not None and drop(m):
                    continue
                self.delivered.append(m)
                self.nodes[m.to_id].step(m)
                count += 1
        self.drive()
        return count

    def tick(self, i: int, times: int = 1) -> None:
        for _ in range(times):
            self.nodes[i].tick()
        self.drive()

    def tick_all(self, times: int = 1) -> None:
        for _ in range(times):
            for i in self.ids:
                if i not in self.down:
                    self.nodes[i].tick()
            self.deliver()

    def elect(self, i: int) -> RaftNode:
        """Make node i time out and win an election."""
        node = self.nodes[i]
        for _ in range(100):
            node.tick()
            if node.role is not Role.FOLLOWER:
                break
        self.deliver()
        assert node.role is Role.LEADER, f"n{i} did not win: {node.role}"
        return node

    def leaders(self) -> list[int]:
        return [i for i in self.ids if i not in self.down and self.nodes[i].role is Role.LEADER]
