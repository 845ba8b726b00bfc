"""Frames and Raft message encoding (node/codec.py)."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.codec import (
    MAX_WIRE_INT,
    FrameDecodeError,
    FrameDecoder,
    FrameTooLarge,
    WireError,
    decode_entry,
    decode_raft_message,
    decode_snapshot_meta,
    encode_entry,
    encode_frame,
    encode_raft_message,
    encode_snapshot_meta,
)
from node.raft._membership import Membership
from node.raft._types import (
    MESSAGE_TYPES,
    AppendEntries,
    Entry,
    EntryKind,
    Heartbeat,
    Index,
    Message,
    NodeId,
    SnapshotMeta,
    Term,
)

from .strategies import messages


def _frames(decoder: FrameDecoder) -> list[object]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def _payload_frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


# -- frames ---------------------------------------------------------------------------------


def test_frame_round_trip_many_in_one_feed() -> None:
    objs = [1, b"x", "text", [1, [2, 3]], {"k": b"v"}, False, True, [], 0]
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_frame(o) for o in objs))
    assert _frames(decoder) == objs
    assert decoder.next_frame() is None
    assert decoder.buffered_bytes == 0


def test_frame_split_at_every_byte() -> None:
    objs = [[1, 2, b"abc" * 50], {"a": 1}, b""]
    data = b"".join(encode_frame(o) for o in objs)
    decoder = FrameDecoder()
    out: list[object] = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        out.extend(_frames(decoder))
    assert out == objs


@given(st.lists(st.binary(max_size=300), max_size=20), st.data())
def test_frames_survive_any_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    out: list[object] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(stream[start:cut])
        start = cut
        out.extend(_frames(decoder))
    assert out == payloads


def test_buffer_is_compacted_as_frames_are_consumed() -> None:
    frame = encode_frame(b"x" * 100)
    decoder = FrameDecoder()
    for _ in range(10_000):
        decoder.feed(frame)
        assert decoder.next_frame() == b"x" * 100
    # Consumed bytes do not pile up: the buffer stays within a few frames.
    assert len(decoder._buf) <= 4 * len(frame)


def test_frame_too_large_is_refused_at_the_header() -> None:
    decoder = FrameDecoder(max_frame_bytes=1000)
    decoder.feed((1001).to_bytes(4, "big"))  # no payload sent yet
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_frame()
    assert info.value.code == "FRAME_TOO_LARGE"
    assert isinstance(info.value, WireError)
    # The error is sticky: the stream is out of sync.
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"more")
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_frame_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_bytes=1000)
    payload = cbor2.dumps(b"y" * 997)
    assert len(payload) == 1000
    decoder.feed(_payload_frame(payload))
    assert decoder.next_frame() == b"y" * 997


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xf6", id="null"),
        pytest.param(b"\xff", id="break"),
        pytest.param(b"\x01\x02", id="trailing-bytes"),
        pytest.param(b"\x82\x01", id="truncated-array"),
        pytest.param(b"\x9b" + (2**60).to_bytes(8, "big"), id="huge-array-claim"),
        pytest.param(b"\x5b" + (2**60).to_bytes(8, "big"), id="huge-bytes-claim"),
        pytest.param(b"\x81" * 1000 + b"\x00", id="deep-nesting"),
        pytest.param(b"\x9f\x01\xff", id="indefinite-array"),
        pytest.param(b"\x62\xff\xfe", id="bad-utf8"),
        pytest.param(cbor2.dumps({1: 2}), id="int-map-key"),
        pytest.param(cbor2.dumps(2**100), id="bignum-tag"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(0, "2020-01-01T00:00:00Z")), id="datetime-tag"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(4, [10**9, 1])), id="decimal-tag"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(35, "(a+)+$")), id="regex-tag"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(28, [1])), id="shareable-tag"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(258, [1])), id="set-tag"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(55799, 1)), id="self-describe-tag"),
        pytest.param(cbor2.dumps(cbor2.CBORTag(999_999, 1)), id="unknown-tag"),
    ],
)
def test_bad_payload_raises_frame_decode_error(payload: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(_payload_frame(payload))
    with pytest.raises(FrameDecodeError) as info:
        decoder.next_frame()
    assert info.value.code == "BAD_FRAME"


@given(st.binary(max_size=200))
def test_garbage_payload_only_ever_raises_wire_error(payload: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(_payload_frame(payload))
    try:
        obj = decoder.next_frame()
    except WireError:
        return
    try:
        decode_raft_message(obj)
    except WireError:
        pass


@given(st.binary(max_size=200))
def test_garbage_stream_only_ever_raises_wire_error(stream: bytes) -> None:
    decoder = FrameDecoder(max_frame_bytes=150)
    decoder.feed(stream)
    try:
        _frames(decoder)
    except WireError:
        pass


# -- Raft messages --------------------------------------------------------------------------


@settings(max_examples=300)
@given(messages)
def test_every_message_round_trips_through_a_frame(msg: Message) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(encode_raft_message(msg)))
    decoded = decode_raft_message(decoder.next_frame())
    assert decoded == msg
    assert type(decoded) is type(msg)


def test_every_message_type_has_a_distinct_tag() -> None:
    tags = set()
    for tag, cls in enumerate(MESSAGE_TYPES):
        fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
        assert "term" in fields and "from_id" in fields and "to_id" in fields
        tags.add(tag)
    assert len(tags) == len(MESSAGE_TYPES)


def test_wire_form_is_compact() -> None:
    msg = Heartbeat(Term(3), NodeId(1), NodeId(2), Index(7))
    assert encode_raft_message(msg) == [MESSAGE_TYPES.index(Heartbeat), 3, 1, 2, 7, 0, 0]
    assert len(encode_frame(encode_raft_message(msg))) == 4 + 8


def test_entry_kind_is_decoded_as_the_enum() -> None:
    noop = Entry(Term(2), Index(1), EntryKind.NOOP)
    msg = AppendEntries(Term(2), NodeId(1), NodeId(2), Index(0), Term(0), (noop,), Index(0))
    decoded = decode_raft_message(encode_raft_message(msg))
    assert isinstance(decoded, AppendEntries)
    assert decoded.entries[0].kind is EntryKind.NOOP


def test_entry_and_meta_helpers_round_trip() -> None:
    entry = Entry(Term(4), Index(9), EntryKind.NORMAL, b"data")
    assert decode_entry(encode_entry(entry)) == entry
    meta = SnapshotMeta(Index(9), Term(4), Membership.of((NodeId(1), NodeId(2), NodeId(3))))
    assert decode_snapshot_meta(encode_snapshot_meta(meta)) == meta


HB = MESSAGE_TYPES.index(Heartbeat)
AE = MESSAGE_TYPES.index(AppendEntries)


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"t": 1}, id="not-a-list"),
        pytest.param([], id="empty"),
        pytest.param([len(MESSAGE_TYPES), 1, 1, 2], id="unknown-tag"),
        pytest.param([-1, 1, 1, 2], id="negative-tag"),
        pytest.param([True, 1, 1, 2, 3], id="bool-tag"),
        pytest.param([HB, 1, 1, 2], id="too-few-fields"),
        pytest.param([HB, 1, 1, 2, 3, 4], id="too-many-fields"),
        pytest.param([HB, True, 1, 2, 3], id="bool-as-term"),
        pytest.param([HB, -1, 1, 2, 3], id="negative-term"),
        pytest.param([HB, MAX_WIRE_INT + 1, 1, 2, 3], id="term-too-large"),
        pytest.param([HB, 1.0, 1, 2, 3], id="float-term"),
        pytest.param([HB, 1, 0, 2, 3], id="node-id-zero"),
        pytest.param([HB, 1, 1, "2", 3], id="str-node-id"),
        pytest.param([HB, 1, 1, 2, None], id="none-commit"),
        pytest.param([AE, 1, 1, 2, 0, 0, [[1, 2, 0, b""]], 0], id="entries-gap"),
        pytest.param([AE, 1, 1, 2, 0, 0, [[1, 1, 0, "text"]], 0], id="entry-data-str"),
        pytest.param([AE, 1, 1, 2, 0, 0, [[1, 1, 9, b""]], 0], id="entry-kind-unknown"),
        pytest.param([AE, 1, 1, 2, 0, 0, [[1, 1, False, b""]], 0], id="entry-kind-bool"),
        pytest.param([AE, 1, 1, 2, 0, 0, [[1, 1, 0]], 0], id="entry-short"),
        pytest.param([AE, 1, 1, 2, 0, 0, [[1, 0, 0, b""]], 0], id="entry-index-zero"),
        pytest.param([AE, 1, 1, 2, 0, 0, (), 0], id="entries-tuple"),
        pytest.param([AE, 1, 1, 2, 0, 0, None, 0], id="entries-none"),
    ],
)
def test_malformed_message_raises_bad_message(obj: object) -> None:
    with pytest.raises(WireError) as info:
        decode_raft_message(obj)
    assert info.value.code == "BAD_MESSAGE"


def test_malformed_install_snapshot_meta() -> None:
    from node.raft._types import InstallSnapshot

    tag = MESSAGE_TYPES.index(InstallSnapshot)
    for meta in ([1, 2], [1, 2, [0]], [1, 2, (1,)], [-1, 2, [1]], [1, None, [1]], "x"):
        with pytest.raises(WireError):
            decode_raft_message([tag, 1, 1, 2, meta, 0, b"", True])
    for chunk, done in ((b"", 1), ("s", True)):
        with pytest.raises(WireError):
            decode_raft_message([tag, 1, 1, 2, [1, 1, [1]], 0, chunk, done])


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode_raft_message(Entry(Term(1), Index(1)))  # type: ignore[arg-type]
