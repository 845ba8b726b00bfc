"""Client requests (`command_from_wire`) and log encoding (`encode_command`/`decode_command`)."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import node.machine as m

from .harness import Harness

VALID: list[tuple[str, dict[str, Any] | None, m.Command]] = [
    ("create_queue", {"name": "q"}, m.make_create_queue("q")),
    (
        "create_queue",
        {
            "name": "q",
            "options": {
                "visibility_timeout_ms": 5,
                "max_deliveries": 0,
                "dead_letter_queue": None,
                "retention_ms": 60_000,
                "max_message_bytes": 10,
                "max_length": 5,
                "overflow": "drop_head",
                "dedup_window_ms": 0,
                "delay_ms": 7,
                "fifo": True,
            },
        },
        m.make_create_queue(
            "q",
            visibility_timeout_ms=5,
            max_deliveries=0,
            dead_letter_queue=None,
            retention_ms=60_000,
            max_message_bytes=10,
            max_length=5,
            overflow="drop_head",
            dedup_window_ms=0,
            delay_ms=7,
            fifo=True,
        ),
    ),
    (
        "create_queue",
        {"name": "q", "options": {"dead_letter_queue": "dl"}},
        m.make_create_queue("q", dead_letter_queue="dl"),
    ),
    ("delete_queue", {"name": "q"}, m.make_delete_queue("q")),
    ("purge_queue", {"name": "q"}, m.make_purge_queue("q")),
    ("list_queues", None, m.make_list_queues()),
    ("list_queues", {}, m.make_list_queues()),
    ("queue_stats", {"name": "q"}, m.make_queue_stats("q")),
    ("enqueue", {"queue": "q", "body": b"x"}, m.make_enqueue("q", b"x")),
    (
        "enqueue",
        {
            "queue": "q",
            "body": b"x",
            "headers": {"a": "b"},
            "dedup_id": "d",
            "delay_ms": 5,
            "ttl_ms": 9,
            "group": "g",
        },
        m.make_enqueue("q", b"x", {"a": "b"}, dedup_id="d", delay_ms=5, ttl_ms=9, group="g"),
    ),
    (
        "enqueue_batch",
        {"queue": "q", "messages": [{"body": b"1"}, {"body": b"2", "group": "g"}]},
        m.make_enqueue_batch("q", [m.make_message(b"1"), m.make_message(b"2", group="g")]),
    ),
    ("receive", {"queue": "q", "consumer": "c"}, m.make_receive("q", "c")),
    (
        "receive",
        {"queue": "q", "consumer": "c", "max_messages": 10, "visibility_timeout_ms": 0},
        m.make_receive("q", "c", 10, 0),
    ),
    ("ack", {"queue": "q", "receipts": ["1:1", "2:1"]}, m.make_ack("q", ["1:1", "2:1"])),
    ("nack", {"queue": "q", "receipt": "1:1"}, m.make_nack("q", "1:1")),
    (
        "nack",
        {"queue": "q", "receipt": "1:1", "delay_ms": 5, "reject": True},
        m.make_nack("q", "1:1", 5, True),
    ),
    (
        "change_visibility",
        {"queue": "q", "receipt": "1:1", "timeout_ms": 50},
        m.make_change_visibility("q", "1:1", 50),
    ),
    ("redrive", {"dlq": "q.dlq"}, m.make_redrive("q.dlq")),
    (
        "redrive",
        {"dlq": "q.dlq", "target": "q", "max_messages": 5},
        m.make_redrive("q.dlq", "q", 5),
    ),
    ("create_topic", {"name": "t"}, m.make_create_topic("t")),
    ("delete_topic", {"name": "t"}, m.make_delete_topic("t")),
    ("subscribe", {"topic": "t", "queue": "q"}, m.make_subscribe("t", "q")),
    ("unsubscribe", {"topic": "t", "queue": "q"}, m.make_unsubscribe("t", "q")),
    ("publish", {"topic": "t", "body": b"x"}, m.make_publish("t", b"x")),
    ("list_topics", {}, m.make_list_topics()),
]


@pytest.mark.parametrize(("op", "args", "expected"), VALID)
def test_command_from_wire_builds_commands(op: str, args: Any, expected: m.Command) -> None:
    assert m.command_from_wire(op, args) == expected


def test_every_operation_is_covered() -> None:
    assert {op for op, _, _ in VALID} == set(m.OPERATIONS)
    assert "tick" not in m.OPERATIONS


BAD: list[tuple[object, object, str]] = [
    (5, {}, m.BAD_REQUEST),
    ("tick", {"now_ms": 5}, m.UNKNOWN_OPERATION),
    ("frobnicate", {}, m.UNKNOWN_OPERATION),
    ("list_queues", [], m.BAD_REQUEST),
    ("list_queues", {"extra": 1}, m.BAD_REQUEST),
    ("create_queue", {}, m.BAD_REQUEST),
    ("create_queue", {"name": "bad name"}, m.BAD_REQUEST),
    ("create_queue", {"name": "q", "options": []}, m.BAD_REQUEST),
    ("create_queue", {"name": "q", "options": {"colour": "red"}}, m.BAD_REQUEST),
    ("create_queue", {"name": "q", "options": {"retention_ms": None}}, m.BAD_REQUEST),
    ("create_queue", {"name": "q", "options": {"retention_ms": "1"}}, m.BAD_REQUEST),
    ("create_queue", {"name": "q", "options": {"retention_ms": 5}}, m.BAD_REQUEST),
    ("create_queue", {"name": "q", "options": {"fifo": "yes"}}, m.BAD_REQUEST),
    ("create_queue", {"name": "q", "options": {"overflow": None}}, m.BAD_REQUEST),
    ("create_queue", {"name": "q", "options": {"max_length": 1.0}}, m.BAD_REQUEST),
    ("create_queue", {"name": "q", "options": {"dead_letter_queue": 3}}, m.BAD_REQUEST),
    ("enqueue", {"queue": "q"}, m.BAD_REQUEST),
    ("enqueue", {"queue": "q", "body": "text"}, m.BAD_REQUEST),
    ("enqueue", {"queue": "q", "body": b"x", "headers": {"a": 1}}, m.BAD_REQUEST),
    ("enqueue", {"queue": "q", "body": b"x", "headers": []}, m.BAD_REQUEST),
    ("enqueue", {"queue": "q", "body": b"x", "delay_ms": "5"}, m.BAD_REQUEST),
    ("enqueue", {"queue": "q", "body": b"x", "ttl_ms": 0}, m.BAD_REQUEST),
    ("enqueue", {"queue": "q", "body": b"x", "group": 5}, m.BAD_REQUEST),
    ("enqueue", {"queue": "q", "body": b"x", "bogus": 5}, m.BAD_REQUEST),
    ("enqueue", {"queue": 5, "body": b"x"}, m.BAD_REQUEST),
    ("enqueue_batch", {"queue": "q", "messages": {}}, m.BAD_REQUEST),
    ("enqueue_batch", {"queue": "q", "messages": []}, m.BAD_REQUEST),
    ("enqueue_batch", {"queue": "q", "messages": [b"x"]}, m.BAD_REQUEST),
    ("enqueue_batch", {"queue": "q", "messages": [{"body": b"x", "x": 1}]}, m.BAD_REQUEST),
    ("enqueue_batch", {"queue": "q", "messages": [{"body": b"x"}] * 101}, m.BATCH_TOO_LARGE),
    ("receive", {"queue": "q"}, m.BAD_REQUEST),
    ("receive", {"queue": "q", "consumer": "c", "max_messages": 0}, m.BAD_REQUEST),
    ("receive", {"queue": "q", "consumer": "c", "max_messages": True}, m.BAD_REQUEST),
    ("receive", {"queue": "q", "consumer": "c", "visibility_timeout_ms": -1}, m.BAD_REQUEST),
    ("ack", {"queue": "q", "receipts": "1:1"}, m.BAD_REQUEST),
    ("ack", {"queue": "q", "receipts": [1]}, m.BAD_REQUEST),
    ("ack", {"queue": "q", "receipts": ["1:1"] * 101}, m.BATCH_TOO_LARGE),
    ("nack", {"queue": "q", "receipt": "1:1", "reject": "yes"}, m.BAD_REQUEST),
    ("nack", {"queue": "q", "receipt": None}, m.BAD_REQUEST),
    ("change_visibility", {"queue": "q", "receipt": "1:1"}, m.BAD_REQUEST),
    ("redrive", {"dlq": "q", "target": 5}, m.BAD_REQUEST),
    ("redrive", {"dlq": "q", "max_messages": 10_001}, m.BAD_REQUEST),
    ("subscribe", {"topic": "t"}, m.BAD_REQUEST),
    ("publish", {"topic": "t", "body": b"x", "headers": {"a": "b"}, "ttl_ms": -1}, m.BAD_REQUEST),
]


@pytest.mark.parametrize(("op", "args", "code"), BAD)
def test_command_from_wire_rejects(op: object, args: object, code: str) -> None:
    reply = m.command_from_wire(op, args)
    assert isinstance(reply, m.ErrorReply), reply
    assert reply.code == code
    assert reply.message


# --- log encoding ---------------------------------------------------------------------

names = st.sampled_from(["q", "a.b-c_9"])
opt_ints = st.one_of(st.none(), st.integers(0, 10**6))
hdrs = st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=3)
messages = st.builds(
    m.make_message,
    st.binary(max_size=20),
    hdrs,
    dedup_id=st.one_of(st.none(), st.text(min_size=1, max_size=5)),
    delay_ms=opt_ints,
    ttl_ms=opt_ints,
    group=st.one_of(st.none(), st.text(min_size=1, max_size=5)),
)
commands = st.one_of(
    st.builds(
        m.make_create_queue,
        names,
        visibility_timeout_ms=st.integers(0, 10**6),
        dead_letter_queue=st.sampled_from([None, "d", m.DEFAULT_DLQ]),
        max_length=opt_ints,
        fifo=st.booleans(),
    ),
    st.builds(m.make_delete_queue, names),
    st.builds(m.make_purge_queue, names),
    st.just(m.make_list_queues()),
    st.builds(m.make_queue_stats, names),
    st.builds(
        m.make_enqueue,
        names,
        st.binary(max_size=20),
        hdrs,
        dedup_id=st.one_of(st.none(), st.text(max_size=5)),
        delay_ms=opt_ints,
        ttl_ms=opt_ints,
        group=st.one_of(st.none(), st.text(max_size=5)),
    ),
    st.builds(m.make_enqueue_batch, names, st.lists(messages, min_size=1, max_size=3)),
    st.builds(m.make_receive, names, st.text(max_size=5), st.integers(1, 100), opt_ints),
    st.builds(m.make_ack, names, st.lists(st.text(max_size=8), min_size=1, max_size=3)),
    st.builds(m.make_nack, names, st.text(max_size=8), st.integers(0, 100), st.booleans()),
    st.builds(m.make_change_visibility, names, st.text(max_size=8), st.integers(0, 100)),
    st.builds(m.make_redrive, names, st.one_of(st.none(), names), st.integers(1, 100)),
    st.builds(m.make_create_topic, names),
    st.builds(m.make_delete_topic, names),
    st.builds(m.make_subscribe, names, names),
    st.builds(m.make_unsubscribe, names, names),
    st.builds(
        m.make_publish, names, st.binary(max_size=20), hdrs, dedup_id=st.none(), group=st.none()
    ),
    st.just(m.make_list_topics()),
    st.builds(m.make_tick, st.integers(0, 2**62)),
)


@settings(max_examples=300)
@given(commands)
def test_encode_decode_round_trip(cmd: m.Command) -> None:
    data = m.encode_command(cmd)
    assert m.decode_command(data) == cmd


def test_encoding_is_compact_and_positional() -> None:
    data = m.encode_command(m.make_enqueue("orders", b"hello"))
    assert cbor2.loads(data) == [6, "orders", b"hello", {}, None, None, None, None]
    assert len(data) == 20


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_decode_never_raises_on_garbage(data: bytes) -> None:
    result = m.decode_command(data)
    if isinstance(result, m.ErrorReply):
        assert result.code in (m.BAD_REQUEST, m.UNKNOWN_OPERATION)
    else:
        # Whatever decodes, apply answers without raising.
        h = Harness()
        h.run(result)


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ([], m.BAD_REQUEST),
        ({"op": 1}, m.BAD_REQUEST),
        (["enqueue"], m.BAD_REQUEST),
        ([99], m.UNKNOWN_OPERATION),
        ([6, "q"], m.BAD_REQUEST),
        ([1, "q", [1, 2]], m.BAD_REQUEST),
        ([1, "q", "opts"], m.BAD_REQUEST),
        ([7, "q", "entries"], m.BAD_REQUEST),
        ([7, "q", [[b"x"]]], m.BAD_REQUEST),
        ([9, "q", "1:1"], m.BAD_REQUEST),
    ],
)
def test_decode_rejects_bad_shapes(item: object, code: str) -> None:
    result = m.decode_command(cbor2.dumps(item))
    assert isinstance(result, m.ErrorReply) and result.code == code


def test_decode_rejects_undecodable_bytes() -> None:
    for data in (b"", b"\xff", b"\x9f", b"\x5a\xff\xff\xff\xff"):
        result = m.decode_command(data)
        assert isinstance(result, m.ErrorReply) and result.code == m.BAD_REQUEST


def test_decoded_command_with_wrong_types_is_answered_by_apply() -> None:
    result = m.decode_command(cbor2.dumps([8, "q", 5, "many", None]))
    assert isinstance(result, m.Receive)
    h = Harness()
    h.err(result, m.BAD_REQUEST)


def test_encode_refuses_non_commands() -> None:
    with pytest.raises(TypeError):
        m.encode_command("enqueue")  # type: ignore[arg-type]
