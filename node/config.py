"""The cluster configuration file (TOML): loading, checking and writing it.

Format: see docs/protocol.md, "Configuration file". Every node of a cluster reads the same
file and picks its own entry by id.
"""

from __future__ import annotations

import secrets
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from node.raft import Config as RaftConfig
from node.raft import Membership, NodeId

_RAFT = RaftConfig(NodeId(1))
"""The core's tuning defaults (node/raft/_config.py): the one place they are written."""


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message says what and where."""


def parse_addr(text: str, what: str = "address") -> tuple[str, int]:
    """Parse "host:port" into (host, port).

    Raises:
        ConfigError: not of the form host:port with port 1..65535.
    """
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} {text!r} is not host:port")
    return host, int(port)


def format_addr(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


@dataclass(frozen=True)
class NodeConfig:
    """One node's entry.

    Attributes:
        id: node id, >= 1.
        raft_addr: where peers connect (host, port).
        client_addr: where clients connect (host, port).
        data_dir: absolute path of the node's data directory.
        dial: per-peer overrides of the address this node dials (e.g. a fault-injection proxy).
        initial: a voter of the membership a brand-new cluster is created with (TOML key
            `initial`, default true); false for a node added later (admitted by `add_member`,
            e.g. with `raftq node --join`), which a new database does not count as a member.
    """

    id: int
    raft_addr: tuple[str, int]
    client_addr: tuple[str, int]
    data_dir: Path
    dial: dict[int, tuple[str, int]] = field(default_factory=dict)
    initial: bool = True


@dataclass(frozen=True)
class ClusterConfig:
    """The whole cluster.

    Attributes:
        cluster_id: peers with another id are refused.
        secret: shared secret of the peer handshake (bytes of the configured text).
        nodes: node entries by id.
        tick_ms: length of one Raft tick in milliseconds.
        election_ticks, heartbeat_ticks: Raft timing in ticks (defaults: the core's, see
            `node.raft.Config`); `raft_config()` builds a node's core tuning from them.
        snapshot_entries: take a snapshot after this many applied entries.
        log_margin_entries: entries a snapshot covers that the log still keeps, so that a
            follower that far behind catches up from the log (etcd's SnapshotCatchUpEntries).
        disk_free_limit_bytes: below this much free space on its data directory's filesystem,
            a node refuses new sends with DISK_FULL (node/disk_alarm.py); 0: no alarm.
        max_frame_bytes: largest client frame accepted.
        path: the file this was read from (None when built in code).
    """

    cluster_id: str
    secret: bytes
    nodes: dict[int, NodeConfig]
    tick_ms: int = 40
    election_ticks: int = _RAFT.election_ticks
    heartbeat_ticks: int = _RAFT.heartbeat_ticks
    snapshot_entries: int = 20000
    log_margin_entries: int = 5000
    disk_free_limit_bytes: int = 64 * 1024 * 1024
    max_frame_bytes: int = 8 << 20
    path: Path | None = None

    def raft_config(self, node_id: int) -> RaftConfig:
        """The core's tuning for `node_id`: the core's defaults with this cluster's timing."""
        return replace(
            _RAFT,
            id=NodeId(node_id),
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
        )

    def node(self, node_id: int) -> NodeConfig:
        """The entry of `node_id`.

        Raises:
            ConfigError: no such node.
        """
        try:
            return self.nodes[node_id]
        except KeyError:
            raise ConfigError(
                f"node id {node_id} is not in the configuration (ids: {sorted(self.nodes)})"
            ) from None

    def peer_dial_addrs(self, node_id: int) -> dict[int, tuple[str, int]]:
        """Addresses `node_id` dials to reach each peer (its `dial` overrides, else raft_addr)."""
        me = self.node(node_id)
        return {
            pid: me.dial.get(pid, n.raft_addr) for pid, n in sorted(self.nodes.items())
            if pid != node_id
        }

    def initial_membership(self) -> Membership:
        """The membership a new database starts with: every `initial` node of the file a
        voter, with its addresses (from then on the membership lives in the replicated log).
        Nodes added later (`initial = false`) are not in it: they are admitted by the
        cluster (`add_member`)."""
        initial = {i: n for i, n in self.nodes.items() if n.initial}
        return Membership.of([NodeId(i) for i in initial]).with_addresses(
            {
                NodeId(i): (format_addr(n.raft_addr), format_addr(n.client_addr))
                for i, n in initial.items()
            }
        )

    def client_addrs(self) -> list[str]:
        return [format_addr(n.client_addr) for _, n in sorted(self.nodes.items())]


def _int(raw: dict[str, Any], key: str, default: int, lo: int, hi: int, where: str) -> int:
    v = raw.get(key, default)
    if type(v) is not int or not lo <= v <= hi:
        raise ConfigError(f"{where}: {key} must be an integer from {lo} to {hi}, got {v!r}")
    return v


def load(path: str | Path) -> ClusterConfig:
    """Read and check a configuration file.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a value is missing or invalid;
            the message names the file and the field.
    """
    p = Path(path).resolve()
    try:
        raw = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {p} is not valid TOML: {exc}") from None
    return from_dict(raw, base_dir=p.parent, path=p)


def from_dict(raw: dict[str, Any], base_dir: Path, path: Path | None = None) -> ClusterConfig:
    """Build a configuration from parsed TOML; relative paths are relative to `base_dir`.

    Raises:
        ConfigError: a value is missing or invalid.
    """
    where = str(path or "config")
    cluster_id = raw.get("cluster_id")
    if not isinstance(cluster_id, str) or not cluster_id:
        raise ConfigError(f"{where}: cluster_id must be a non-empty string")
    secret_text = raw.get("secret")
    if "secret_file" in raw:
        sf = Path(str(raw["secret_file"]))
        sf = sf if sf.is_absolute() else base_dir / sf
        try:
            secret_text = sf.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read secret_file {sf}: {exc}") from None
    if not isinstance(secret_text, str) or len(secret_text) < 16:
        raise ConfigError(f"{where}: secret must be a string of at least 16 characters")
    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise ConfigError(f"{where}: needs at least one [[nodes]] entry")
    nodes: dict[int, NodeConfig] = {}
    for n, entry in enumerate(nodes_raw):
        w = f"{where}: nodes[{n}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{w} must be a table")
        nid = entry.get("id")
        if type(nid) is not int or nid < 1:
            raise ConfigError(f"{w}: id must be a positive integer")
        if nid in nodes:
            raise ConfigError(f"{w}: duplicate node id {nid}")
        data_dir = Path(str(entry.get("data_dir", f"data/n{nid}")))
        dial_raw = entry.get("dial", {})
        if not isinstance(dial_raw, dict):
            raise ConfigError(f"{w}: dial must be a table of peer id to host:port")
        dial = {}
        for k, v in dial_raw.items():
            if not str(k).isdigit():
                raise ConfigError(f"{w}: dial key {k!r} is not a node id")
            dial[int(k)] = parse_addr(v, f"{w}: dial {k}")
        initial = entry.get("initial", True)
        if type(initial) is not bool:
            raise ConfigError(f"{w}: initial must be true or false, got {initial!r}")
        nodes[nid] = NodeConfig(
            id=nid,
            raft_addr=parse_addr(entry.get("raft_addr", ""), f"{w}: raft_addr"),
            client_addr=parse_addr(entry.get("client_addr", ""), f"{w}: client_addr"),
            data_dir=data_dir if data_dir.is_absolute() else (base_dir / data_dir).resolve(),
            dial=dial,
            initial=initial,
        )
    cfg = ClusterConfig(
        cluster_id=cluster_id,
        secret=secret_text.encode(),
        nodes=nodes,
        tick_ms=_int(raw, "tick_ms", ClusterConfig.tick_ms, 1, 10_000, where),
        election_ticks=_int(raw, "election_ticks", ClusterConfig.election_ticks, 2, 1000, where),
        heartbeat_ticks=_int(raw, "heartbeat_ticks", ClusterConfig.heartbeat_ticks, 1, 999,
                             where),
        snapshot_entries=_int(raw, "snapshot_entries", ClusterConfig.snapshot_entries, 10,
                              10**9, where),
        log_margin_entries=_int(raw, "log_margin_entries", ClusterConfig.log_margin_entries, 0,
                                10**9, where),
        disk_free_limit_bytes=_int(raw, "disk_free_limit_bytes",
                                   ClusterConfig.disk_free_limit_bytes, 0, 1 << 50, where),
        max_frame_bytes=_int(raw, "max_frame_bytes", ClusterConfig.max_frame_bytes, 1024,
                             1 << 30, where),
        path=path,
    )
    if cfg.heartbeat_ticks >= cfg.election_ticks:
        raise ConfigError(f"{where}: heartbeat_ticks must be below election_ticks")
    return cfg


def local_cluster(
    data_dir: Path, nodes: int = 3, base_port: int = 7000, host: str = "127.0.0.1",
    cluster_id: str | None = None,
) -> ClusterConfig:
    """A configuration for `nodes` nodes on one host: client ports base+1.., raft base+101..

    The secret is fresh random text; data directories are `data_dir/n<id>`.
    """
    data_dir = data_dir.resolve()
    entries = {
        i: NodeConfig(
            id=i,
            raft_addr=(host, base_port + 100 + i),
            client_addr=(host, base_port + i),
            data_dir=data_dir / f"n{i}",
        )
        for i in range(1, nodes + 1)
    }
    return ClusterConfig(
        cluster_id=cluster_id or f"raftq-{secrets.token_hex(4)}",
        secret=secrets.token_hex(24).encode(),
        nodes=entries,
        path=data_dir / "cluster.toml",
    )


def dumps(cfg: ClusterConfig) -> str:
    """Render a configuration as TOML (absolute data directories)."""
    lines = [
        f'cluster_id = "{cfg.cluster_id}"',
        f'secret = "{cfg.secret.decode()}"',
        f"tick_ms = {cfg.tick_ms}",
        f"election_ticks = {cfg.election_ticks}",
        f"heartbeat_ticks = {cfg.heartbeat_ticks}",
        f"snapshot_entries = {cfg.snapshot_entries}",
        f"log_margin_entries = {cfg.log_margin_entries}",
        f"disk_free_limit_bytes = {cfg.disk_free_limit_bytes}",
        f"max_frame_bytes = {cfg.max_frame_bytes}",
    ]
    for _, n in sorted(cfg.nodes.items()):
        lines += [
            "",
            "[[nodes]]",
            f"id = {n.id}",
            f'raft_addr = "{format_addr(n.raft_addr)}"',
            f'client_addr = "{format_addr(n.client_addr)}"',
            f'data_dir = "{n.data_dir.as_posix()}"',
        ]
        if not n.initial:
            lines.append("initial = false")
        if n.dial:
            inner = ", ".join(f'"{k}" = "{format_addr(v)}"' for k, v in sorted(n.dial.items()))
            lines.append(f"dial = {{ {inner} }}")
    return "\n".join(lines) + "\n"


def write(cfg: ClusterConfig, path: Path) -> ClusterConfig:
    """Write `cfg` to `path` (creating directories) and return it with `path` set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(cfg))
    return replace(cfg, path=path.resolve())
