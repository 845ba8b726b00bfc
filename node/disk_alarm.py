"""The free-disk alarm: below a floor of free space, a node refuses new sends (`DISK_FULL`).

After RabbitMQ's disk alarm (`disk_free_limit`, publishers blocked while it is set) and
JetStream's `max_bytes`: message bodies live on disk now, so disk is what runs out. A task looks
at the free space of the filesystem that holds the node's data directory every
`CHECK_INTERVAL_S`; while it is below `disk_free_limit_bytes`, the node's client server refuses
`enqueue`, `enqueue_batch` and `publish` with the retryable `DISK_FULL` (clients back off and
retry), while receives, acks, nacks, deletes and purges go on: they are what frees space. The
alarm clears by itself when space returns.

A write that fails anyway (the disk filled faster than the check, or by someone else) is not
acknowledged: RocksDB refuses it whole and the node stops (node/raft_loop.py raises); restarted
once space returns, it recovers from its write-ahead log like after any crash.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

__all__ = ["CHECK_INTERVAL_S", "DiskAlarm"]

logger = logging.getLogger("raftq.node")

CHECK_INTERVAL_S = 0.5
"""How often the free space is looked at."""


class DiskAlarm:
    """Watches the free space of `path`'s filesystem (see the module docstring).

    Args:
        path: the node's data directory.
        limit_bytes: the floor of free space; 0 turns the alarm off.
        free_bytes: returns the free bytes of a path (tests may pass their own).
    """

    def __init__(
        self,
        path: Path,
        limit_bytes: int,
        free_bytes: Callable[[Path], int] | None = None,
    ) -> None:
        self.path = path
        self.limit_bytes = limit_bytes
        self._free_bytes = free_bytes or (lambda p: shutil.disk_usage(p).free)
        self.free = -1  # bytes free at the last look (-1: not looked yet)
        self.raised = False

    def check(self) -> bool:
        """Look at the free space now; return whether the alarm is raised."""
        if self.limit_bytes <= 0:
            return False
        try:
            self.free = self._free_bytes(self.path)
        except OSError as exc:
            logger.warning("cannot read the free space of %s: %s", self.path, exc)
            return self.raised
        raised = self.free < self.limit_bytes
        if raised != self.raised:
            self.raised = raised
            if raised:
                logger.warning(
                    "disk alarm: %d bytes free on %s, below disk_free_limit_bytes %d: new "
                    "sends are refused (DISK_FULL) until space returns",
                    self.free, self.path, self.limit_bytes,
                )
            else:
                logger.info("disk alarm cleared: %d bytes free on %s", self.free, self.path)
        return self.raised

    def refusal(self) -> str | None:
        """Why a new send is refused now, or None when it is not."""
        if not self.raised:
            return None
        return (
            f"{self.free} bytes free on {self.path}, below disk_free_limit_bytes "
            f"{self.limit_bytes}: sends are refused until space returns (receives, acks and "
            f"deletes go on)"
        )

    def status(self) -> dict[str, Any]:
        """For `node_status`: whether it is raised, the free bytes, the floor."""
        return {"disk_alarm": self.raised, "disk_free_bytes": self.free,
                "disk_free_limit_bytes": self.limit_bytes}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Look every `CHECK_INTERVAL_S` until cancelled (the first look before `started`)."""
        self.check()
        task_status.started()
        while True:
            await trio.sleep(CHECK_INTERVAL_S)
            self.check()
