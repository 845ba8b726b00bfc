"""Start, stop and disturb the node processes of a cluster on this host.

`Launcher` runs one `python -m node --config FILE --id N` subprocess per node of any
`ClusterConfig` (the jepsen harness passes configs whose `dial` addresses go through proxies), with
its output in `<log_dir>/n<id>.log`, and gives the faults tests need: stop (SIGTERM), kill
(SIGKILL), pause/resume (SIGSTOP/SIGCONT), restart. It only ever signals processes it started,
by pid.

`local_config` writes (first time) or reads (later) the configuration of a local cluster, so data
survives restarts; `write_pids`/`read_pids` and `stop_recorded` are what `raftq cluster up
--detach` and `raftq cluster down` use: `down` signals a recorded pid only after checking that it
still runs that node's command line (`process_matches`), never by process name.

Membership changes of a local cluster (`raftq cluster add-node/remove-node/replace-node`) edit its
configuration with `local_base_port`, `new_local_node`, `with_node`, `without_node` and
`write_config` (atomic: a temporary file renamed over the old one), and start a new node with
`Launcher.start_node(..., join=ADDR)` (`raftq node --join`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import trio

from cluster.client import AsyncClient, Client
from cluster.errors import RaftqError
from node.config import (
    ClusterConfig,
    ConfigError,
    NodeConfig,
    dumps,
    format_addr,
    load,
    local_cluster,
    write,
)

__all__ = [
    "CONFIG_NAME",
    "PIDS_NAME",
    "Launcher",
    "LauncherError",
    "RecordedNode",
    "local_base_port",
    "local_config",
    "needs_join",
    "new_local_node",
    "process_matches",
    "read_pids",
    "stop_recorded",
    "with_node",
    "without_node",
    "write_config",
    "write_pids",
]

CONFIG_NAME = "cluster.toml"
"""Name of the configuration file in a local cluster's data directory."""

PIDS_NAME = "pids.json"
"""Name of the file recording the running nodes' pids in a local cluster's data directory."""


class LauncherError(Exception):
    """A node could not be started or stopped, or the cluster did not come up; says why."""


def local_config(
    data_dir: Path, *, nodes: int = 3, base_port: int = 7000
) -> tuple[ClusterConfig, bool]:
    """The configuration of the local cluster in `data_dir`, created the first time.

    Args:
        data_dir: directory of the cluster (config, node data, logs, pids).
        nodes: number of nodes, when the configuration is created.
        base_port: client ports are base+1.., raft ports base+101.., when created.

    Returns:
        (configuration, created): `created` is False when `data_dir/cluster.toml` existed and
        was loaded (then `nodes` and `base_port` are not used).

    Raises:
        ConfigError: the existing file is invalid.
    """
    path = data_dir.resolve() / CONFIG_NAME
    if path.exists():
        return load(path), False
    return write(local_cluster(data_dir, nodes=nodes, base_port=base_port), path), True


MAX_LOCAL_ID = 99
"""Highest node id of a local cluster: client ports are base+id and raft ports base+100+id,
so an id of 100 or more would take another node's raft port as its client port."""


def write_config(cfg: ClusterConfig, path: Path) -> ClusterConfig:
    """Write `cfg` to `path` atomically and return it with `path` set.

    The text goes to a temporary file next to `path`, is flushed to disk, and is renamed over
    `path`: a reader (a node starting, another `raftq` command) sees the old file or the new
    one, never half of one.
    """
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(dumps(cfg))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the rename itself, on power loss
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return replace(cfg, path=path)


def local_base_port(cfg: ClusterConfig) -> int:
    """The `--base-port` of a local cluster's configuration.

    The port scheme of `local_cluster` (client port base+id, raft port base+100+id) gives each
    entry that follows it a base; a replaced node keeps its predecessor's ports under a new id,
    so the base most entries agree on is taken.

    Raises:
        LauncherError: no entry follows the scheme, or the entries are on several hosts.
    """
    hosts = {n.client_addr[0] for n in cfg.nodes.values()} | {
        n.raft_addr[0] for n in cfg.nodes.values()}
    bases = Counter(
        n.client_addr[1] - nid for nid, n in cfg.nodes.items()
        if n.raft_addr[1] == n.client_addr[1] + 100
    )
    if len(hosts) != 1 or not bases:
        raise LauncherError(
            f"{cfg.path or 'the configuration'} is not a local cluster's (client port "
            "base+id, raft port base+100+id, one host): add nodes to it with raftq node --join"
        )
    return bases.most_common(1)[0][0]


def _port_free(host: str, port: int) -> bool:
    """Whether a node could listen on (host, port) now: as trio's listener, with SO_REUSEADDR
    (connections of an earlier process in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def new_local_node(
    cfg: ClusterConfig,
    node_id: int,
    *,
    check_free: bool = True,
    members_addrs: Collection[tuple[str, int]] = (),
) -> NodeConfig:
    """The entry of a new node `node_id` of a local cluster (`initial = false`): the ports the
    launcher's scheme gives that id on the cluster's host (or, when another entry holds them,
    the scheme's lowest pair no entry uses), data directory `n<id>` next to the others'.
    `members_addrs`: addresses the cluster's members hold that the file may not list (nodes
    joined from elsewhere); they count as taken too.

    Raises:
        LauncherError: the id is already in the file or too high for the scheme, a port is
            another entry's, or (with `check_free`) something on this host already uses one.
    """
    if node_id in cfg.nodes:
        raise LauncherError(f"node {node_id} is already in {cfg.path}")
    if not 1 <= node_id <= MAX_LOCAL_ID:
        raise LauncherError(
            f"node id {node_id} is over {MAX_LOCAL_ID}, the highest the local port scheme has "
            "room for (ids are never reused): add nodes with raftq node --join instead"
        )
    base = local_base_port(cfg)
    host = next(iter(cfg.nodes.values())).client_addr[0]
    client, raft = (host, base + node_id), (host, base + 100 + node_id)
    taken = {n.client_addr for n in cfg.nodes.values()} | {n.raft_addr for n in cfg.nodes.values()}
    taken |= set(members_addrs)
    if client in taken or raft in taken:
        # A replaced node keeps its old ports under a new id, so the id's own ports may be
        # another entry's: take the scheme's lowest pair that no entry uses.
        for k in range(1, MAX_LOCAL_ID + 1):
            pair = (host, base + k), (host, base + 100 + k)
            if not (pair[0] in taken or pair[1] in taken) and (
                not check_free or (_port_free(*pair[0]) and _port_free(*pair[1]))
            ):
                client, raft = pair
                break
    for addr in (client, raft):
        if addr in taken:
            raise LauncherError(
                f"{format_addr(addr)} is already used by another node of {cfg.path}")
        if check_free and not _port_free(*addr):
            raise LauncherError(
                f"{format_addr(addr)} is in use on this host; the local port scheme gives it to "
                f"node {node_id}: free it first"
            )
    base_dir = (cfg.path.parent if cfg.path is not None else Path.cwd()).resolve()
    return NodeConfig(node_id, raft, client, base_dir / f"n{node_id}", initial=False)


def needs_join(cfg: ClusterConfig) -> list[int]:
    """Nodes added later (`initial = false`) of a cluster being created anew (no node has a
    database yet): they are not in its first membership, so they must ask to be admitted
    (`--join`). A node that lost its database in a cluster that exists needs no --join: it
    comes back as a repairing member under its id (docs/operations.md, "Recovery").

    A database counts as there when its RocksDB directory is (`<data_dir>/raft/CURRENT`):
    nothing is opened or created.
    """
    later = [nid for nid, n in sorted(cfg.nodes.items()) if not n.initial]
    if any((n.data_dir / "raft" / "CURRENT").exists() for n in cfg.nodes.values()):
        return []
    return later


def with_node(cfg: ClusterConfig, node: NodeConfig) -> ClusterConfig:
    """`cfg` with `node`'s entry added (or replacing the entry of the same id)."""
    return replace(cfg, nodes={**cfg.nodes, node.id: node})


def without_node(cfg: ClusterConfig, node_id: int) -> ClusterConfig:
    """`cfg` without node `node_id`'s entry (and without other entries' `dial` for it).

    Raises:
        LauncherError: it is the last entry (a configuration needs one).
    """
    nodes = {
        nid: replace(n, dial={p: a for p, a in n.dial.items() if p != node_id})
        for nid, n in cfg.nodes.items() if nid != node_id
    }
    if not nodes:
        raise LauncherError(f"node {node_id} is the only node of {cfg.path}")
    return replace(cfg, nodes=nodes)


@dataclass(frozen=True)
class RecordedNode:
    """A node process recorded in pids.json.

    Attributes:
        node_id: the node id.
        pid: the process id.
        config_path: the configuration file it was started with (absolute).
    """

    node_id: int
    pid: int
    config_path: Path


def write_pids(path: Path, config_path: Path, pids: Mapping[int, int]) -> None:
    """Record running nodes in `path` (JSON: config path and node id -> pid)."""
    data = {
        "config": str(config_path),
        "nodes": {str(nid): pid for nid, pid in sorted(pids.items())},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def read_pids(path: Path) -> list[RecordedNode]:
    """The nodes recorded in `path`; empty when the file does not exist.

    Raises:
        LauncherError: the file is not a pids file.
    """
    try:
        data = json.loads(path.read_text())
        config_path = Path(data["config"])
        return [
            RecordedNode(int(nid), int(pid), config_path)
            for nid, pid in sorted(data["nodes"].items(), key=lambda kv: int(kv[0]))
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LauncherError(f"{path} is not a valid pids file ({exc})") from None


def _cmdline(pid: int) -> list[str] | None:
    """The command line of a running process, or None when it is gone (or a zombie)."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat.rpartition(")")[2].split()[0] == "Z":
                return None
            raw = (proc / "cmdline").read_bytes()
        except OSError:
            return None
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    if Path("/proc/self").is_dir():  # Linux, and the process does not exist
        return None
    try:  # other Unix: ask ps
        out = subprocess.run(
            ["ps", "-o", "stat=,command=", "-p", str(pid)],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not out:
        return None
    state, _, command = out.partition(" ")
    return None if state.startswith("Z") else command.split()


def process_matches(pid: int, config_path: Path, node_id: int) -> bool:
    """True when `pid` runs the raftq node `node_id` with `config_path`.

    Checks the command line for `-m node` (or `raftq node`), `--config <config_path>` and
    `--id <node_id>`, so that a recycled pid is never signalled.
    """
    args = _cmdline(pid)
    if not args:
        return False

    def value(flag: str) -> str | None:
        for i, arg in enumerate(args):
            if arg == flag and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
        return None

    is_node = any(
        a == "-m" and i + 1 < len(args) and args[i + 1] == "node" for i, a in enumerate(args)
    ) or any(
        Path(a).name == "raftq" and i + 1 < len(args) and args[i + 1] == "node"
        for i, a in enumerate(args)
    )
    cfg = value("--config")
    return (
        is_node
        and value("--id") == str(node_id)
        and cfg is not None
        and Path(cfg).resolve() == config_path.resolve()
    )


def _alive(pid: int) -> bool:
    return _cmdline(pid) is not None


def stop_recorded(
    nodes: Sequence[RecordedNode], *, timeout_s: float = 10.0
) -> dict[int, str]:
    """Stop recorded node processes: SIGTERM each, wait, SIGKILL those still running.

    A pid is signalled only while it still runs that node's command line (`process_matches`).

    Args:
        nodes: the recorded nodes (from `read_pids`).
        timeout_s: how long to wait for all of them after SIGTERM before SIGKILL.

    Returns:
        node id -> what happened: "stopped", "killed", "not running", or
        "pid N runs something else (not signalled)".
    """
    outcome: dict[int, str] = {}
    live: list[RecordedNode] = []
    for n in nodes:
        if not _alive(n.pid):
            outcome[n.node_id] = "not running"
        elif not process_matches(n.pid, n.config_path, n.node_id):
            outcome[n.node_id] = f"pid {n.pid} runs something else (not signalled)"
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(n.pid, signal.SIGCONT)  # a paused node cannot act on SIGTERM
                os.kill(n.pid, signal.SIGTERM)
            live.append(n)
    deadline = time.monotonic() + timeout_s
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        for n in list(live):
            if not _alive(n.pid):
                outcome[n.node_id] = "stopped"
                live.remove(n)
    for n in live:
        if process_matches(n.pid, n.config_path, n.node_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(n.pid, signal.SIGKILL)
            outcome[n.node_id] = "killed"
        else:
            outcome[n.node_id] = "stopped"
    kill_deadline = time.monotonic() + 5.0
    while any(_alive(n.pid) for n in live) and time.monotonic() < kill_deadline:
        time.sleep(0.05)
    return outcome


class Launcher:
    """Node processes of one cluster on this host, started and signalled by pid.

    Usable as a context manager (stops every node on exit)::

        with Launcher(cfg) as launcher:
            launcher.start()            # every node, then waits for a leader
            launcher.kill(2)            # SIGKILL
            launcher.start_node(2)      # restart it (same data directory)

    Attributes:
        config: the cluster configuration.
        config_path: the file the nodes read (`--config`).
        log_dir: where `n<id>.log` files go (appended to across restarts).
    """

    def __init__(
        self,
        config: ClusterConfig,
        *,
        config_path: Path | None = None,
        log_dir: Path | None = None,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        node_args: Sequence[str] = (),
    ) -> None:
        """Prepare to run the nodes of `config` (nothing starts yet).

        Args:
            config: any cluster configuration (e.g. with `dial` overrides through proxies).
            config_path: the file nodes read; default `config.path`. When the file does not
                exist, or differs from where `config` was loaded, `config` is written there.
            log_dir: directory of the node logs; default the config file's directory.
            python: interpreter running the nodes; default `sys.executable`.
            env: environment of the node processes; default this process's.
            node_args: extra arguments for every node (e.g. `["--log-level", "DEBUG"]`).

        Raises:
            LauncherError: no config path is known.
        """
        path = config_path or config.path
        if path is None:
            raise LauncherError("the configuration has no file: pass config_path")
        self.config_path = Path(path).resolve()
        loaded_from = Path(config.path).resolve() if config.path is not None else None
        if not self.config_path.exists() or loaded_from != self.config_path:
            config = write(config, self.config_path)
        self.config = config
        self.log_dir = (log_dir or self.config_path.parent).resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._python = python or sys.executable
        self._env = dict(env) if env is not None else None
        self._node_args = list(node_args)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._logs: dict[int, IO[bytes]] = {}
        self._paused: set[int] = set()
        self._stopped: set[int] = set()  # stopped on purpose: its exit is not a failure

    # -- facts ----------------------------------------------------------------------------

    @property
    def node_ids(self) -> list[int]:
        """Ids of the configured nodes, sorted."""
        return sorted(self.config.nodes)

    @property
    def addresses(self) -> dict[int, str]:
        """Client address ("host:port") of each node, by id."""
        return {nid: format_addr(n.client_addr) for nid, n in sorted(self.config.nodes.items())}

    @property
    def servers(self) -> list[str]:
        """Client addresses of all nodes, for a client."""
        return list(self.addresses.values())

    @property
    def pids(self) -> dict[int, int]:
        """Pid of each running node (paused ones included), by id."""
        return {nid: p.pid for nid, p in sorted(self._procs.items()) if p.poll() is None}

    def log_path(self, node_id: int) -> Path:
        """The log file of a node."""
        return self.log_dir / f"n{node_id}.log"

    def is_running(self, node_id: int) -> bool:
        """True while the node's process exists (also when paused)."""
        proc = self._procs.get(node_id)
        return proc is not None and proc.poll() is None

    def is_paused(self, node_id: int) -> bool:
        """True while the node is stopped by `pause`."""
        return node_id in self._paused and self.is_running(node_id)

    def exit_code(self, node_id: int) -> int | None:
        """The exit status of a node that ran and ended (negative: killed by that signal)."""
        proc = self._procs.get(node_id)
        return None if proc is None else proc.poll()

    def command(self, node_id: int) -> list[str]:
        """The command line that runs a node."""
        return [
            self._python, "-m", "node", "--config", str(self.config_path), "--id", str(node_id),
            *self._node_args,
        ]

    # -- processes ------------------------------------------------------------------------

    def start(self, *, wait: bool = True, timeout_s: float = 30.0) -> int | None:
        """Start every node not running, then (by default) wait until a leader serves.

        In a cluster created anew, the nodes added later (`initial = false`) join through the
        first initial node (`needs_join`).

        Returns:
            The leader's id when `wait`, else None.

        Raises:
            LauncherError: a node could not start, exited, or no leader within `timeout_s`.
        """
        initial = [nid for nid in self.node_ids if self.config.nodes[nid].initial]
        joining = needs_join(self.config) if initial else []
        for nid in self.node_ids:
            if not self.is_running(nid):
                self.start_node(nid, join=self.addresses[initial[0]] if nid in joining else None)
        return self.wait_for_leader(timeout_s=timeout_s) if wait else None

    def start_node(
        self,
        node_id: int,
        extra_args: Sequence[str] = (),
        *,
        join: str | None = None,
        learner: bool = False,
    ) -> int:
        """Start one node (its data directory is reused: a restart).

        Args:
            node_id: the node.
            extra_args: more arguments for `python -m node` (e.g. `--force-voter`).
            join: a running member's client address: `--join ADDR`, so that a node without a
                database asks the cluster to admit it (a node with one ignores it).
            learner: with `join`: `--learner`, it stays a learner (no promotion asked).

        Returns:
            Its pid.

        Raises:
            LauncherError: unknown node id, already running, or the process cannot start.
        """
        try:
            self.config.node(node_id)
        except ConfigError as exc:
            raise LauncherError(str(exc)) from None
        if self.is_running(node_id):
            raise LauncherError(f"node {node_id} is already running (pid {self._procs[node_id].pid})")
        old = self._logs.pop(node_id, None)
        if old is not None:
            old.close()
        if join is not None:
            extra_args = [*extra_args, "--join", join, *(["--learner"] if learner else [])]
        log = open(self.log_path(node_id), "ab")  # noqa: SIM115 - kept open while it runs
        try:
            proc = subprocess.Popen(
                [*self.command(node_id), *extra_args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,  # Ctrl-C in a terminal reaches the launcher only
                close_fds=True,
            )
        except OSError as exc:
            log.close()
            raise LauncherError(f"cannot start node {node_id}: {exc}") from None
        self._procs[node_id] = proc
        self._logs[node_id] = log
        self._paused.discard(node_id)
        self._stopped.discard(node_id)
        return proc.pid

    def signal_node(self, node_id: int, sig: int) -> None:
        """Send `sig` to a running node (by its pid). Does nothing when it is not running."""
        proc = self._procs.get(node_id)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        if sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
            self._stopped.add(node_id)
        if sig == signal.SIGSTOP:
            self._paused.add(node_id)
        elif sig == signal.SIGCONT:
            self._paused.discard(node_id)

    def stop_node(
        self, node_id: int, sig: int = signal.SIGTERM, *, timeout_s: float = 10.0
    ) -> int | None:
        """Stop one node: send `sig` (resuming it first if paused), wait, then SIGKILL.

        Args:
            node_id: the node.
            sig: the first signal (SIGTERM: a clean stop; a leader hands over first).
            timeout_s: how long to wait before SIGKILL.

        Returns:
            Its exit status (negative: the signal that ended it), or None if it never ran.
        """
        proc = self._procs.get(node_id)
        if proc is None:
            return None
        self._stopped.add(node_id)
        if proc.poll() is None:
            if node_id in self._paused and sig != signal.SIGKILL:
                self.signal_node(node_id, signal.SIGCONT)
            self.signal_node(node_id, sig)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.signal_node(node_id, signal.SIGKILL)
                proc.wait()
        self._paused.discard(node_id)
        log = self._logs.pop(node_id, None)
        if log is not None:
            log.close()
        return proc.returncode

    def kill(self, node_id: int) -> int | None:
        """SIGKILL one node (no clean shutdown) and reap it. Returns its exit status."""
        return self.stop_node(node_id, signal.SIGKILL)

    def pause(self, node_id: int) -> None:
        """SIGSTOP one node: it keeps its sockets but does nothing until `resume`."""
        self.signal_node(node_id, signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        """SIGCONT a paused node."""
        self.signal_node(node_id, signal.SIGCONT)

    def stop(self, *, timeout_s: float = 10.0) -> dict[int, int | None]:
        """Stop every node: SIGTERM all at once, wait up to `timeout_s`, SIGKILL the rest.

        Returns:
            Exit status by node id.
        """
        running = [nid for nid in self._procs if self.is_running(nid)]
        self._stopped.update(running)
        for nid in running:
            if nid in self._paused:
                self.signal_node(nid, signal.SIGCONT)
            self.signal_node(nid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for nid in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._procs[nid].wait(timeout=max(0.0, deadline - time.monotonic()))
        return {nid: self.stop_node(nid, signal.SIGKILL) for nid in sorted(self._procs)}

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- readiness ------------------------------------------------------------------------

    def _check_exited(self) -> None:
        for nid, proc in sorted(self._procs.items()):
            code = proc.poll()
            if code is not None and nid not in self._stopped:
                raise LauncherError(
                    f"node {nid} exited with status {code}: {self._last_log_line(nid)} "
                    f"(log: {self.log_path(nid)})"
                )

    def _last_log_line(self, node_id: int) -> str:
        try:
            lines = self.log_path(node_id).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def wait_for_leader(self, *, timeout_s: float = 30.0) -> int:
        """Wait until a leader is elected and answers a read (blocking).

        Returns:
            The leader's node id.

        Raises:
            LauncherError: a started node exited, or no leader within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        with Client(self.servers, timeout_s=1.0, connect_timeout_s=0.5) as client:
            while time.monotonic() < deadline:
                self._check_exited()
                try:
                    status = client.cluster_status(timeout_s=1.0)
                    leader = status.get("leader_id")
                    if isinstance(leader, int):
                        client.list_queues()
                        return leader
                    last = "no leader yet"
                except RaftqError as exc:
                    last = str(exc)
                time.sleep(0.1)
        raise LauncherError(f"no leader within {timeout_s:g} s ({last})")

    async def wait_for_leader_async(self, *, timeout_s: float = 30.0) -> int:
        """`wait_for_leader` for trio code: the same, without blocking the event loop."""
        with trio.move_on_after(timeout_s):
            async with AsyncClient(self.servers, timeout_s=1.0, connect_timeout_s=0.5) as client:
                while True:
                    self._check_exited()
                    try:
                        status = await client.cluster_status(timeout_s=1.0)
                        leader = status.get("leader_id")
                        if isinstance(leader, int):
                            await client.list_queues()
                            return leader
                    except RaftqError:
                        pass
                    await trio.sleep(0.1)
        raise LauncherError(f"no leader within {timeout_s:g} s")

    def record(self, path: Path | None = None) -> Path:
        """Write the running nodes' pids to `path` (default `<config dir>/pids.json`)."""
        target = path or self.config_path.parent / PIDS_NAME
        write_pids(target, self.config_path, self.pids)
        return target

    def describe(self) -> list[dict[str, Any]]:
        """One row per node: id, client address, pid (or None), log path."""
        pids = self.pids
        return [
            {"node_id": nid, "client_addr": addr, "pid": pids.get(nid),
             "log": str(self.log_path(nid))}
            for nid, addr in self.addresses.items()
        ]
