"""`raftq cluster members`, `add-node`, `remove-node`, `replace-node`, `promote-node`:
membership changes.

Added to the `cluster` group by cluster/cli.py (`MEMBERSHIP_COMMANDS`). `members`
works against any cluster; the other three also manage the processes and the configuration file
of a local cluster (`--data-dir`, default data/local: cluster.toml, pids.json, n<id>.log, as
`raftq cluster up` keeps them). docs/operations.md, "Membership", has the procedures.

Errors the cluster reports print as `error: CODE: message` (exit status 1): `UNKNOWN_MEMBER`,
`LAST_VOTER`, `NO_QUORUM`, `CHANGE_IN_PROGRESS` (another change still in flight when the call's
deadline passed), ... (docs/protocol.md). Local conditions (a port in use, a node that exited,
a node not caught up in time) print as `error: message`, also with status 1.
"""

from __future__ import annotations

import fcntl
import functools
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from cluster.cli_common import (
    _DATA_DIR,
    _client,
    _err,
    _fail,
    _out,
    _print_json,
    _running_recorded,
)
from cluster.client import Client
from cluster.errors import LastVoter, LearnerBehind, NoQuorum, RaftqError, UnknownMember
from cluster.launcher import (
    CONFIG_NAME,
    PIDS_NAME,
    Launcher,
    LauncherError,
    new_local_node,
    stop_recorded,
    with_node,
    without_node,
    write_config,
    write_pids,
)
from cluster.members import Member, Members
from node.config import ClusterConfig, format_addr, load, parse_addr

CAUGHT_UP_LAG = 100
"""Default `--max-lag`: a new node counts as caught up once the leader's commit index is at
most this many entries past what it holds (it answers the leader and is not being repaired)."""

_POLL_S = 0.2
"""How often `add-node` and `replace-node` read the membership while they wait."""


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


LOCK_NAME = ".membership.lock"
"""File in the data directory that `add-node`, `remove-node` and `replace-node` hold (flock)
while they run: two at once would both pick the membership's next id and rewrite
cluster.toml from what each read before the other's change."""


def _one_at_a_time(fn: Callable[..., None]) -> Callable[..., None]:
    """Run the command holding the local cluster's membership lock (`LOCK_NAME`); fail at once
    when another membership command of this data directory holds it."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        data_dir = Path(kwargs["data_dir"]).resolve()
        if not data_dir.is_dir():
            fn(*args, **kwargs)  # no local cluster: nothing local to protect
            return
        with open(data_dir / LOCK_NAME, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _fail(f"another membership command (add-node, remove-node, replace-node) is "
                      f"running on {data_dir}; run one at a time")
            try:
                fn(*args, **kwargs)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    return run


def _note(text: str) -> None:
    """A progress or advice line on stderr (plain: never wrapped, unlike rich's)."""
    click.echo(text, err=True)


def _members_table(view: Members) -> Table:
    table = Table(title=f"raftq members (term {view.term}, commit index {view.commit_index}, "
                        f"membership index {view.membership_index}, max id {view.max_id})")
    for name, justify in [("id", "right"), ("client address", "left"), ("raft address", "left"),
                          ("role", "left"), ("match index", "right"), ("lag", "right"),
                          ("state", "left"), ("health", "left"), ("", "left")]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for m in view.members:
        if m.repairing:
            health = "[yellow]repairing[/]"
        elif m.leader or m.recent_active:
            health = "[green]ok[/]"
        else:
            health = "[red]silent[/]"
        table.add_row(
            str(m.id), m.client_addr or "?", m.raft_addr or "?",
            m.role if m.is_voter else f"[cyan]{m.role}[/]",
            "" if m.match_index is None else str(m.match_index),
            "" if m.lag is None else str(m.lag),
            m.state or "", health, "[bold green]leader[/]" if m.leader else "",
        )
    return table


def _describe(m: Member | None) -> str:
    if m is None:
        return "not a member yet"
    lag = "?" if m.lag is None else str(m.lag)
    return f"{m.role}, match index {m.match_index}, lag {lag}{_flags(m)}"


def _flags(m: Member) -> str:
    return ("" if m.recent_active or m.leader else ", not answering") + (
        ", repairing" if m.repairing else "")


def _local_config(data_dir: Path) -> ClusterConfig:
    path = data_dir / CONFIG_NAME
    if not path.exists():
        _fail(f"no local cluster in {data_dir} (no {CONFIG_NAME}); start one with raftq cluster "
              "up, or add a node on another host with raftq node --join")
    return load(path)


def _check_local(view: Members, cfg: ClusterConfig, explicit_servers: bool) -> None:
    """Fail unless the cluster that answered is the local one of `cfg`: with `--servers` (or
    RAFTQ_SERVERS) pointing elsewhere, its nodes' processes are not ours to start or stop."""
    if not explicit_servers:
        return  # the servers came from cfg itself
    mine = set(cfg.client_addrs())
    if not any(addr in mine for addr in view.client_addrs()):
        _fail(f"the cluster at the given servers is not the local cluster of {cfg.path} (no "
              "member's client address is in it); use --data-dir of that cluster, or drop "
              "--servers")


def _explicit_servers(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("servers"))


def _record(data_dir: Path, config_path: Path, *, add: dict[int, int] | None = None,
            drop: int | None = None) -> None:
    """Update pids.json: the running recorded nodes, plus `add`, minus `drop`."""
    pids = {nid: n.pid for nid, n in _running_recorded(data_dir).items() if nid != drop}
    pids.update(add or {})
    path = data_dir / PIDS_NAME
    if pids:
        write_pids(path, config_path, pids)
    else:
        path.unlink(missing_ok=True)


def _stop_node(data_dir: Path, node_id: int) -> str | None:
    """Stop node `node_id` of the local cluster by its recorded pid; what happened, or None
    when it was not recorded as running."""
    running = _running_recorded(data_dir)
    if node_id not in running:
        return None
    outcome = stop_recorded([running[node_id]], timeout_s=10.0)[node_id]
    return f"{outcome} (pid {running[node_id].pid})"


def _listening(addr: tuple[str, int]) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(addr) == 0


def _aside(path: Path, why: str) -> Path:
    """Rename `path` to `<path>.<why>-<UTC time>` next to it; the new path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
    path.rename(target)
    return target


class _Progress:
    """One progress line on stderr: updated in place on a terminal, else printed when the
    phase (role, repairing, answering) changes."""

    def __init__(self, node_id: int) -> None:
        self._node_id = node_id
        self._console = _err()
        self._status = (self._console.status(f"node {node_id}: starting")
                        if self._console.is_terminal else None)
        self._phase: object = None

    def __enter__(self) -> _Progress:
        if self._status is not None:
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()

    def show(self, line: str, phase: object) -> None:
        text = f"node {self._node_id}: {line}"
        if self._status is not None:
            self._status.update(text)
        elif phase != self._phase:
            _note(text)
        self._phase = phase


def _wait_member(
    c: Client,
    node_id: int,
    *,
    voter: bool,
    max_lag: int,
    timeout_s: float,
    exited: Callable[[], str | None],
) -> Members:
    """Wait until `members` shows `node_id` as a voter (or, unless `voter`, a learner) that
    answers the leader, is not being repaired and lags by at most `max_lag` entries.

    Raises:
        LauncherError: its process exited (`exited()` says how), or not within `timeout_s`.
    """
    want = "voter" if voter else "learner"
    deadline = time.monotonic() + timeout_s
    line = "starting"
    with _Progress(node_id) as progress:
        while True:
            why = exited()
            if why is not None:
                raise LauncherError(why)
            phase: object
            try:
                view = c.members(timeout_s=2.0)
            except RaftqError as exc:
                line, phase = f"waiting for the leader ({exc.code})", exc.code
            else:
                m = view.get(node_id)
                if m is not None and (m.is_voter or not voter) and m.caught_up(max_lag):
                    return view
                line = _describe(m)
                phase = None if m is None else (m.role, _flags(m))
            progress.show(line, phase)
            if time.monotonic() >= deadline:
                raise LauncherError(
                    f"node {node_id} is not a caught-up {want} after {timeout_s:g} s ({line}); "
                    "it keeps running: see raftq cluster members, and its log"
                )
            time.sleep(_POLL_S)


def _join_addr(view: Members, exclude: str | None = None) -> str:
    addrs = [a for a in view.client_addrs() if a != exclude]
    if not addrs:
        _fail("no member has a known client address to join through")
    return addrs[0]  # the leader's first


def _start_and_wait(
    launcher: Launcher,
    data_dir: Path,
    c: Client,
    view: Members,
    node_id: int,
    *,
    learner: bool,
    max_lag: int,
    timeout_s: float,
    exclude: str | None = None,
) -> Members:
    """Start node `node_id` of the launcher's config (written already) with --join through a
    member (not `exclude`), record its pid, and wait until it is caught up.

    Raises:
        LauncherError: it could not start, exited, or did not catch up within `timeout_s`.
    """
    join = _join_addr(view, exclude)
    pid = launcher.start_node(node_id, join=join, learner=learner)
    _record(data_dir, launcher.config_path, add={node_id: pid})
    _note(f"started node {node_id} (pid {pid}, log {launcher.log_path(node_id)}), "
          f"joining through {join}")

    def exited() -> str | None:
        code = launcher.exit_code(node_id)
        if code is None:
            return None
        return (f"node {node_id} exited with status {code}: "
                f"{launcher._last_log_line(node_id)} (log: {launcher.log_path(node_id)})")

    return _wait_member(c, node_id, voter=not learner, max_lag=max_lag, timeout_s=timeout_s,
                        exited=exited)


def _undo_add(c: Client, cfg: ClusterConfig, data_dir: Path, launcher: Launcher,
              node_id: int, why: str) -> None:
    """After a failed add: if the node never became a member, stop it and take its entry out
    of cluster.toml again; else (or when the membership cannot be read) leave it, and say so."""
    try:
        member = c.members(timeout_s=5.0).get(node_id)
    except RaftqError as exc:
        _fail(f"{why}. Whether node {node_id} was admitted is not known (members: {exc.code}); "
              f"its entry stays in {cfg.path}: check with raftq cluster members")
    if member is not None:
        state = ("keeps running" if launcher.is_running(node_id)
                 else f"its process exited (log: {launcher.log_path(node_id)})")
        _fail(f"{why}. Node {node_id} is a member ({_describe(member)}) and {state}; wait, "
              f"restart it (raftq cluster up --detach), or take it out with: raftq cluster "
              f"remove-node {node_id}")
    launcher.stop_node(node_id)
    assert cfg.path is not None
    write_config(without_node(cfg, node_id), cfg.path)
    _record(data_dir, cfg.path, drop=node_id)
    _fail(f"{why}. Node {node_id} was not admitted: stopped it and took its entry out of "
          f"{cfg.path}")


def _check_quorum_without(view: Members, node_id: int) -> None:
    """Refuse, before anything is stopped, a removal the leader would refuse for lack of
    voters (LAST_VOTER) or of an active majority among the voters left (NO_QUORUM)."""
    member = view.get(node_id)
    if member is None or not member.is_voter:
        return
    left = [v for v in view.voters if v.id != node_id]
    if not left:
        raise LastVoter(None, f"node {node_id} is the last voter: a cluster needs one")
    active = [v for v in left if v.leader or v.recent_active]
    if len(active) * 2 <= len(left):
        raise NoQuorum(
            None,
            f"without node {node_id}, {len(active)} of the {len(left)} voters left answer the "
            "leader: no majority would be left to commit the replacement; bring the others back "
            "first",
        )


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


@click.command("members")
@_DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def cluster_members(ctx: click.Context, data_dir: Path, as_json: bool) -> None:
    """The members (voters and learners), read from the leader, with each one's match index
    and lag."""
    with _client(ctx, data_dir.resolve()) as c:
        view = c.members()
    if as_json:
        _print_json(view.to_json())
        return
    _out().print(_members_table(view))


_MAX_LAG = click.option(
    "--max-lag", type=click.IntRange(min=0), default=CAUGHT_UP_LAG, show_default=True,
    metavar="N", help="Caught up: at most N entries behind the leader's commit index.",
)
_WAIT = click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=1), default=60.0, show_default=True,
    metavar="S", help="How long to wait for the new node to catch up.",
)


@click.command("add-node")
@_DATA_DIR
@click.option("--learner", is_flag=True, help="Leave it a learner (no vote; not promoted).")
@_WAIT
@_MAX_LAG
@click.pass_context
@_one_at_a_time
def cluster_add_node(ctx: click.Context, data_dir: Path, learner: bool, timeout_s: float,
                     max_lag: int) -> None:
    """Start a new node of the local cluster and admit it: learner, catch-up, promotion.

    It gets the next id (the membership's max id + 1) and the ports the launcher's scheme
    gives that id; its entry is added to cluster.toml with `initial = false`.
    """
    data_dir = data_dir.resolve()
    cfg = _local_config(data_dir)
    assert cfg.path is not None
    with _client(ctx, data_dir) as c:
        view = c.members()
        _check_local(view, cfg, _explicit_servers(ctx))
        node_id = view.max_id + 1
        if node_id in cfg.nodes:  # left by an add that was interrupted: never admitted
            if node_id in _running_recorded(data_dir):
                _fail(f"node {node_id} of {cfg.path} runs but is not a member; stop it first "
                      "(raftq cluster down stops every node)")
            _note(f"dropping node {node_id}'s entry from {cfg.path}: it was never "
                  "admitted (an earlier add-node did not finish)")
            cfg = without_node(cfg, node_id)
        held = [parse_addr(a) for m in view.members for a in (m.client_addr, m.raft_addr) if a]
        node = new_local_node(cfg, node_id, members_addrs=held)
        if node.data_dir.exists() and any(node.data_dir.iterdir()):
            moved = _aside(node.data_dir, "never-admitted")
            _note(f"moved the leftover data directory of node {node_id} (never admitted) "
                  f"to {moved}")
        cfg = write_config(with_node(cfg, node), data_dir / CONFIG_NAME)
        _note(f"added node {node_id} to {cfg.path} (client {format_addr(node.client_addr)}"
              f", raft {format_addr(node.raft_addr)}, data {node.data_dir})")
        launcher = Launcher(cfg)
        try:
            view = _start_and_wait(launcher, data_dir, c, view, node_id, learner=learner,
                                   max_lag=max_lag, timeout_s=timeout_s)
        except (LauncherError, RaftqError) as exc:
            _undo_add(c, cfg, data_dir, launcher, node_id, str(exc))
        except KeyboardInterrupt:
            _undo_add(c, cfg, data_dir, launcher, node_id, "interrupted")
    _out().print(_members_table(view))
    role = "learner" if learner else "voter"
    click.echo(f"node {node_id} added as a {role} at {format_addr(node.client_addr)}")


@click.command("remove-node")
@click.argument("node_id", metavar="ID", type=click.IntRange(min=1))
@_DATA_DIR
@click.pass_context
@_one_at_a_time
def cluster_remove_node(ctx: click.Context, node_id: int, data_dir: Path) -> None:
    """Remove member ID from the cluster; in a local cluster, also stop its process and take
    its entry out of cluster.toml (its data directory is left in place).

    Removing the leader: it hands leadership over first.
    """
    data_dir = data_dir.resolve()
    cfg = load(data_dir / CONFIG_NAME) if (data_dir / CONFIG_NAME).exists() else None
    with _client(ctx, data_dir) as c:
        view = c.members()
        if cfg is not None:
            _check_local(view, cfg, _explicit_servers(ctx))
        try:
            change = c.remove_member(node_id)
        except UnknownMember:
            # Removed before (say, by a remove-node that stopped half-way)? Then finish the
            # local part; an id that was never given is an error.
            if cfg is None or node_id not in cfg.nodes or node_id > view.max_id:
                raise
            click.echo(f"node {node_id} is not a member (removed before); cleaning up its "
                       "local entry")
        else:
            click.echo(f"removed node {node_id} from the cluster (membership index "
                       f"{change.index})")
    if cfg is None or node_id not in cfg.nodes:
        click.echo(f"node {node_id} is not in a local cluster.toml under {data_dir}: stop its "
                   "process yourself")
        return
    assert cfg.path is not None
    entry = cfg.nodes[node_id]
    stopped = _stop_node(data_dir, node_id)
    _record(data_dir, cfg.path, drop=node_id)
    if stopped is not None:
        click.echo(f"node {node_id}: {stopped}")
    elif _listening(entry.client_addr):
        _note(f"warning: something still listens on {format_addr(entry.client_addr)} "
              f"(not recorded in {data_dir / PIDS_NAME}): stop it yourself")
    write_config(without_node(cfg, node_id), cfg.path)
    click.echo(f"took node {node_id} out of {cfg.path}; its data directory {entry.data_dir} is "
               "left in place (delete it when you no longer need it)")


@click.command("replace-node")
@click.argument("node_id", metavar="ID", type=click.IntRange(min=1))
@_DATA_DIR
@_WAIT
@_MAX_LAG
@click.pass_context
@_one_at_a_time
def cluster_replace_node(ctx: click.Context, node_id: int, data_dir: Path, timeout_s: float,
                         max_lag: int) -> None:
    """Replace node ID of the local cluster (lost its disk, or broken) by a new node with a new
    id at the same addresses and data directory path.

    Stops ID's process if it runs, removes it from the membership, moves its data directory
    aside (kept for a post-mortem), starts the new node with --join and waits until it votes.
    """
    data_dir = data_dir.resolve()
    cfg = _local_config(data_dir)
    assert cfg.path is not None
    if node_id not in cfg.nodes:
        _fail(f"node {node_id} is not in {cfg.path} (ids: {sorted(cfg.nodes)})")
    old = cfg.nodes[node_id]
    addr = format_addr(old.client_addr)
    with _client(ctx, data_dir) as c:
        view = c.members()
        _check_local(view, cfg, _explicit_servers(ctx))
        if view.get(node_id) is None:
            raise UnknownMember(None, f"node {node_id} is not a member (ids: {view.ids})")
        _check_quorum_without(view, node_id)
        stopped = _stop_node(data_dir, node_id)
        if stopped is not None:
            click.echo(f"node {node_id}: {stopped}")
        if _listening(old.client_addr):
            _fail(f"something still listens on {addr} (not recorded in {data_dir / PIDS_NAME}):"
                  f" stop node {node_id}'s process first")
        _record(data_dir, cfg.path, drop=node_id)
        change = c.remove_member(node_id)
        click.echo(f"removed node {node_id} from the cluster (membership index {change.index})")
        if old.data_dir.exists():
            moved = _aside(old.data_dir, f"replaced-node{node_id}")
            click.echo(f"moved node {node_id}'s data directory {old.data_dir} aside to {moved} "
                       "(kept for a post-mortem; delete it when no longer needed)")
        view = c.members()
        new_id = view.max_id + 1
        new = replace(old, id=new_id, initial=False)
        cfg = write_config(with_node(without_node(cfg, node_id), new), data_dir / CONFIG_NAME)
        click.echo(f"node {new_id} takes node {node_id}'s place in {cfg.path}")
        try:
            view = _start_and_wait(Launcher(cfg), data_dir, c, view, new_id, learner=False,
                                   max_lag=max_lag, timeout_s=timeout_s, exclude=addr)
        except LauncherError as exc:
            _fail(f"{exc}; node {node_id} is removed and node {new_id} is in {cfg.path}: "
                  f"see raftq cluster members (remove it with raftq cluster remove-node {new_id})")
    _out().print(_members_table(view))
    click.echo(f"node {node_id} replaced by node {new_id} at {addr}")


@click.command("promote-node")
@click.argument("node_id", metavar="ID", type=click.IntRange(min=1))
@_DATA_DIR
@_WAIT
@click.pass_context
def cluster_promote_node(ctx: click.Context, node_id: int, data_dir: Path,
                         timeout_s: float) -> None:
    """Make learner ID a voter (e.g. one added with add-node --learner), asking again while it
    has not caught up (LEARNER_BEHIND)."""
    deadline = time.monotonic() + timeout_s
    with _client(ctx, data_dir.resolve()) as c, _Progress(node_id) as progress:
        while True:
            try:
                change = c.promote_member(node_id)
                break
            except LearnerBehind as exc:
                if time.monotonic() >= deadline:
                    raise LearnerBehind(exc.code, f"{exc.message} (still after {timeout_s:g} s)"
                                        ) from None
                progress.show(f"not promoted yet: {exc.message}", exc.code)
                time.sleep(_POLL_S)
    click.echo(f"node {node_id} promoted to voter (membership index {change.index})")


MEMBERSHIP_COMMANDS = (cluster_members, cluster_add_node, cluster_remove_node, cluster_replace_node, cluster_promote_node,)
"""The commands of this module, added to `raftq cluster` by cluster/cli.py."""
