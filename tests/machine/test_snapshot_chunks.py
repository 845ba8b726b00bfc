"""`snapshot_chunks` streams exactly the canonical encoding of the whole state."""

from __future__ import annotations

import cbor2

from node import machine
from node.machine import _snapshot


def reference_snapshot(state: machine.MachineState) -> bytes:
    s = state
    item = [
        _snapshot.FORMAT_VERSION, s.clock_ms, s.next_message_id, s.next_queue_uid, s.last_index,
        s.last_term,
        [
            [q.uid, q.name, q.options.to_list(), q.totals(), q.retain_mid, q.retain_at_ms,
             [_snapshot._message_item(m, mid) for mid, m in q.messages.items()],
             [[d, q.dedup[d], e] for e, d in q.dedup_order if e > s.clock_ms]]
            for q in (s.queues[n] for n in sorted(s.queues))
        ],
        [[n, list(s.topics[n])] for n in sorted(s.topics)],
    ]
    return cbor2.dumps(item, canonical=True)


def test_chunks_equal_one_canonical_encoding() -> None:
    st = machine.new_state()
    t = 1_000
    for name in ("a", "b", "c"):
        st, _, _ = machine.apply(machine.Meta(1, 1, t), machine.make_create_queue(name), st)
    index = 2
    # Sizes around the slice boundary and the CBOR head size boundaries (23/24, 255/256, 65535).
    for name, n in (("a", 5000), ("b", 23), ("c", 256)):
        for i in range(n):
            index += 1
            cmd = machine.make_enqueue(name, b"m%d" % i, dedup_id=f"d{i}" if i % 3 else None)
            st, reply, _ = machine.apply(machine.Meta(index, 1, t), cmd, st)
            assert not isinstance(reply, machine.ErrorReply), reply
    st, _, _ = machine.apply(machine.Meta(index + 1, 1, t + 5), machine.make_receive("a", "c", 7), st)
    data = machine.snapshot(st)
    assert data == reference_snapshot(st)
    assert machine.digest(machine.restore(data)) == machine.digest(st)
    pieces = list(machine.snapshot_chunks(st))
    assert len(pieces) > 10 and b"".join(pieces) == data


def test_array_heads() -> None:
    for n in (0, 1, 23, 24, 255, 256, 65535, 65536):
        head = _snapshot._array_header(n)
        assert cbor2.dumps([None] * n) == head + b"\xf6" * n
    assert _snapshot._array_header(2**32) == b"\x9b" + (2**32).to_bytes(8, "big")
    assert _snapshot._array_header(2**32 - 1) == b"\x9a\xff\xff\xff\xff"
