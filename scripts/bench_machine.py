#!/usr/bin/env python
"""Benchmark the queue machine: applies per second and memory per queued message.

Usage: .venv/bin/python scripts/bench_machine.py [--backlog N] [--ops N] [--body-bytes N]

Prints, for an empty queue and for a queue holding a backlog of N messages
(1,000,000 by default): enqueue, receive and ack applies per second (each measured
separately over --ops applies, commands pre-built so only `apply` is timed), a mixed
enqueue+receive+ack cycle, and the memory the backlog's state takes per message (tracemalloc;
bodies are not in the machine's state: they go to the node's body store, node/bodies.py).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import node.machine as m  # noqa: E402

QUEUE = "bench"


class Runner:
    """Applies commands with increasing index and a clock advancing 1 ms per 100 applies."""

    def __init__(self) -> None:
        self.state = m.new_state()
        self.index = 0
        self.now_ms = 1_700_000_000_000

    def apply(self, cmd: object) -> object:
        self.index += 1
        if self.index % 100 == 0:
            self.now_ms += 1
        self.state, reply, _ = m.apply(m.Meta(self.index, 1, self.now_ms), cmd, self.state)
        return reply


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f} applies/s"


def fill(r: Runner, n: int, body_bytes: int) -> None:
    for i in range(n):
        r.apply(m.make_enqueue(QUEUE, i.to_bytes(8, "big") * (body_bytes // 8)))


def bench_phase(r: Runner, label: str, ops: int, body_bytes: int) -> None:
    body = b"x" * body_bytes
    enq = [m.make_enqueue(QUEUE, body) for _ in range(ops)]
    metas = [m.Meta(r.index + 1 + i, 1, r.now_ms) for i in range(ops)]
    gc.collect()
    t0 = time.perf_counter()
    s = r.state
    for meta, cmd in zip(metas, enq, strict=True):
        s, _, _ = m.apply(meta, cmd, s)
    t_enq = time.perf_counter() - t0
    r.index += ops

    recv = m.make_receive(QUEUE, "bench-consumer", 1, 600_000)
    metas = [m.Meta(r.index + 1 + i, 1, r.now_ms) for i in range(ops)]
    receipts = []
    t0 = time.perf_counter()
    for meta in metas:
        s, reply, _ = m.apply(meta, recv, s)
        receipts.append(reply["messages"][0]["receipt"])  # type: ignore[index]
    t_recv = time.perf_counter() - t0
    r.index += ops

    acks = [m.make_ack(QUEUE, rc) for rc in receipts]
    metas = [m.Meta(r.index + 1 + i, 1, r.now_ms) for i in range(ops)]
    t0 = time.perf_counter()
    for meta, cmd in zip(metas, acks, strict=True):
        s, reply, _ = m.apply(meta, cmd, s)
    t_ack = time.perf_counter() - t0
    r.index += ops

    # Mixed cycle: enqueue, receive, ack, each a separate apply.
    cycles = ops // 3
    t0 = time.perf_counter()
    idx = r.index
    now = r.now_ms
    for i in range(cycles):
        s, _, _ = m.apply(m.Meta(idx + 1, 1, now), enq[i], s)
        s, reply, _ = m.apply(m.Meta(idx + 2, 1, now), recv, s)
        rc = reply["messages"][0]["receipt"]  # type: ignore[index]
        s, _, _ = m.apply(m.Meta(idx + 3, 1, now), m.make_ack(QUEUE, rc), s)
        idx += 3
    t_mix = time.perf_counter() - t0
    r.index = idx
    r.state = s
    problems = m.check_invariants(s) if len(s.queues[QUEUE].messages) < 10_000 else []
    assert not problems, problems
    print(f"[{label}] enqueue  {_rate(ops, t_enq)}")
    print(f"[{label}] receive  {_rate(ops, t_recv)}")
    print(f"[{label}] ack      {_rate(ops, t_ack)}")
    print(f"[{label}] mixed    {_rate(3 * cycles, t_mix)}  (enqueue+receive+ack cycle)")


def memory_per_message(n: int, body_bytes: int) -> None:
    """Trace every allocation the state keeps for n queued messages (bodies are not kept)."""
    gc.collect()
    r = Runner()
    r.apply(m.make_create_queue(QUEUE, dead_letter_queue=None))
    state = r.state
    first_index = r.index + 1
    t0 = r.now_ms
    chunks = body_bytes // 8
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    for i in range(n):
        # A distinct body object and a distinct time (each entry at its own millisecond,
        # so each message keeps its own time int): the worst case, as after decoding a log.
        cmd = m.make_enqueue(QUEUE, i.to_bytes(8, "big") * chunks)
        state, _, _ = m.apply(m.Meta(first_index + i, 1, t0 + i), cmd, state)
    del cmd
    gc.collect()
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(state.queues[QUEUE].messages) == n
    per_msg = (used - base) / n
    print(
        f"[memory] {n:,} queued messages of {body_bytes} B: the machine's state keeps"
        f" {per_msg:,.0f} B per message (headers none; the body is in the body store)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backlog", type=int, default=1_000_000)
    p.add_argument("--ops", type=int, default=200_000)
    p.add_argument("--body-bytes", type=int, default=64)
    p.add_argument("--memory-messages", type=int, default=1_000_000)
    args = p.parse_args()
    print(f"python {sys.version.split()[0]}, body {args.body_bytes} B, {args.ops:,} ops per figure")

    r = Runner()
    r.apply(m.make_create_queue(QUEUE, dead_letter_queue=None))
    bench_phase(r, "empty queue", args.ops, args.body_bytes)

    r = Runner()
    r.apply(m.make_create_queue(QUEUE, dead_letter_queue=None))
    t0 = time.perf_counter()
    fill(r, args.backlog, args.body_bytes)
    t_fill = time.perf_counter() - t0
    print(f"[backlog] filled {args.backlog:,} messages: {_rate(args.backlog, t_fill)}")
    bench_phase(r, f"backlog {args.backlog:,}", args.ops, args.body_bytes)
    del r
    gc.collect()
    memory_per_message(args.memory_messages, args.body_bytes)


if __name__ == "__main__":
    main()
