"""The `raftq` command line: run a local cluster, and use the queues from a shell.

Servers come from `--servers host:port,...` or `RAFTQ_SERVERS`, else the client addresses of
`./data/local/cluster.toml` (or the `--data-dir` of a `cluster` command), else
127.0.0.1:7001-7003. Errors the cluster reports are printed as one line on standard error
(`error: QUEUE_NOT_FOUND: queue 'x' does not exist`) with exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click
from click.core import ParameterSource
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.cli_common import (
    _DATA_DIR,
    _client,
    _err,
    _fail,
    _out,
    _print_json,
    _resolve_servers,
    _running_recorded,
)
from cluster.client import Client, Message, OutgoingMessage, SendResult
from cluster.errors import RaftqError
from cluster.launcher import (
    CONFIG_NAME,
    PIDS_NAME,
    Launcher,
    LauncherError,
    RecordedNode,
    local_config,
    process_matches,
    read_pids,
    stop_recorded,
    write_pids,
)
from cluster.membership_cli import MEMBERSHIP_COMMANDS
from node.config import ClusterConfig, ConfigError, format_addr, load

BATCH = 100
"""Messages per `send_batch` in bulk sends (the node's batch limit)."""


class _Main(click.Group):
    """The root group: expected errors become one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RaftqError as exc:
            _fail(f"{exc.code}: {exc.message}" if exc.message else exc.code)
        except (ConfigError, LauncherError) as exc:
            _fail(str(exc))


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not k=v", param_hint="--header")
        try:  # arguments that are not UTF-8 arrive with surrogate escapes
            key, value = (os.fsencode(t).decode("utf-8") for t in (key, value))
        except UnicodeDecodeError:
            raise click.BadParameter(
                f"{item!r} is not valid UTF-8 (header names and values are text)",
                param_hint="--header",
            ) from None
        out[key] = value
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# ---------------------------------------------------------------------------------------------
# root
# ---------------------------------------------------------------------------------------------


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--servers",
    envvar="RAFTQ_SERVERS",
    metavar="HOST:PORT,...",
    help="Node client addresses [env RAFTQ_SERVERS; default: ./data/local/cluster.toml, "
    "else 127.0.0.1:7001-7003].",
)
@click.option(
    "--timeout", type=float, default=15.0, show_default=True, metavar="S",
    help="Deadline of each call in seconds, retries included.",
)
def cli(servers: str | None, timeout: float) -> None:
    """raftq: a replicated message queue on Raft."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `raftq` console script."""
    cli.main(args=argv, prog_name="raftq")


# ---------------------------------------------------------------------------------------------
# cluster
# ---------------------------------------------------------------------------------------------

@cli.group()
def cluster() -> None:
    """Run a local cluster on this host."""


def _busy_client_ports(cfg: ClusterConfig, node_ids: list[int]) -> list[str]:
    """Client addresses of `node_ids` where something already accepts connections."""
    busy = []
    for nid in node_ids:
        host, port = cfg.node(nid).client_addr
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                busy.append(f"{host}:{port}")
    return busy


def _wait_serving(launcher: Launcher, node_ids: list[int], timeout_s: float) -> None:
    """Wait until each node answers `node_status` or has exited (a node that refuses its
    damaged database exits within a second, after the others may already have a leader)."""
    deadline = time.monotonic() + timeout_s
    pending = list(node_ids)
    with Client(launcher.servers, timeout_s=1.0, connect_timeout_s=0.3) as c:
        while pending and time.monotonic() < deadline:
            for nid in list(pending):
                if launcher.exit_code(nid) is not None:
                    pending.remove(nid)
                    continue
                try:
                    c.node_status(launcher.addresses[nid], timeout_s=0.5)
                except RaftqError:
                    continue
                pending.remove(nid)
            if pending:
                time.sleep(0.1)


def _check_started(launcher: Launcher, node_ids: list[int]) -> None:
    """Fail (stopping what was started) if a just-started node exited by itself."""
    dead = [nid for nid in node_ids if launcher.exit_code(nid) is not None]
    if not dead:
        return
    lines = []
    for nid in dead:
        log = launcher.log_path(nid).read_text(errors="replace").strip().splitlines()
        lines.append(f"node {nid} exited with status {launcher.exit_code(nid)}: "
                     f"{log[-1] if log else '(empty log)'}")
    launcher.stop(timeout_s=10.0)
    _fail("; ".join(lines))


def _roles(launcher: Launcher) -> dict[int, str]:
    try:
        with Client(launcher.servers, timeout_s=2.0, connect_timeout_s=0.5) as c:
            status = c.cluster_status(timeout_s=2.0)
    except RaftqError:
        return {}
    return {
        int(n["node_id"]): str(n.get("role") or "unreachable")
        for n in status.get("nodes", []) if isinstance(n, dict) and "node_id" in n
    }


@cluster.command("up")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True,
              help="Number of nodes (when the cluster is created).")
@_DATA_DIR
@click.option("--base-port", type=click.IntRange(1, 65000), default=7000, show_default=True,
              help="Client ports are BASE+1.., raft ports BASE+101.. (when created).")
@click.option("--detach", is_flag=True, help="Start the nodes and return (stop: cluster down).")
@click.option("--wait", "wait_s", type=float, default=30.0, show_default=True, metavar="S",
              help="How long to wait for a leader.")
def cluster_up(nodes: int, data_dir: Path, base_port: int, detach: bool, wait_s: float) -> None:
    """Start a local cluster (its config is made the first time, then reused)."""
    data_dir = data_dir.resolve()
    running = _running_recorded(data_dir)
    cfg, created = local_config(data_dir, nodes=nodes, base_port=base_port)
    err = _err()
    if running:
        _restart_missing(cfg, data_dir, running, wait_s)
        return
    if created:
        err.print(f"wrote {cfg.path}")
    elif any(
        click.get_current_context().get_parameter_source(name) == ParameterSource.COMMANDLINE
        for name in ("nodes", "base_port")
    ):
        err.print(f"using the existing {cfg.path} ({len(cfg.nodes)} nodes); "
                  "--nodes and --base-port apply only when it is created")
    busy = _busy_client_ports(cfg, sorted(cfg.nodes))
    if busy:
        _fail(f"something already listens on {', '.join(busy)} (another cluster, or nodes of "
              f"this one not recorded in {data_dir / PIDS_NAME}?); stop it first")
    launcher = Launcher(cfg)
    stop_requested: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.append(signum)
        raise KeyboardInterrupt

    previous = {
        s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)
    }
    pids_path = data_dir / PIDS_NAME
    try:
        launcher.start(wait=False)
        launcher.record(pids_path)
        with err.status("waiting for a leader..."):
            launcher.wait_for_leader(timeout_s=wait_s)
        _check_started(launcher, launcher.node_ids)
        _print_nodes(launcher, _roles(launcher))
        click.echo(f"RAFTQ_SERVERS={','.join(launcher.servers)}")
        sys.stdout.flush()  # a supervisor reading our pipe sees the line now
        if detach:
            err.print(f"detached; logs in {data_dir}; stop with: raftq cluster down "
                      f"--data-dir {data_dir}")
            return
        err.print("running; Ctrl-C or SIGTERM stops the cluster")
        reported: set[int] = set()
        while True:
            time.sleep(0.5)
            for nid in launcher.node_ids:
                code = launcher.exit_code(nid)
                if code is not None and nid not in reported:
                    reported.add(nid)
                    err.print(f"node {nid} exited with status {code}; see "
                              f"{launcher.log_path(nid)}")
    except KeyboardInterrupt:
        pass
    except BaseException:
        _stop_launcher(launcher, pids_path)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    _stop_launcher(launcher, pids_path)


def _restart_missing(
    cfg: ClusterConfig, data_dir: Path, running: dict[int, RecordedNode], wait_s: float
) -> None:
    """The cluster runs but some nodes do not: start those (detached) and record them."""
    missing = [nid for nid in sorted(cfg.nodes) if nid not in running]
    pids = {nid: n.pid for nid, n in running.items()}
    if not missing:
        _fail(f"a cluster from {data_dir} is already running (pids {sorted(pids.values())}); "
              "stop it with: raftq cluster down")
    busy = _busy_client_ports(cfg, missing)
    if busy:
        _fail(f"something already listens on {', '.join(busy)}; stop it first")
    launcher = Launcher(cfg)
    for nid in missing:
        launcher.start_node(nid)
    pids.update({nid: launcher.pids[nid] for nid in missing})
    write_pids(data_dir / PIDS_NAME, launcher.config_path, pids)
    with _err().status("waiting for a leader..."):
        launcher.wait_for_leader(timeout_s=wait_s)
    _wait_serving(launcher, missing, timeout_s=10.0)
    _check_started(launcher, missing)
    _err().print(f"restarted node(s) {', '.join(map(str, missing))} (detached); the others "
                 f"were running. Stop all with: raftq cluster down --data-dir {data_dir}")
    click.echo(f"RAFTQ_SERVERS={','.join(launcher.servers)}")


def _stop_launcher(launcher: Launcher, pids_path: Path) -> None:
    # Further signals must not interrupt the clean stop.
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _err().print("stopping the nodes...")
        mine = set(launcher.pids.values())
        codes: dict[int, Any] = dict(launcher.stop(timeout_s=10.0))
        others = [
            n for n in read_pids(pids_path)
            if n.pid not in mine and process_matches(n.pid, n.config_path, n.node_id)
        ]
        if mine and others:
            # Nodes restarted by `cluster up` while we ran belong to our cluster: stop them.
            codes.update(stop_recorded(others, timeout_s=10.0))
            others = []
        # With none of ours left running, others may be a new cluster: not ours to stop.
        live = {n.node_id: n.pid for n in others}
        if live:
            write_pids(pids_path, launcher.config_path, live)
        else:
            pids_path.unlink(missing_ok=True)
        _err().print(
            "stopped: " + ", ".join(f"n{nid} status {code}" for nid, code in codes.items())
        )
        if live:
            _err().print(f"still running, started separately: "
                         f"{', '.join(f'n{n} (pid {p})' for n, p in live.items())}; "
                         "stop with: raftq cluster down")
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _print_nodes(launcher: Launcher, roles: dict[int, str]) -> None:
    table = Table(title=f"raftq cluster {launcher.config.cluster_id}")
    table.add_column("node", justify="right")
    table.add_column("client address")
    table.add_column("pid", justify="right")
    table.add_column("role")
    table.add_column("log")
    for row in launcher.describe():
        role = roles.get(row["node_id"], "?")
        table.add_row(
            str(row["node_id"]), row["client_addr"], str(row["pid"] or "-"),
            f"[bold green]{role}[/]" if role == "leader" else role, row["log"],
        )
    _out().print(table)


@cluster.command("down")
@_DATA_DIR
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True,
              metavar="S", help="Wait this long after SIGTERM before SIGKILL.")
def cluster_down(data_dir: Path, timeout_s: float) -> None:
    """Stop the nodes of a local cluster started with --detach (by their recorded pids)."""
    pids_path = data_dir.resolve() / PIDS_NAME
    nodes = read_pids(pids_path)
    if not nodes:
        _fail(f"no running cluster recorded in {pids_path}")
    outcome = stop_recorded(nodes, timeout_s=timeout_s)
    for n in nodes:
        click.echo(f"node {n.node_id} (pid {n.pid}): {outcome[n.node_id]}")
    pids_path.unlink(missing_ok=True)


def _is_learner(row: dict[str, Any]) -> bool:
    """A node_status row of a node that its own membership lists as a learner."""
    learners = row.get("learners")
    return isinstance(learners, list) and row.get("node_id") in learners


@cluster.command("status")
@_DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def cluster_status(ctx: click.Context, data_dir: Path, as_json: bool) -> None:
    """Each node's role, term, indexes and health, asked of each node directly (the nodes of
    --servers or cluster.toml, and every member of the replicated membership)."""
    servers = _resolve_servers(ctx, data_dir)
    path = data_dir / CONFIG_NAME
    ids: dict[str, int] = {}
    if path.exists():
        ids = {format_addr(n.client_addr): nid for nid, n in load(path).nodes.items()}
    rows: list[dict[str, Any]] = []
    with Client(servers, timeout_s=2.0, connect_timeout_s=0.5, request_timeout_s=1.5) as c:

        def ask(addr: str) -> None:
            try:
                st = c.node_status(addr, timeout_s=1.5, confirm=True)
                rows.append({"addr": addr, "reachable": True, **st})
            except RaftqError as exc:
                rows.append({"addr": addr, "reachable": False, "error": str(exc),
                             "node_id": ids.get(addr)})

        for addr in servers:
            ask(addr)
        try:  # members the file does not know (joined from another host, or added since)
            view = c.members(timeout_s=2.0)
        except RaftqError:
            view = None
        for m in view.members if view is not None else ():
            if m.client_addr and m.client_addr not in servers:
                ids.setdefault(m.client_addr, m.id)
                ask(m.client_addr)
    if as_json:
        _print_json(rows)
        return
    table = Table(title="raftq cluster status")
    for name, justify in [("node", "right"), ("address", "left"), ("pid", "right"),
                          ("health", "left"), ("role", "left"), ("term", "right"),
                          ("leader", "right"), ("commit", "right"), ("applied", "right"),
                          ("last index", "right")]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    repairing: list[str] = []
    diverged: list[str] = []
    for r in rows:
        if not r["reachable"]:
            nid = r.get("node_id")
            table.add_row("?" if nid is None else str(nid), r["addr"], "", "[red]unreachable[/]",
                          "", "", "", "", "", "")
            continue
        role = str(r.get("role", "?"))
        standing = str(r.get("standing", "voter"))
        health = "[green]ok[/]" if standing == "voter" else f"[yellow]{standing}[/]"
        if _is_learner(r) and standing == "voter":
            health = "[cyan]learner[/]"  # a member that does not vote (docs: Membership)
        if standing != "voter":
            until = ("it knows whether the cluster is new" if standing == "joining"
                     else "a leader has repaired it")
            repairing.append(f"node {r.get('node_id', '?')} is {standing}: "
                             f"{r.get('repair_reason') or 'lost durable state'}; it does not "
                             f"vote until {until}")
        if r.get("conflict"):
            diverged.append(f"node {r.get('node_id', '?')}: {r['conflict']} "
                            "(see docs/operations.md, Recovery)")
        for pid, peer in sorted((r.get("peers") or {}).items()):
            if isinstance(peer, dict) and peer.get("diverged"):
                diverged.append(f"node {pid} claims entries past leader "
                                f"{r.get('node_id', '?')}'s log: committed entries were lost "
                                "(see docs/operations.md, Recovery)")
        if role == "leader" and r.get("leader_confirmed") is False:
            # It believes it leads, but a majority did not confirm it just now (cut off).
            shown = "[yellow]leader (unconfirmed)[/]"
        elif role == "leader":
            shown = f"[bold green]{role}[/]"
        else:
            shown = role
        table.add_row(
            str(r.get("node_id", "?")), r["addr"], str(r.get("pid", "")), health, shown,
            *("" if r.get(k) is None else str(r[k])
              for k in ("term", "leader_id", "commit_index", "applied_index", "last_index")),
        )
    _out().print(table)
    for line in repairing:
        _out().print(f"[yellow]{line}[/]")
    voting = [r for r in rows if not _is_learner(r)]
    voters = sum(1 for r in voting if r["reachable"] and r.get("standing", "voter") == "voter")
    if len(voting) - voters >= len(voting) // 2 + 1:
        _err().print(f"[red]{len(voting) - voters} of {len(voting)} nodes are not voters (or not "
                     "reachable): no majority can elect a leader. If a majority lost its "
                     "disks, see docs/operations.md, \"Recovery\"[/]")
    for line in diverged:
        _out().print(f"[red]{line}[/]")
    if not any(r.get("role") == "leader" and r.get("leader_confirmed") is not False
               for r in rows):
        _err().print("[yellow]no confirmed leader among the reachable nodes[/]")


# ---------------------------------------------------------------------------------------------
# node
# ---------------------------------------------------------------------------------------------


@cli.command("node")
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Cluster configuration file.")
@click.option("--id", "node_id", required=True, type=int, help="This node's id in the config.")
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING.")
@click.option("--force-voter", is_flag=True,
              help="Vote at once even if this node lost durable state (only to bring back a "
                   "cluster whose majority lost its disks; see docs/operations.md).")
@click.option("--join", metavar="HOST:PORT",
              help="Join a running cluster through this client address: a node without a "
                   "database is admitted as a learner, then promoted to voter once caught up "
                   "(with a database: it only asks to be promoted while it is a learner).")
@click.option("--learner", is_flag=True, help="With --join: stay a learner (no promotion).")
def node_cmd(config_path: Path, node_id: int, log_level: str, force_voter: bool,
             join: str | None, learner: bool) -> None:
    """Run one node in the foreground (what `python -m node` runs)."""
    from node.main import main as node_main

    if learner and not join:
        raise click.UsageError("--learner applies only with --join")
    argv = ["--config", str(config_path), "--id", str(node_id), "--log-level", log_level]
    argv += ["--force-voter"] if force_voter else []
    argv += ["--join", join, *(["--learner"] if learner else [])] if join else []
    raise click.exceptions.Exit(node_main(argv))


# ---------------------------------------------------------------------------------------------
# queues
# ---------------------------------------------------------------------------------------------


@cli.group()
def queue() -> None:
    """Create, delete, purge, list and inspect queues."""


@queue.command("create")
@click.argument("name")
@click.option("--visibility-timeout-ms", type=int, help="Lease of a received message [30000].")
@click.option("--max-deliveries", type=int, help="Deliveries before dead-lettering, 0 = no limit [10].")
@click.option("--dlq", metavar="NAME", help="Dead-letter queue [NAME.dlq].")
@click.option("--no-dlq", is_flag=True, help="No dead-letter queue.")
@click.option("--retention-ms", type=int, help="How long a message may stay [4 days].")
@click.option("--max-message-bytes", type=int, help="Largest body plus headers [1 MiB].")
@click.option("--max-length", type=int, help="Most messages held [no limit].")
@click.option("--max-length-bytes", type=int, help="Most body bytes held [no limit].")
@click.option("--overflow", type=click.Choice(["reject_publish", "drop_head"]),
              help="What a full queue does [reject_publish].")
@click.option("--dedup-window-ms", type=int, help="Deduplication window, 0 = off [5 min].")
@click.option("--delay-ms", type=int, help="Delay of every new message [0].")
@click.option("--fifo", is_flag=True, help="FIFO message groups.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def queue_create(ctx: click.Context, /, name: str, dlq: str | None, no_dlq: bool, fifo: bool,
                 as_json: bool, **numbers: Any) -> None:
    """Create queue NAME (succeeds when it exists with the same options)."""
    if dlq and no_dlq:
        raise click.UsageError("--dlq and --no-dlq exclude each other")
    options = {k: v for k, v in numbers.items() if v is not None}
    if dlq:
        options["dead_letter_queue"] = dlq
    if no_dlq:
        options["dead_letter_queue"] = None
    if fifo:
        options["fifo"] = True
    with _client(ctx) as c:
        created = c.create_queue(name, **options)
    if as_json:
        _print_json({"queue": name, "created": created})
    else:
        click.echo(f"created queue {name}" if created else
                   f"queue {name} already exists with these options")


@queue.command("delete")
@click.argument("name")
@click.pass_context
def queue_delete(ctx: click.Context, name: str) -> None:
    """Delete queue NAME with its messages (its dead-letter queue stays)."""
    with _client(ctx) as c:
        deleted = c.delete_queue(name)
    click.echo(f"deleted queue {name} ({deleted} messages)")


@queue.command("purge")
@click.argument("name")
@click.pass_context
def queue_purge(ctx: click.Context, name: str) -> None:
    """Delete every message of queue NAME."""
    with _client(ctx) as c:
        purged = c.purge_queue(name)
    click.echo(f"purged {purged} messages from {name}")


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def queue_list(ctx: click.Context, as_json: bool) -> None:
    """List the queues."""
    with _client(ctx) as c:
        names = c.list_queues()
    if as_json:
        _print_json(names)
        return
    table = Table(title=f"{len(names)} queues")
    table.add_column("queue")
    for n in names:
        table.add_row(n)
    _out().print(table)


@queue.command("stats")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def queue_stats(ctx: click.Context, name: str, as_json: bool) -> None:
    """Counters of queue NAME."""
    with _client(ctx) as c:
        stats = c.queue_stats(name)
    if as_json:
        _print_json(stats)
        return
    table = Table(title=f"queue {name}")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        if key != "queue":
            table.add_row(key, "-" if value is None else str(value))
    _out().print(table)


# ---------------------------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------------------------


def _stdin_lines() -> Iterator[bytes]:
    """Standard input's lines as bytes (bodies need not be UTF-8), without the newline."""
    for line in sys.stdin.buffer:
        yield line[:-1] if line.endswith(b"\n") else line


def _arg_bytes(text: str) -> bytes:
    """A command-line argument's original bytes (surrogate escapes undone)."""
    return os.fsencode(text)


def _bulk(
    bodies: Iterator[bytes],
    total: int | None,
    send_batch: Callable[[list[OutgoingMessage]], list[SendResult]],
    make: Callable[[bytes], OutgoingMessage],
    batch_size: int,
) -> tuple[int, int, list[int]]:
    sent = duplicates = 0
    ids: list[int] = []
    err = _err()
    with Progress(
        TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("send", total=total)
        batch: list[OutgoingMessage] = []

        def flush() -> None:
            nonlocal sent, duplicates
            results = send_batch(batch)
            sent += len(results)
            duplicates += sum(r.duplicate for r in results)
            ids.extend(r.message_id for r in results)
            progress.advance(task, len(results))
            batch.clear()

        try:
            for body in bodies:
                batch.append(make(body))
                if len(batch) >= batch_size:
                    flush()
            if batch:
                flush()
        except RaftqError:
            progress.stop()
            err.print(f"sent {_plural(sent, 'message')} before this error "
                      f"(the failed batch of {len(batch)} was not enqueued, or its outcome "
                      "is unknown):")
            raise
    return sent, duplicates, ids


@cli.command("send")
@click.argument("queue_name", metavar="QUEUE")
@click.argument("body", required=False)
@click.option("--dedup-id", help="Deduplication id (one message only).")
@click.option("--delay-ms", type=int, help="Delay before the message becomes visible.")
@click.option("--ttl-ms", type=int, help="Time to live.")
@click.option("--group", help="Message group (FIFO queues).")
@click.option("--header", "headers", multiple=True, metavar="K=V", help="A header (repeatable).")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Send BODY this many times.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def send_cmd(ctx: click.Context, queue_name: str, body: str | None, dedup_id: str | None,
             delay_ms: int | None, ttl_ms: int | None, group: str | None,
             headers: tuple[str, ...], count: int, as_json: bool) -> None:
    """Send BODY to QUEUE; without BODY, send each line of standard input."""
    hdrs = _headers(headers)
    bulk = body is None or count > 1
    if bulk and dedup_id:
        raise click.UsageError("--dedup-id applies to a single message (BODY without --count)")
    if dedup_id is not None and not dedup_id:
        raise click.BadParameter("must not be empty", param_hint="--dedup-id")

    def make(data: bytes) -> OutgoingMessage:
        return OutgoingMessage(data, headers=hdrs or None, delay_ms=delay_ms, ttl_ms=ttl_ms,
                               group=group)

    with _client(ctx) as c:
        if not bulk:
            assert body is not None
            r = c.send(queue_name, _arg_bytes(body), headers=hdrs or None, dedup_id=dedup_id,
                       delay_ms=delay_ms, ttl_ms=ttl_ms, group=group)
            if as_json:
                _print_json({"message_id": r.message_id, "duplicate": r.duplicate,
                             "dedup_id": r.dedup_id})
            else:
                click.echo(f"sent message {r.message_id}"
                           + (" (duplicate)" if r.duplicate else "")
                           + f" dedup_id={r.dedup_id}")
            return
        if body is not None:
            bodies: Iterator[bytes] = iter([_arg_bytes(body)] * count)
            total: int | None = count
        else:
            bodies, total = _stdin_lines(), None
        interactive = body is None and sys.stdin.isatty()
        sent, duplicates, ids = _bulk(
            bodies, total, lambda batch: c.send_batch(queue_name, batch), make,
            1 if interactive else BATCH,
        )
    if as_json:
        _print_json({"sent": sent, "duplicates": duplicates,
                     "first_message_id": ids[0] if ids else None,
                     "last_message_id": ids[-1] if ids else None})
    else:
        click.echo(f"sent {_plural(sent, 'message')} to {queue_name}"
                   + (f" ({duplicates} confirmed only on a retry, recognised by their "
                      "deduplication id: each was enqueued once)" if duplicates else ""))


def _messages_table(messages: list[Message]) -> Table:
    table = Table(title=_plural(len(messages), "message"))
    table.add_column("id", justify="right")
    table.add_column("deliveries", justify="right")
    table.add_column("receipt")
    table.add_column("group")
    table.add_column("headers")
    table.add_column("body")
    for m in messages:
        text = m.text
        table.add_row(
            str(m.message_id), str(m.delivery_count), m.receipt, m.group or "",
            ", ".join(f"{k}={v}" for k, v in m.headers.items()),
            text if len(text) <= 80 else text[:77] + "...",
        )
    return table


@cli.command("receive")
@click.argument("queue_name", metavar="QUEUE")
@click.option("--max", "max_messages", type=click.IntRange(1, 100), default=1,
              show_default=True, help="Most messages.")
@click.option("--wait", "wait_s", type=click.FloatRange(0, 20), default=0.0, show_default=True,
              metavar="S", help="Long poll: wait up to S seconds for a message.")
@click.option("--visibility-timeout-ms", type=int, help="Lease length [the queue's].")
@click.option("--ack", "do_ack", is_flag=True, help="Acknowledge (delete) what was received.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of messages).")
@click.pass_context
def receive_cmd(ctx: click.Context, queue_name: str, max_messages: int, wait_s: float,
                visibility_timeout_ms: int | None, do_ack: bool, as_json: bool) -> None:
    """Receive (lease) messages from QUEUE and print them."""
    with _client(ctx) as c:
        messages = c.receive(queue_name, max_messages=max_messages, wait_s=wait_s,
                             visibility_timeout_ms=visibility_timeout_ms)
        acked = c.ack(queue_name, [m.receipt for m in messages]) if do_ack and messages else None
    if as_json:
        _print_json([m.to_json() for m in messages])
        return
    if not messages:
        click.echo("no messages")
        return
    _out().print(_messages_table(messages))
    if acked is not None:
        click.echo(f"acked {acked.acked}" + (f"; refused: {' '.join(acked.invalid)}"
                                             if acked.invalid else ""))


@cli.command("ack")
@click.argument("queue_name", metavar="QUEUE")
@click.argument("receipts", nargs=-1, required=True)
@click.pass_context
def ack_cmd(ctx: click.Context, queue_name: str, receipts: tuple[str, ...]) -> None:
    """Acknowledge (delete) messages of QUEUE by their receipts."""
    with _client(ctx) as c:
        result = c.ack(queue_name, list(receipts))
    click.echo(f"acked {result.acked}")
    if result.invalid:
        _err().print(f"refused (stale or unknown): {' '.join(result.invalid)}")


@cli.command("nack")
@click.argument("queue_name", metavar="QUEUE")
@click.argument("receipt")
@click.option("--delay-ms", type=int, default=0, help="Visible again only after this delay.")
@click.option("--reject", is_flag=True, help="Dead-letter it at once.")
@click.pass_context
def nack_cmd(ctx: click.Context, queue_name: str, receipt: str, delay_ms: int,
             reject: bool) -> None:
    """Give a received message back (or reject it to the dead-letter queue)."""
    with _client(ctx) as c:
        state = c.nack(queue_name, receipt, delay_ms=delay_ms, reject=reject)
    click.echo(f"message is now {state}")


@cli.group()
def dlq() -> None:
    """Dead-letter queues."""


@dlq.command("redrive")
@click.argument("dlq_name", metavar="DLQ")
@click.option("--target", help="Move into this queue [each message's x-death-queue].")
@click.option("--max-messages", type=click.IntRange(min=1), help="Move at most this many.")
@click.pass_context
def dlq_redrive(ctx: click.Context, dlq_name: str, target: str | None,
                max_messages: int | None) -> None:
    """Move the ready messages of DLQ back to their queues (or --target)."""
    moved_total = 0
    remaining = 0
    with _client(ctx) as c:
        while max_messages is None or moved_total < max_messages:
            chunk = 10_000 if max_messages is None else min(10_000, max_messages - moved_total)
            result = c.redrive(dlq_name, target, max_messages=chunk)
            moved_total += result.moved
            remaining = result.remaining
            if result.moved == 0 or remaining == 0:
                break
    click.echo(f"moved {moved_total} messages; {remaining} left in {dlq_name}")


# ---------------------------------------------------------------------------------------------
# topics
# ---------------------------------------------------------------------------------------------


@cli.group()
def topic() -> None:
    """Topics: publish once, enqueue into every subscribed queue."""


@topic.command("create")
@click.argument("name")
@click.pass_context
def topic_create(ctx: click.Context, name: str) -> None:
    """Create topic NAME (succeeds when it exists)."""
    with _client(ctx) as c:
        created = c.create_topic(name)
    click.echo(f"created topic {name}" if created else f"topic {name} already exists")


@topic.command("delete")
@click.argument("name")
@click.pass_context
def topic_delete(ctx: click.Context, name: str) -> None:
    """Delete topic NAME."""
    with _client(ctx) as c:
        c.delete_topic(name)
    click.echo(f"deleted topic {name}")


@topic.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def topic_list(ctx: click.Context, as_json: bool) -> None:
    """List topics and their subscribed queues."""
    with _client(ctx) as c:
        topics = c.list_topics()
    if as_json:
        _print_json(topics)
        return
    table = Table(title=f"{len(topics)} topics")
    table.add_column("topic")
    table.add_column("queues")
    for name, queues in topics.items():
        table.add_row(name, ", ".join(queues))
    _out().print(table)


@topic.command("subscribe")
@click.argument("topic_name", metavar="TOPIC")
@click.argument("queue_name", metavar="QUEUE")
@click.pass_context
def topic_subscribe(ctx: click.Context, topic_name: str, queue_name: str) -> None:
    """Subscribe QUEUE to TOPIC."""
    with _client(ctx) as c:
        new = c.subscribe(topic_name, queue_name)
    click.echo(f"subscribed {queue_name} to {topic_name}" if new else
               f"{queue_name} was already subscribed to {topic_name}")


@topic.command("unsubscribe")
@click.argument("topic_name", metavar="TOPIC")
@click.argument("queue_name", metavar="QUEUE")
@click.pass_context
def topic_unsubscribe(ctx: click.Context, topic_name: str, queue_name: str) -> None:
    """Unsubscribe QUEUE from TOPIC."""
    with _client(ctx) as c:
        old = c.unsubscribe(topic_name, queue_name)
    click.echo(f"unsubscribed {queue_name} from {topic_name}" if old else
               f"{queue_name} was not subscribed to {topic_name}")


@topic.command("publish")
@click.argument("topic_name", metavar="TOPIC")
@click.argument("body", required=False)
@click.option("--dedup-id", help="Deduplication id (applied in every queue).")
@click.option("--delay-ms", type=int, help="Delay before the copies become visible.")
@click.option("--ttl-ms", type=int, help="Time to live.")
@click.option("--group", help="Message group (FIFO queues).")
@click.option("--header", "headers", multiple=True, metavar="K=V", help="A header (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def topic_publish(ctx: click.Context, topic_name: str, body: str | None, dedup_id: str | None,
                  delay_ms: int | None, ttl_ms: int | None, group: str | None,
                  headers: tuple[str, ...], as_json: bool) -> None:
    """Publish BODY (or each line of standard input) to TOPIC."""
    hdrs = _headers(headers)
    bodies = [_arg_bytes(body)] if body is not None else list(_stdin_lines())
    if dedup_id and len(bodies) != 1:
        raise click.UsageError("--dedup-id applies to a single message")
    out: list[dict[str, Any]] = []
    with _client(ctx) as c:
        for text in bodies:
            r = c.publish(topic_name, text, headers=hdrs or None, dedup_id=dedup_id,
                          delay_ms=delay_ms, ttl_ms=ttl_ms, group=group)
            out.append({
                "dedup_id": r.dedup_id,
                "results": [{"queue": x.queue, "message_id": x.message_id,
                             "duplicate": x.duplicate, "error": x.error} for x in r.results],
            })
    if as_json:
        _print_json(out[0] if body is not None else out)
        return
    for item in out:
        parts = [
            f"{x['queue']}: " + (x["error"] or f"message {x['message_id']}"
                                 + (" (duplicate)" if x["duplicate"] else ""))
            for x in item["results"]
        ]
        click.echo(f"published to {_plural(len(parts), 'queue')}"
                   + (": " + "; ".join(parts) if parts else ""))


# ---------------------------------------------------------------------------------------------
# leader
# ---------------------------------------------------------------------------------------------


@cli.group()
def leader() -> None:
    """Leadership."""


@leader.command("transfer")
@click.option("--to", "to", type=int,
              help="Node id [the most up-to-date peer that answers the leader].")
@click.pass_context
def leader_transfer(ctx: click.Context, to: int | None) -> None:
    """Ask the leader to hand leadership over; returns once it moved (UNAVAILABLE if it cannot)."""
    with _client(ctx) as c:
        result = c.transfer_leadership(to)
    click.echo(f"leadership transferred from node {result.get('from')} to node {result.get('to')}")


# The membership commands (members, add-node, remove-node, replace-node, promote-node) live
# in their own module.
for _command in MEMBERSHIP_COMMANDS:
    cluster.add_command(_command)
