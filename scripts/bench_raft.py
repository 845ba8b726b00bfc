"""Raft core throughput: 3 in-memory cores in one process, no I/O (scripts/bench raft-core).

The leader proposes batches of B entries (1 and 64 by default) of 100 bytes; every round each
node runs its Ready loop (MemoryStorage append, messages delivered in memory, committed entries
"applied"). Prints committed entries per second for each batch size.
"""

from __future__ import annotations

import argparse
import random
import time

from node.raft import Config, MemoryStorage, NodeId, RaftNode, Role


def bench(batch: int, seconds: float, in_flight: int) -> tuple[float, int]:
    ids = [NodeId(i) for i in (1, 2, 3)]
    stores = {i: MemoryStorage(tuple(ids)) for i in ids}
    nodes = {i: RaftNode(Config(i, max_append_entries=4096, max_inflight_appends=256),
                         stores[i], random.Random(i)) for i in ids}
    outbox: list = []

    def drive() -> int:
        applied = 0
        for i in ids:
            n = nodes[i]
            while n.has_ready():
                rd = n.ready()
                outbox.extend(rd.early_messages)
                st = stores[i]
                st.append(rd.entries)
                if rd.hard_state is not None:
                    st.set_hard_state(rd.hard_state)
                outbox.extend(rd.messages)
                if i == 1:
                    applied += len(rd.committed_entries)
                n.advance(rd)
        return applied

    leader = nodes[NodeId(1)]
    while leader.role is not Role.LEADER:
        leader.tick()
        drive()
        msgs, outbox[:] = list(outbox), []
        for m in msgs:
            nodes[m.to_id].step(m)
    payload = [bytes(100)] * batch
    committed = 0
    proposed = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        while proposed - committed < in_flight * batch:
            leader.propose_many(payload)
            proposed += batch
        committed += drive()
        msgs, outbox[:] = list(outbox), []
        for m in msgs:
            nodes[m.to_id].step(m)
        committed += drive()
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    return committed / elapsed, committed


def main() -> None:
    p = argparse.ArgumentParser(prog="scripts/bench raft-core", description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--batches", default="1,64", help="entries per proposal, comma separated")
    p.add_argument("--in-flight", type=int, default=8, help="proposals outstanding")
    args = p.parse_args()
    print(f"{'entries/proposal':>17} {'committed entries/s':>20} {'total':>10}")
    for b in (int(x) for x in args.batches.split(",")):
        rate, total = bench(b, args.seconds, args.in_flight)
        print(f"{b:>17} {rate:>20,.0f} {total:>10,}")


if __name__ == "__main__":
    main()
