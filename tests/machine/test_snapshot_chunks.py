"""`snapshot_items` streams the snapshot as items, each complete, in bounded slices, and
`restore_items` reads exactly those items (a stream may go on after them)."""

from __future__ import annotations

import io

import cbor2

from node import machine
from node.machine import _snapshot


def _state() -> machine.MachineState:
    st = machine.new_state()
    t = 1_000
    for name in ("a", "b", "c"):
        st, _, _ = machine.apply(machine.Meta(1, 1, t), machine.make_create_queue(name), st)
    index = 2
    # Sizes around the slice boundary (2048) and the CBOR head size boundaries (23/24, 255/256).
    for name, n in (("a", 5000), ("b", 23), ("c", 256)):
        for i in range(n):
            index += 1
            cmd = machine.make_enqueue(name, b"m%d" % i, dedup_id=f"d{i}" if i % 3 else None)
            st, reply, _ = machine.apply(machine.Meta(index, 1, t), cmd, st)
            assert not isinstance(reply, machine.ErrorReply), reply
    st, _, _ = machine.apply(machine.Meta(index + 1, 1, t + 5), machine.make_receive("a", "c", 7), st)
    return st


def test_items_are_complete_and_bounded_and_restore_reads_only_them() -> None:
    st = _state()
    items = list(machine.snapshot_items(st))
    assert b"".join(items) == machine.snapshot(st)
    decoded = [cbor2.loads(item) for item in items]  # each one a complete CBOR item
    slices = [d for d in decoded if d and isinstance(d[0], list)]
    assert max(len(d) for d in slices) == _snapshot.SNAPSHOT_SLICE
    # Three slices of queue a's 5,000 messages; the encoding is canonical.
    assert [len(d) for d in slices[:3]] == [2048, 2048, 904]
    assert all(cbor2.dumps(d, canonical=True) == item for d, item in zip(decoded, items, strict=True))
    # A stream that goes on after the machine's items: restore_items stops at their end.
    fp = io.BytesIO(b"".join(items) + cbor2.dumps("after"))
    decoder = cbor2.CBORDecoder(fp)
    restored = machine.restore_items(decoder.decode)
    assert decoder.decode() == "after"
    assert machine.digest(restored) == machine.digest(st)
    assert machine.body_keys(restored) == machine.body_keys(st) == sorted(
        m.body_key for q in st.queues.values() for m in q.messages.values()
    )
