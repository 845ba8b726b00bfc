"""A tiny driver for scenario tests: applies commands with a controllable clock.

Bodies are kept as a node keeps them, outside the state: `Bodies` realises the machine's
`StoreBodies` effects in a dict and fills receive replies from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import node.machine as m

T0 = 1_700_000_000_000


class Bodies:
    """The simplest body store: a dict from body key to body."""

    def __init__(self) -> None:
        self.by_key: dict[int, bytes] = {}

    def realise(self, effects: list[m.Effect]) -> list[m.Effect]:
        """Apply the `StoreBodies` among `effects`; return the other effects."""
        rest: list[m.Effect] = []
        for e in effects:
            if isinstance(e, m.StoreBodies):
                for key, body in e.puts:
                    assert key not in self.by_key, f"body key {key} stored twice"
                    self.by_key[key] = body
                for key in e.drops:
                    del self.by_key[key]
            else:
                rest.append(e)
        return rest

    def get_many(self, keys: Sequence[int]) -> list[bytes | None]:
        return [self.by_key.get(k) for k in keys]

    def fill(self, reply: Any) -> Any:
        if isinstance(reply, m.ErrorReply):
            return reply
        return m.fill_bodies(reply, self.get_many)

    def check(self, state: m.MachineState) -> None:
        """The store holds exactly the bodies the state refers to."""
        assert sorted(self.by_key) == m.body_keys(state)


class Harness:
    """Applies commands one log index at a time and checks invariants after each."""

    def __init__(self, now_ms: int = T0) -> None:
        self.state = m.new_state()
        self.index = 0
        self.now_ms = now_ms
        self.effects: list[m.Effect] = []
        self.bodies = Bodies()

    def advance(self, ms: int) -> None:
        self.now_ms += ms

    def run(self, cmd: object, now_ms: int | None = None) -> Any:
        self.index += 1
        meta = m.Meta(self.index, 1, self.now_ms if now_ms is None else now_ms)
        self.state, reply, effects = m.apply(meta, cmd, self.state)
        self.effects = self.bodies.realise(effects)
        problems = m.check_invariants(self.state)
        assert not problems, problems
        self.bodies.check(self.state)
        return self.bodies.fill(reply)

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
