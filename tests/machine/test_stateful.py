"""Random command sequences against the reference model, with invariants after each step.

Every reply of the machine must equal the model's (error replies: the same code).
After each step: the machine's structural invariants hold (`check_invariants`:
each message in exactly one place, no overdue lease, FIFO heads only in flight,
...); delivery counts only grow; no message is delivered while its lease holds;
FIFO group order holds. A rule snapshots and restores the state midway: the run
must go on with the same replies, effects and digest as a twin that is never restored.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import node.machine as m

from .harness import T0, Bodies
from .model import Model

QUEUES = ["a", "b", "c"]
ALL_QUEUES = QUEUES + ["a.dlq", "b.dlq", "nope"]

queue_names = st.sampled_from(QUEUES)
any_queue = st.sampled_from(QUEUES * 4 + ["a.dlq", "b.dlq", "nope"])
bodies = st.sampled_from([b"", b"x", b"y" * 20])
headers = st.sampled_from([{}, {"h": "v"}])
dedup_ids = st.sampled_from([None, None, "d1", "d2"])
delays = st.sampled_from([None, None, 0, 100, 1000])
ttls = st.sampled_from([None, None, 50, 1000, 100_000])
groups = st.sampled_from([None, "g1", "g2"])
specs = st.builds(
    m.make_message,
    bodies,
    headers,
    dedup_id=dedup_ids,
    delay_ms=delays,
    ttl_ms=ttls,
    group=groups,
)
create_commands = st.builds(
    m.make_create_queue,
    queue_names,
    visibility_timeout_ms=st.sampled_from([0, 100, 1000, 30_000, 30_000]),
    max_deliveries=st.sampled_from([0, 1, 2, 3]),
    dead_letter_queue=st.sampled_from([m.DEFAULT_DLQ, None, "c"]),
    retention_ms=st.sampled_from([60_000, 120_000]),
    max_message_bytes=st.sampled_from([10, 1024 * 1024, 1024 * 1024]),
    max_length=st.sampled_from([None, None, 1, 3]),
    max_length_bytes=st.sampled_from([None, None, 1, 25, 40]),
    overflow=st.sampled_from(["reject_publish", "drop_head"]),
    dedup_window_ms=st.sampled_from([0, 1000, 300_000]),
    delay_ms=st.sampled_from([0, 0, 100]),
    fifo=st.booleans(),
)


class MachineVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = m.new_state()
        self.twin = m.new_state()  # the same commands, never snapshotted
        self.bodies = Bodies()  # bodies are kept outside the state, as a node keeps them
        self.model = Model()
        self.now = T0
        self.index = 0
        self.receipts: list[tuple[str, str]] = []
        self.counts: dict[tuple[str, int], int] = {}
        self.leases: dict[tuple[str, int], int] = {}

    # --- driver ----------------------------------------------------------------------

    def run(self, cmd: Any, skew_ms: int = 0) -> Any:
        self.index += 1
        now = self.now - skew_ms
        meta = m.Meta(self.index, 1, now)
        self.state, reply, effects = m.apply(meta, cmd, self.state)
        self.twin, twin_reply, twin_effects = m.apply(meta, cmd, self.twin)
        assert (reply, effects) == (twin_reply, twin_effects)
        effects = self.bodies.realise(effects)
        reply = self.bodies.fill(reply)
        expected = self.model.apply(cmd, now)
        if isinstance(expected, m.ErrorReply):
            assert isinstance(reply, m.ErrorReply), (cmd, reply, expected)
            assert reply.code == expected.code, (cmd, reply, expected)
        else:
            assert reply == expected, (cmd, reply, expected)
        clock = self.state.clock_ms
        for effect in effects:
            if isinstance(effect, m.ArmTimer):
                assert effect.at_ms > clock
            elif isinstance(effect, m.ReleaseCursor):
                assert m.query_total_messages(self.state) == 0
        if not isinstance(reply, m.ErrorReply):
            self._watch(cmd, reply, clock)
        return reply

    def _watch(self, cmd: Any, reply: Any, clock: int) -> None:
        if isinstance(cmd, m.Receive):
            q = self.model.queues[cmd.queue]
            for msg in reply["messages"]:
                key = (cmd.queue, msg["message_id"])
                # Delivery counts grow by one per delivery, never go down.
                assert msg["delivery_count"] == self.counts.get(key, 0) + 1
                self.counts[key] = msg["delivery_count"]
                # Not delivered while an earlier lease holds.
                assert self.leases.get(key, -1) <= clock
                vt = cmd.visibility_timeout_ms
                self.leases[key] = clock + (q.opts.visibility_timeout_ms if vt is None else vt)
                self.receipts.append((cmd.queue, msg["receipt"]))
                if q.opts.fifo:
                    # FIFO: nothing earlier of its group is left, nothing else of it in flight.
                    group = "" if msg["group"] is None else msg["group"]
                    same = [i for i, x in q.msgs.items() if q.gkey(x) == group]
                    assert min(same) == msg["message_id"]
            del self.receipts[:-50]
        elif isinstance(cmd, m.ChangeVisibility):
            self.leases[(cmd.queue, reply["message_id"])] = reply["visible_at_ms"]
        elif isinstance(cmd, m.Nack):
            self.leases[(cmd.queue, reply["message_id"])] = -1
        elif isinstance(cmd, m.Ack):
            for receipt in cmd.receipts:
                if receipt not in reply["invalid"]:
                    self.leases[(cmd.queue, int(receipt.split(":")[0]))] = -1
        elif isinstance(cmd, (m.DeleteQueue, m.CreateQueue)):
            # A re-created queue starts afresh (ids are never reused anyway).
            pass

    # --- rules ---------------------------------------------------------------------------

    @rule(dt=st.sampled_from([1, 7, 50, 100, 100, 1000, 5000, 30_000, 60_000, 300_000]))
    def advance(self, dt: int) -> None:
        self.now += dt

    @initialize(a=create_commands, b=create_commands, c=create_commands, topic=st.booleans())
    def setup(self, a: m.CreateQueue, b: m.CreateQueue, c: m.CreateQueue, topic: bool) -> None:
        for name, cmd in zip(QUEUES, (a, b, c), strict=True):
            self.run(m.CreateQueue(name, cmd.options))
        if topic:
            self.run(m.make_create_topic("t"))
            self.run(m.make_subscribe("t", "a"))
            self.run(m.make_subscribe("t", "b"))

    @rule(cmd=create_commands, roll=st.integers(0, 3))
    def create_queue(self, cmd: m.CreateQueue, roll: int) -> None:
        if roll == 0:
            self.run(cmd)

    @rule(name=any_queue, purge=st.booleans(), roll=st.integers(0, 7))
    def delete_or_purge(self, name: str, purge: bool, roll: int) -> None:
        if roll == 0:
            self.run(m.make_purge_queue(name) if purge else m.make_delete_queue(name))

    @rule(
        queue=any_queue,
        body=bodies,
        hdrs=headers,
        dedup_id=dedup_ids,
        delay_ms=delays,
        ttl_ms=ttls,
        group=groups,
    )
    def enqueue(self, queue: str, body: bytes, hdrs: dict[str, str], **kw: Any) -> None:
        self.run(m.make_enqueue(queue, body, hdrs, **kw))

    @rule(queue=any_queue, entries=st.lists(specs, min_size=1, max_size=4))
    def enqueue_batch(self, queue: str, entries: list[m.MessageSpec]) -> None:
        self.run(m.make_enqueue_batch(queue, entries))

    @rule(
        queue=any_queue,
        n=st.integers(1, 3),
        vt=st.sampled_from([None, None, None, 0, 100, 5000]),
    )
    def receive(self, queue: str, n: int, vt: int | None) -> None:
        self.run(m.make_receive(queue, "c", n, vt))

    def _receipt(self, data: st.DataObject) -> tuple[str, str]:
        back = data.draw(st.integers(1, min(len(self.receipts), 8)))
        queue, receipt = self.receipts[-back]  # recent receipts are the likely valid ones
        if data.draw(st.integers(0, 9)) == 0:
            queue = data.draw(any_queue)
        if data.draw(st.integers(0, 19)) == 0:
            receipt = data.draw(st.sampled_from(["", "1:0", "x:1", "01:1", "999999:1"]))
        return queue, receipt

    @precondition(lambda self: self.receipts)
    @rule(data=st.data(), n=st.integers(1, 3))
    def ack(self, data: st.DataObject, n: int) -> None:
        picked = [self._receipt(data) for _ in range(n)]
        self.run(m.make_ack(picked[0][0], [r for _, r in picked]))

    @precondition(lambda self: self.receipts)
    @rule(data=st.data(), delay_ms=st.sampled_from([0, 0, 100]), reject=st.booleans())
    def nack(self, data: st.DataObject, delay_ms: int, reject: bool) -> None:
        queue, receipt = self._receipt(data)
        self.run(m.make_nack(queue, receipt, delay_ms, reject))

    @precondition(lambda self: self.receipts)
    @rule(data=st.data(), timeout_ms=st.sampled_from([0, 100, 5000]))
    def change_visibility(self, data: st.DataObject, timeout_ms: int) -> None:
        queue, receipt = self._receipt(data)
        self.run(m.make_change_visibility(queue, receipt, timeout_ms))

    @rule(
        dlq=st.sampled_from(["a.dlq", "b.dlq", "c"]),
        to=st.sampled_from([None, None, "a", "b"]),
        n=st.sampled_from([1, 10]),
    )
    def redrive(self, dlq: str, to: str | None, n: int) -> None:
        self.run(m.make_redrive(dlq, to, n))

    @rule(queue=any_queue, action=st.sampled_from(["create", "subscribe", "unsubscribe"]))
    def topic(self, queue: str, action: str) -> None:
        if action == "create":
            self.run(m.make_create_topic("t"))
        elif action == "subscribe":
            self.run(m.make_subscribe("t", queue))
        else:
            self.run(m.make_unsubscribe("t", queue))

    @rule(body=bodies, dedup_id=dedup_ids, delay_ms=delays, ttl_ms=ttls, group=groups)
    def publish(self, body: bytes, **kw: Any) -> None:
        self.run(m.make_publish("t", body, **kw))

    @rule(queue=any_queue, roll=st.integers(0, 3))
    def reads(self, queue: str, roll: int) -> None:
        if roll:
            return
        self.run(m.make_queue_stats(queue))
        self.run(m.make_list_queues())
        self.run(m.make_list_topics())
        stats = m.query_queue_stats(self.state, queue, self.state.clock_ms)
        assert stats == self.model.do_QueueStats(m.make_queue_stats(queue)) or (
            isinstance(stats, m.ErrorReply)
        )

    @rule(skew_ms=st.sampled_from([0, 0, 5000]))
    def tick(self, skew_ms: int) -> None:
        self.run(m.make_tick(self.now - skew_ms), skew_ms=skew_ms)

    @rule()
    def snapshot_and_restore(self) -> None:
        data = m.snapshot(self.state)
        before = m.digest(self.state)
        self.state = m.restore(data)
        assert m.digest(self.state) == before
        assert m.snapshot(self.state) == data

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def structure_holds(self) -> None:
        problems = m.check_invariants(self.state)
        assert not problems, problems

    @invariant()
    def bodies_are_those_of_the_state(self) -> None:
        self.bodies.check(self.state)

    @invariant()
    def same_digest_as_without_snapshots(self) -> None:
        assert m.digest(self.state) == m.digest(self.twin)

    @invariant()
    def counts_agree_with_model(self) -> None:
        for name, q in self.model.queues.items():
            assert m.query_depth(self.state, name) == len(q.msgs)
        assert sorted(self.state.queues) == sorted(self.model.queues)


MachineVsModel.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMachineVsModel = MachineVsModel.TestCase
