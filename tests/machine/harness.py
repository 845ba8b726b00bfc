"""A tiny driver for scenario tests: applies commands with a controllable clock."""

from __future__ import annotations

from typing import Any

import node.machine as m

T0 = 1_700_000_000_000


class Harness:
    """Applies commands one log index at a time and checks invariants after each."""

    def __init__(self, now_ms: int = T0) -> None:
        self.state = m.new_state()
        self.index = 0
        self.now_ms = now_ms
        self.effects: list[m.Effect] = []

    def advance(self, ms: int) -> None:
        self.now_ms += ms

    def run(self, cmd: object, now_ms: int | None = None) -> Any:
        self.index += 1
        meta = m.Meta(self.index, 1, self.now_ms if now_ms is None else now_ms)
        self.state, reply, self.effects = m.apply(meta, cmd, self.state)
        problems = m.check_invariants(self.state)
        assert not problems, problems
        return reply

    def ok(self, cmd: object) -> Any:
        reply = self.run(cmd)
        assert not isinstance(reply, m.ErrorReply), reply
        return reply

    def err(self, cmd: object, code: str) -> m.ErrorReply:
        reply = self.run(cmd)
        assert isinstance(reply, m.ErrorReply), reply
        assert reply.code == code, reply
        return reply

    # Shorthands -----------------------------------------------------------------

    def create(self, name: str = "q", **options: Any) -> Any:
        return self.ok(m.make_create_queue(name, **options))

    def put(self, queue: str = "q", body: bytes = b"x", **kw: Any) -> int:
        reply = self.ok(m.make_enqueue(queue, body, **kw))
        return int(reply["message_id"])

    def get(self, queue: str = "q", n: int = 1, vt: int | None = None) -> list[dict[str, Any]]:
        reply = self.ok(m.make_receive(queue, "c", n, vt))
        return list(reply["messages"])

    def ids(self, queue: str = "q", n: int = 100, vt: int | None = None) -> list[int]:
        return [msg["message_id"] for msg in self.get(queue, n, vt)]

    def stats(self, queue: str = "q") -> dict[str, Any]:
        reply = m.query_queue_stats(self.state, queue, self.now_ms)
        assert not isinstance(reply, m.ErrorReply)
        return reply
