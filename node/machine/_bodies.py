"""Where message bodies go in replies: the machine names them by key, the driver fills them in.

The machine keeps no body (node/machine/_state.py): a receive's reply lists each message with
its `body_key`, and the driver that answers the client replaces the keys with the bodies it
reads from its body store (`fill_bodies`), right after the apply, before any later entry can
drop them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class BodyMissing(Exception):
    """The body store has no body under a key the state refers to (a damaged or inconsistent
    store; never expected)."""


def fill_bodies(reply: Any, get_many: Callable[[Sequence[int]], Sequence[bytes | None]]) -> Any:
    """Replace each `body_key` of a receive reply's messages by its `body`, in place.

    Args:
        reply: a reply of `apply` (any command's; only a receive's `{"messages": [...]}`
            has keys).
        get_many: reads the bodies of some keys, in order (None where there is none).

    Returns:
        `reply`, with bodies.

    Raises:
        BodyMissing: a key has no body.
    """
    if type(reply) is not dict:
        return reply
    messages = reply.get("messages")
    if type(messages) is not list or not messages:
        return reply  # not a receive (queue stats count "messages"), or nothing received
    keys = [m["body_key"] for m in messages]
    bodies = get_many(keys)
    for m, body in zip(messages, bodies, strict=True):
        if body is None:
            raise BodyMissing(f"no body under key {m['body_key']} (message {m['message_id']})")
        del m["body_key"]
        m["body"] = body
    return reply
