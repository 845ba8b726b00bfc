"""Node processes of a run: start, SIGKILL, SIGSTOP/SIGCONT, restart, stop: always by pid.

A small piece of its own (the cluster launcher may not offer pause/resume by pid and per-node
restart with the same configuration): each node is `python -m node --config FILE --id ID`,
its standard error appended to `log_dir/n<ID>.log`. Nothing here finds processes by name; the
run stops exactly the pids it started (`stop_all`, called in a `finally`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trio

__all__ = ["NodeProcess", "NodeProcs", "process_state"]

logger = logging.getLogger("jepsen_like.procs")


def process_state(pid: int) -> str | None:
    """The state letter of `pid` from /proc (R, S, T stopped, Z zombie...), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) S ...": comm may hold spaces or parentheses, so split after the last ')'.
    rest = text[text.rfind(")") + 2 :]
    return rest[:1] or None


@dataclass
class NodeProcess:
    """One node's current process and its history of pids.

    Attributes:
        node_id: the node.
        proc: the running process, or None while down.
        paused: SIGSTOP was sent and no SIGCONT since.
        pids: every pid this node ran under, in order.
        exits: return codes of the processes that ended.
    """

    node_id: int
    proc: trio.Process | None = None
    paused: bool = False
    pids: list[int] = field(default_factory=list)
    exits: list[int | None] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class NodeProcs:
    """The node processes of one cluster.

    Args:
        config_path: the cluster configuration file every node reads.
        node_ids: the nodes.
        log_dir: where `n<id>.log` files go.
        log_level: the nodes' `--log-level`.
    """

    def __init__(
        self, config_path: Path, node_ids: list[int], log_dir: Path, log_level: str = "INFO"
    ) -> None:
        self.config_path = config_path
        self.log_dir = log_dir
        self.log_level = log_level
        self.nodes = {i: NodeProcess(i) for i in node_ids}
        log_dir.mkdir(parents=True, exist_ok=True)

    def command(self, node_id: int) -> list[str]:
        return [
            sys.executable, "-m", "node", "--config", str(self.config_path), "--id",
            str(node_id), "--log-level", self.log_level,
        ]

    async def start(self, node_id: int) -> int:
        """Start the node's process (it must not be running). Returns its pid."""
        np = self.nodes[node_id]
        if np.running:
            raise RuntimeError(f"node {node_id} is already running (pid {np.pid})")
        log = (self.log_dir / f"n{node_id}.log").open("ab")
        try:
            proc = await trio.lowlevel.open_process(
                self.command(node_id), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        np.proc = proc
        np.paused = False
        np.pids.append(proc.pid)
        logger.debug("started node %d as pid %d", node_id, proc.pid)
        return proc.pid

    def signal(self, node_id: int, sig: signal.Signals) -> int | None:
        """Send `sig` to the node's current pid; returns the pid, or None when not running."""
        np = self.nodes[node_id]
        if not np.running or np.proc is None:
            return None
        try:
            os.kill(np.proc.pid, sig)
        except ProcessLookupError:
            return None
        if sig == signal.SIGSTOP:
            np.paused = True
        elif sig == signal.SIGCONT:
            np.paused = False
        return np.proc.pid

    async def wait_exit(self, node_id: int, timeout_s: float = 5.0) -> int | None:
        """Wait until the node's process ends; returns its code (None on timeout)."""
        np = self.nodes[node_id]
        proc = np.proc
        if proc is None:
            return np.exits[-1] if np.exits else None
        with trio.move_on_after(timeout_s):
            code = await proc.wait()
            if np.proc is proc:
                np.proc = None
                np.paused = False
                np.exits.append(code)
            return code
        return None

    async def kill(self, node_id: int, timeout_s: float = 5.0) -> tuple[int | None, int | None]:
        """SIGKILL the node and reap it. Returns (pid, exit code); code -9 proves the kill."""
        np = self.nodes[node_id]
        pid = np.pid
        if pid is None or not np.running:
            return None, None
        self.signal(node_id, signal.SIGKILL)
        code = await self.wait_exit(node_id, timeout_s)
        return pid, code

    def pause(self, node_id: int) -> int | None:
        """SIGSTOP the node. Returns the pid, or None when not running."""
        return self.signal(node_id, signal.SIGSTOP)

    def resume(self, node_id: int) -> int | None:
        """SIGCONT the node. Returns the pid, or None when not running."""
        return self.signal(node_id, signal.SIGCONT)

    def state(self, node_id: int) -> str | None:
        """/proc state letter of the node's current process, None when it has none."""
        pid = self.nodes[node_id].pid
        return process_state(pid) if pid is not None else None

    async def ensure_running(self) -> list[int]:
        """Resume paused nodes and start the ones that are down. Returns the ids started."""
        started = []
        for nid, np in sorted(self.nodes.items()):
            if np.running and np.paused:
                self.resume(nid)
            if np.proc is not None and np.proc.returncode is not None:
                await self.wait_exit(nid, 1.0)
            if not np.running:
                await self.start(nid)
                started.append(nid)
        return started

    async def stop_all(self, grace_s: float = 3.0) -> None:
        """Stop every node this object started: SIGCONT, SIGTERM, then SIGKILL after `grace_s`.

        Safe to call in a `finally`, also when cancelled: it shields itself.
        """
        with trio.CancelScope(shield=True):
            for nid, np in self.nodes.items():
                if np.running:
                    self.signal(nid, signal.SIGCONT)
                    self.signal(nid, signal.SIGTERM)
            with trio.move_on_after(grace_s):
                for nid in self.nodes:
                    await self.wait_exit(nid, grace_s)
            for nid, np in self.nodes.items():
                if np.running:
                    logger.warning("node %d (pid %s) did not stop on SIGTERM: SIGKILL", nid,
                                   np.pid)
                    await self.kill(nid, 5.0)
