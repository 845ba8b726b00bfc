"""Bad input at a live node: clear errors with stable codes, and the node keeps serving."""

from __future__ import annotations

import struct
from pathlib import Path

import cbor2
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.config import format_addr

from .inproc import Conn, make_config, running_cluster, wait_leader


def frame_of(obj: object) -> bytes:
    b = cbor2.dumps(obj)
    return struct.pack(">I", len(b)) + b


async def test_bad_input_gets_stable_error_codes(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, max_frame_bytes=64 * 1024)
    async with running_cluster(cfg) as nodes:
        leader = await wait_leader(nodes)
        addr = cfg.node(leader.node_id).client_addr
        c = await Conn.open(addr)
        assert (await c.call("create_queue", {"name": "q"}))["ok"]
        # Unknown operation, wrong types, missing queue, oversized body: clear codes.
        r = await c.call("frobnicate")
        assert r["error"]["code"] == "UNKNOWN_OPERATION"
        r = await c.call("enqueue", {"queue": "q", "body": 12})
        assert r["error"]["code"] == "BAD_REQUEST"
        r = await c.call("enqueue", {"queue": "nope", "body": b"x"})
        assert r["error"]["code"] == "QUEUE_NOT_FOUND"
        assert (await c.call("create_queue", {"name": "small",
                                              "options": {"max_message_bytes": 10}}))["ok"]
        r = await c.call("enqueue", {"queue": "small", "body": b"x" * 100})
        assert r["error"]["code"] == "MESSAGE_TOO_LARGE"
        # Not a request map / no id: BAD_REQUEST, connection stays usable.
        await c.stream.send_all(frame_of([1, 2]))
        r = await c.read_frame()
        assert r["error"]["code"] == "BAD_REQUEST" and r["id"] is None
        await c.stream.send_all(frame_of({"id": 5, "op": 7}))
        r = await c.read_frame()
        assert r["error"]["code"] == "BAD_REQUEST" and r["id"] == 5
        assert (await c.call("ping"))["ok"]
        # node_status: its flags must be booleans and nothing else is taken.
        for args in ({"confirm": "yes"}, {"digest": 1}, {"confirm": True, "bogus": 1}):
            r = await c.call("node_status", args)
            assert r["error"]["code"] == "BAD_REQUEST", (args, r)
        r = await c.call("node_status", {"confirm": True})
        assert r["ok"] and r["result"]["leader_confirmed"] is True, r
        # A follower reports no confirmation, and its NOT_LEADER names the leader and the nodes.
        follower = next(n for nid, n in nodes.items() if nid != leader.node_id)
        f = await Conn.open(cfg.node(follower.node_id).client_addr)
        r = await f.call("node_status", {"confirm": True})
        assert r["ok"] and "leader_confirmed" not in r["result"], r
        r = await f.call("queue_stats", {"name": "q"})
        err = r["error"]
        assert err["code"] == "NOT_LEADER" and err["leader"] == format_addr(addr), err
        assert sorted(err["nodes"]) == sorted(format_addr(nc.client_addr)
                                              for nc in cfg.nodes.values())
        assert "(not the leader)" not in err["message"]
        await f.aclose()
        # A frame over the limit: error frame, then the connection is closed.
        bad = await Conn.open(addr)
        await bad.stream.send_all(struct.pack(">I", 10_000_000) + b"xx")
        r = await bad.read_frame()
        assert r["error"]["code"] == "FRAME_TOO_LARGE"
        try:
            await bad.read_frame(timeout_s=2)
            raise AssertionError("connection left open after FRAME_TOO_LARGE")
        except (EOFError, trio.BrokenResourceError):
            pass
        # Bytes that are not CBOR: BAD_FRAME and closed.
        bad2 = await Conn.open(addr)
        await bad2.stream.send_all(struct.pack(">I", 4) + b"\xff\xff\xff\xff")
        r = await bad2.read_frame()
        assert r["error"]["code"] == "BAD_FRAME"
        # A request just before garbage on the same connection is still answered.
        bad3 = await Conn.open(addr)
        await bad3.stream.send_all(frame_of({"id": 9, "op": "ping"}) + struct.pack(">I", 1) + b"\xff")
        replies = [await bad3.read_frame(), await bad3.read_frame()]
        assert {r["id"] for r in replies} == {9, None}
        assert [r for r in replies if r["id"] is None][0]["error"]["code"] == "BAD_FRAME"
        # Half a frame and then silence: disconnected after the timeout, with a reason.
        import node.server as server_mod

        server_mod.PARTIAL_FRAME_TIMEOUT_S, saved = 0.3, server_mod.PARTIAL_FRAME_TIMEOUT_S
        try:
            half = await Conn.open(addr)
            await half.stream.send_all(b"\x00\x00")
            r = await half.read_frame(timeout_s=5)
            assert r["error"]["code"] == "BAD_FRAME" and "incomplete" in r["error"]["message"]
        finally:
            server_mod.PARTIAL_FRAME_TIMEOUT_S = saved
        # Everyone else is still served.
        r = await c.call("enqueue", {"queue": "q", "body": b"fine"})
        assert r["ok"], r
        await c.aclose()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    garbage=st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.builds(lambda x: struct.pack(">I", len(x)) + x, st.binary(max_size=200)),
            st.builds(
                lambda obj: (lambda b: struct.pack(">I", len(b)) + b)(cbor2.dumps(obj)),
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
                    | st.binary(max_size=20),
                    lambda ch: st.lists(ch, max_size=4)
                    | st.dictionaries(st.text(max_size=8), ch, max_size=4),
                    max_leaves=12,
                ),
            ),
            st.builds(
                lambda op, args: (lambda b: struct.pack(">I", len(b)) + b)(
                    cbor2.dumps({"id": 1, "op": op, "args": args})
                ),
                st.sampled_from(["enqueue", "receive", "ack", "nack", "create_queue",
                                 "queue_stats", "publish", "redrive", "x"]),
                st.dictionaries(
                    st.sampled_from(["queue", "name", "body", "receipts", "receipt", "max_messages",
                                     "wait_ms", "options", "topic", "dedup_id", "delay_ms"]),
                    st.one_of(st.integers(-5, 10**12), st.text(max_size=10), st.binary(max_size=10),
                              st.lists(st.integers(), max_size=3), st.none(), st.booleans()),
                    max_size=5,
                ),
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_random_bytes_and_frames_never_stop_the_node(tmp_path_factory, garbage: list[bytes]) -> None:
    async def run() -> None:
        cfg = make_config(tmp_path_factory.mktemp("fuzz"), max_frame_bytes=64 * 1024)
        async with running_cluster(cfg) as nodes:
            leader = await wait_leader(nodes)
            addr = cfg.node(leader.node_id).client_addr
            good = await Conn.open(addr)
            assert (await good.call("create_queue", {"name": "q"}))["ok"]
            for blob in garbage:
                c = await Conn.open(addr)
                await c.stream.send_all(blob)
                # Read whatever comes back for a moment; every reply must be a well-formed map.
                with trio.move_on_after(0.2):
                    while True:
                        try:
                            f = await c.read_frame()
                        except (EOFError, trio.BrokenResourceError):
                            break
                        assert isinstance(f, dict) and ("ok" in f), f
                        if not f["ok"]:
                            assert isinstance(f["error"]["code"], str)
                await c.aclose()
            r = await good.call("enqueue", {"queue": "q", "body": b"still here"})
            assert r["ok"], r
            r = await good.call("receive", {"queue": "q", "consumer": "c"})
            assert r["result"]["messages"][0]["body"] == b"still here"
            await good.aclose()

    trio.run(run)
