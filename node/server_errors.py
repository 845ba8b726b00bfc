"""The client server's error reply: a stable code, a message, and where to go next.

Split from node/server.py so that its parts (node/server_members.py) share it; import it from
either module.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RETRYABLE", "RequestError"]

RETRYABLE = frozenset({
    "NOT_LEADER", "UNAVAILABLE", "OUTCOME_UNKNOWN", "BUSY", "TIMEOUT",
    "CHANGE_IN_PROGRESS", "LEARNER_BEHIND", "DISK_FULL",
})
"""Codes whose replies say `"retryable": true` (docs/protocol.md, "Errors")."""


class RequestError(Exception):
    """An error reply: stable `code`, a message, the leader's client address when known and,
    for NOT_LEADER, the client addresses of all the cluster's members (`nodes`), so that a
    client that knew only this one can try the others."""

    def __init__(
        self, code: str, message: str, leader: str | None = None,
        nodes: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.leader = leader
        self.nodes = nodes

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "retryable": self.code in RETRYABLE,
            "leader": self.leader,
        }
        if self.nodes is not None:
            wire["nodes"] = self.nodes
        return wire
