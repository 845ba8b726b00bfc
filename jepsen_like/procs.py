"""Node processes of a run, for trio code: an async face on `cluster.launcher.Launcher`.

The launcher starts `python -m node --config FILE --id ID` per node (output in
`log_dir/n<ID>.log`) and signals only the pids it started. Its calls that wait for a process
(`kill`, `stop`) block, so they run in a worker thread here (`trio.to_thread`), keeping the
harness's proxies and clients running meanwhile. This module adds what the nemesis needs on
top: every pid each node ran under, the exit codes, the process state from /proc (to prove
that SIGSTOP took effect), each node's data directory, and what each process wrote to its log.

A process started with `may_refuse=True` (on data the nemesis damaged) may exit by itself with
status 2 after a `raftq node N: cannot start: ... database ...` line: the node refused its
damaged database, as it should. Such an exit is recorded in `NodeProcess.refusals` and is not
a crash; any other exit of it is.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from cluster.launcher import Launcher, LauncherError, with_node, without_node, write_config
from node.config import ClusterConfig, NodeConfig, format_addr

__all__ = ["REFUSAL_EXIT_CODE", "NodeProcess", "NodeProcs", "process_state"]

logger = logging.getLogger("jepsen_like.procs")

REFUSAL_EXIT_CODE = 2
"""Exit status of a node that cannot start (bad configuration, unusable database)."""


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
    """What the run knows of one node's processes.

    Attributes:
        node_id: the node.
        pids: every pid this node ran under, in order.
        exits: exit codes of the processes that ended (negative: the killing signal).
        killed: pids the run stopped on purpose (SIGKILL by the nemesis, or the final stop).
        log_offsets: pid -> size of the node's log when it started (its output follows).
        may_refuse: pids started on damaged data: they may refuse to start (exit status 2).
        refusals: pid -> the line with which it refused its database.
    """

    node_id: int
    pids: list[int] = field(default_factory=list)
    exits: list[int | None] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    log_offsets: dict[int, int] = field(default_factory=dict)
    may_refuse: set[int] = field(default_factory=set)
    refusals: dict[int, str] = field(default_factory=dict)


class NodeProcs:
    """The node processes of one cluster.

    Args:
        config: the cluster configuration (its `path` is the file every node reads).
        log_dir: where `n<id>.log` files go.
        log_level: the nodes' `--log-level`.
    """

    def __init__(self, config: ClusterConfig, log_dir: Path, log_level: str = "INFO") -> None:
        self.launcher = Launcher(config, log_dir=log_dir, node_args=["--log-level", log_level])
        self.nodes = {i: NodeProcess(i) for i in self.launcher.node_ids}
        self.retired: set[int] = set()
        """Nodes removed from the cluster by a membership fault: never started again."""
        self.joining: dict[int, bool] = {}
        """Nodes added by a membership fault and not yet seen as voters: started with --join
        (and `--learner` when the value is true: the nemesis promotes it)."""
        self._reported: set[int] = set()

    @property
    def config(self) -> ClusterConfig:
        """The configuration the nodes are started with (it changes with the membership)."""
        return self.launcher.config

    @property
    def member_ids(self) -> list[int]:
        """The nodes that belong to the cluster now (every node started, less the retired)."""
        return sorted(set(self.nodes) - self.retired)

    def client_addr(self, node_id: int) -> str:
        """The node's client address, "host:port"."""
        return format_addr(self.config.node(node_id).client_addr)

    def add_node(self, node: NodeConfig, *, learner: bool = False) -> None:
        """Write a new node's entry into the configuration file (atomically) and track it; it
        is started with `--join` until `joining` no longer holds it.

        Args:
            node: its entry (`initial = false`).
            learner: start it with `--learner` too (it does not ask to be promoted).
        """
        assert self.launcher.config.path is not None
        self.launcher.config = write_config(with_node(self.launcher.config, node),
                                            self.launcher.config.path)
        self.nodes.setdefault(node.id, NodeProcess(node.id))
        self.joining[node.id] = learner

    def retire(self, node_id: int) -> None:
        """A membership fault removed the node: take its entry out of the configuration file;
        it is never started again (its process must be stopped already)."""
        self.retired.add(node_id)
        self.joining.pop(node_id, None)
        cfg = self.launcher.config
        if node_id in cfg.nodes and len(cfg.nodes) > 1:
            assert cfg.path is not None
            self.launcher.config = write_config(without_node(cfg, node_id), cfg.path)

    def _join_addr(self, node_id: int) -> str | None:
        """A running member's client address to join through (it redirects to the leader)."""
        for nid in self.member_ids:
            if nid != node_id and self.running(nid) and not self.paused(nid):
                return self.client_addr(nid)
        return None

    def running(self, node_id: int) -> bool:
        """The node has a process (paused or not)."""
        return self.launcher.is_running(node_id)

    def paused(self, node_id: int) -> bool:
        return self.launcher.is_paused(node_id)

    def pid(self, node_id: int) -> int | None:
        return self.launcher.pids.get(node_id)

    def data_dir(self, node_id: int) -> Path:
        """The node's data directory (its database is `raft/` in it)."""
        return Path(self.launcher.config.node(node_id).data_dir)

    async def start(self, node_id: int, *, may_refuse: bool = False) -> int:
        """Start the node's process (it must not be running). Returns its pid.

        Args:
            node_id: the node.
            may_refuse: its data was damaged on purpose: an exit with status 2 and a refusal
                line (`refusal_line`) is not a crash.

        Raises:
            LauncherError: the node is retired (or unknown, or already running).
        """
        if node_id in self.retired:
            raise LauncherError(f"node {node_id} was removed from the cluster: not started")
        try:
            offset = self.launcher.log_path(node_id).stat().st_size
        except OSError:
            offset = 0
        join = self._join_addr(node_id) if node_id in self.joining else None
        pid = self.launcher.start_node(node_id, join=join,
                                       learner=join is not None and self.joining[node_id])
        np = self.nodes[node_id]
        np.pids.append(pid)
        np.log_offsets[pid] = offset
        if may_refuse:
            np.may_refuse.add(pid)
        logger.debug("started node %d as pid %d", node_id, pid)
        return pid

    def output(self, node_id: int, pid: int) -> str:
        """What the node's log received since `pid` started (its own output, and whatever
        later processes of the node wrote after it)."""
        offset = self.nodes[node_id].log_offsets.get(pid, 0)
        try:
            with open(self.launcher.log_path(node_id), "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def refusal_line(self, node_id: int, pid: int) -> str | None:
        """The `raftq node N: cannot start: ...database...` line `pid` wrote, or None."""
        pattern = re.compile(rf"^raftq node {node_id}: cannot start: .*\bdatabase\b.*$", re.M)
        m = pattern.search(self.output(node_id, pid))
        return m.group(0) if m else None

    def exit_code(self, node_id: int, pid: int) -> int | None:
        """The exit status of `pid` once it ended (recorded once in `exits`), else None."""
        if self.pid(node_id) is not None or not self.nodes[node_id].pids:
            return None
        if self.nodes[node_id].pids[-1] != pid:
            return None
        code = self.launcher.exit_code(node_id)
        np = self.nodes[node_id]
        if code is not None and len(np.exits) < len(np.pids):
            np.exits.append(code)
        return code

    def _refused(self, np: NodeProcess, pid: int, code: int) -> bool:
        if pid not in np.may_refuse or code != REFUSAL_EXIT_CODE:
            return False
        line = self.refusal_line(np.node_id, pid)
        if line is None:
            return False
        np.refusals[pid] = line
        return True

    async def kill(self, node_id: int) -> tuple[int | None, int | None]:
        """SIGKILL the node and reap it. Returns (pid, exit code); code -9 proves the kill."""
        pid = self.pid(node_id)
        if pid is None:
            return None, None
        self.nodes[node_id].killed.add(pid)
        code = await trio.to_thread.run_sync(self.launcher.kill, node_id)
        self.nodes[node_id].exits.append(code)
        return pid, code

    async def stop(self, node_id: int, timeout_s: float = 5.0) -> tuple[int | None, int | None]:
        """SIGTERM the node (a leader hands over first), SIGKILL after `timeout_s`, reap it.
        Returns (pid, exit code), (None, None) when it was not running."""
        pid = self.pid(node_id)
        if pid is None:
            return None, None
        self.nodes[node_id].killed.add(pid)
        code = await trio.to_thread.run_sync(
            lambda: self.launcher.stop_node(node_id, timeout_s=timeout_s))
        self.nodes[node_id].exits.append(code)
        return pid, code

    def pause(self, node_id: int) -> int | None:
        """SIGSTOP the node. Returns the pid, or None when not running."""
        pid = self.pid(node_id)
        if pid is not None:
            self.launcher.pause(node_id)
        return pid

    def resume(self, node_id: int) -> int | None:
        """SIGCONT the node. Returns the pid, or None when not running."""
        pid = self.pid(node_id)
        if pid is not None:
            self.launcher.resume(node_id)
        return pid

    def state(self, node_id: int) -> str | None:
        """/proc state letter of the node's current process, None when it has none."""
        pid = self.pid(node_id)
        return process_state(pid) if pid is not None else None

    def unexpected_exits(self) -> list[dict[str, Any]]:
        """Node processes that ended although the run did not stop them (a crash).

        Each is reported once: `{"node_id", "pid", "exit_code", "log_tail"}`.
        """
        found: list[dict[str, Any]] = []
        for nid, np in sorted(self.nodes.items()):
            if not np.pids:
                continue
            pid = np.pids[-1]
            code = self.launcher.exit_code(nid)
            if code is None or pid in np.killed or pid in self._reported:
                continue
            self._reported.add(pid)
            if self._refused(np, pid, code):
                logger.info("node %d (pid %d) refused its damaged database: %s", nid, pid,
                            np.refusals[pid])
                continue
            try:
                lines = self.launcher.log_path(nid).read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            found.append({"node_id": nid, "pid": pid, "exit_code": code,
                          "log_tail": lines[-12:]})
        return found

    async def ensure_running(self) -> list[int]:
        """Resume paused nodes and start the ones that are down (not the retired). Returns the
        ids started."""
        started = []
        for nid in self.member_ids:
            if self.running(nid):
                if self.paused(nid):
                    self.resume(nid)
            else:
                await self.start(nid)
                started.append(nid)
        return started

    async def stop_all(self, grace_s: float = 3.0) -> None:
        """Stop every node the run started: SIGTERM, then SIGKILL after `grace_s`.

        Safe in a `finally`, also when cancelled: it shields itself.
        """
        for np in self.nodes.values():
            np.killed.update(np.pids)
        with trio.CancelScope(shield=True):
            codes = await trio.to_thread.run_sync(lambda: self.launcher.stop(timeout_s=grace_s))
        for nid, code in codes.items():
            if code is not None and self.nodes[nid].pids and len(self.nodes[nid].exits) < len(
                self.nodes[nid].pids
            ):
                self.nodes[nid].exits.append(code)

