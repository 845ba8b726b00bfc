"""One run against a real cluster: start it, run the workload and the nemesis together, heal,
drain, check.

The cluster is a black box: node processes (`NodeProcs`) started from a configuration whose
`dial` entries send every node-to-node link through the harness's proxies (`ProxyMesh`), and
clients (`cluster.client.AsyncClient`) that talk to the nodes' client ports. Steps:

1. bind the proxies, write the configuration, start the nodes, wait for a leader, create the
   workload's queues;
2. for `duration_s`: producers, consumers, readers and the nemesis in one nursery, a progress
   line;
3. heal everything (links, paused and killed nodes), wait for a leader, wait past the longest
   visibility timeout, drain every queue (dead-letter queues included) until several empty
   receives in a row and no message left;
4. take every node's final status (commit index, applied index, state digest);
5. stop every process it started, by pid, also on failure; check the history.

Process ids in the history: producers `0 .. P-1`, consumers `P .. P+C-1` (a consumer that
crashes on purpose continues as `id + concurrency`), readers `READER_PROCESS + k`, the drainer
`DRAIN_PROCESS`.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from cluster.client import AsyncClient, Message
from cluster.errors import (
    BadFrame,
    Busy,
    ClusterUnavailable,
    InternalError,
    NotLeader,
    OutcomeUnknownError,
    RaftqError,
    Unavailable,
)
from cluster.members import Members
from jepsen_like.checker import QueueSpec, check
from jepsen_like.generator import EnqueueOp, Generator, ReceiveOp, Workload
from jepsen_like.history import Delivery, History, Op, body_of, value_of
from jepsen_like.membership_nemesis import (
    MembershipNemesis,
    check_membership,
    final_members,
    spare_ids_needed,
    tell_clients,
)
from jepsen_like.nemesis import Fault, Nemesis, make_schedule
from jepsen_like.procs import NodeProcs
from jepsen_like.proxy import ProxyMesh
from node import config as config_mod

__all__ = [
    "DRAIN_PROCESS",
    "READER_PROCESS",
    "RunOptions",
    "RunOutcome",
    "RunSetupError",
    "run",
    "run_sync",
]

logger = logging.getLogger("jepsen_like.runner")

DRAIN_PROCESS = 100_000
"""Process id of the drainer in the history (its acks use the next ids)."""

READER_PROCESS = 90_000
"""Process id of the first reader in the history (reader k is `READER_PROCESS + k`)."""

STATS_TOTALS = ("enqueued", "delivered", "redelivered", "acked", "dead_lettered", "expired",
                "purged", "redriven")
"""The lifetime totals of a `queue_stats` reply that a reader records (`Op.totals`)."""

DRAIN_BATCH = 50
"""Most messages one drain receive asks for (their acks run concurrently)."""

ExtraCheck = Callable[["RunOutcome"], dict[str, Any]]


@dataclass
class RunOptions:
    """Everything one run needs.

    Attributes:
        out_dir: where the results, the history, the node logs and data go.
        nemeses: nemesis kinds to schedule from the seed (ignored when `schedule` is given).
        schedule: an explicit list of faults (a scenario's), instead of a drawn one.
        duration_s: length of the workload, seconds.
        rate: enqueue and receive invocations per second, all clients together.
        concurrency: client processes (producers and consumers).
        seed: the seed of the schedule and the workload (random when None).
        nodes: cluster size.
        tick_ms, election_ticks, heartbeat_ticks: the nodes' Raft timing.
        snapshot_entries: the nodes take a snapshot after this many applied entries (None:
            the node default); small values exercise log compaction and snapshot installs.
        workload: what the clients do.
        op_timeout_s: deadline of one client operation, retries included, seconds.
        request_timeout_s: how long a client waits for the answer to one attempt of a send or
            a read before it tries another node (the client's `request_timeout_s`).
        drain_timeout_s: longest drain, seconds.
        drain_empty_rounds: empty receives in a row, per queue, that end the drain.
        require_faults: the run is invalid if the nemesis injected nothing.
        progress: print a progress line every `progress_every_s`.
        progress_every_s: seconds between progress lines.
        scenario: the scenario's name, when the run is one.
        extra_checks: more checks run on the outcome; each returns a map with `valid`.
        node_log_level: the nodes' log level.
        plots: write the PNG plots.
        schedule_opts: keyword arguments of `make_schedule` (durations, gaps).
    """

    out_dir: Path
    nemeses: tuple[str, ...] = ("kill", "pause", "partition", "restart-all")
    schedule: list[Fault] | None = None
    duration_s: float = 60.0
    rate: float = 200.0
    concurrency: int = 8
    seed: int | None = None
    nodes: int = 3
    tick_ms: int = 30
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    snapshot_entries: int | None = None
    workload: Workload = field(default_factory=Workload)
    op_timeout_s: float = 4.0
    request_timeout_s: float = 1.0
    drain_timeout_s: float = 60.0
    drain_empty_rounds: int = 3
    require_faults: bool = True
    progress: bool = True
    progress_every_s: float = 2.0
    scenario: str | None = None
    extra_checks: Sequence[ExtraCheck] = ()
    node_log_level: str = "INFO"
    schedule_opts: dict[str, Any] = field(default_factory=dict)
    plots: bool = True

    def describe(self) -> dict[str, Any]:
        """The options as JSON-ready data."""
        d = {k: v for k, v in asdict(self).items() if k not in ("extra_checks", "schedule")}
        d["out_dir"] = str(self.out_dir)
        d["schedule"] = [f.to_json() for f in self.schedule] if self.schedule is not None else None
        return d


@dataclass
class RunOutcome:
    """What a run produced, before and after checking.

    Attributes:
        options: the options (seed filled in).
        history: every operation.
        faults: the nemesis's records, as dicts.
        schedule: the faults planned.
        final_statuses: every node's status at the end (None when not taken).
        generator: the workload generator (its poison values).
        timings_s: how long each phase took.
        drain: the drain's summary.
        proxies: the proxies' counters.
        check: the checker's result (filled by `run`).
        error: an error that stopped the run early, or None.
        crashes: node processes that exited although nothing stopped them, with the time
            (seconds since the start) and the end of their log.
        final_members: the cluster's members at the end (`view_summary` of `members`), when
            the run had membership faults.
    """

    options: RunOptions
    history: History
    faults: list[dict[str, Any]] = field(default_factory=list)
    schedule: list[Fault] = field(default_factory=list)
    final_statuses: list[dict[str, Any]] | None = None
    generator: Generator | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    drain: dict[str, Any] = field(default_factory=dict)
    proxies: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    workload_window_s: tuple[float, float] = (0.0, 0.0)
    pids: dict[str, list[int]] = field(default_factory=dict)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    final_members: dict[str, Any] | None = None

    @property
    def valid(self) -> bool:
        return bool(self.check.get("valid")) and self.error is None


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _free_ports(n: int) -> list[int]:
    """`n` distinct ports of 127.0.0.1 that are free now, outside the kernel's ephemeral range.

    The nodes bind them only later, so they are drawn where the kernel does not hand out ports
    for outgoing connections or `bind(0)` (the proxies' listeners, the clients): no collision
    with the run's own sockets in between.
    """
    lo, hi = _ephemeral_range()
    candidates = range(20000, lo) if lo > 21000 else range(hi + 1, 65536)
    rng = random.Random()
    out: list[int] = []
    for port in rng.sample(candidates, min(len(candidates), 50 * n)):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        out.append(port)
        if len(out) == n:
            return out
    raise RunSetupError(f"cannot find {n} free ports on 127.0.0.1")


def classify(exc: BaseException) -> tuple[str, str]:
    """Map a client error to a completion type and an error code.

    `fail` only where the operation certainly did not happen: the node said so (a machine
    error such as `INVALID_RECEIPT`, `NOT_LEADER`, `UNAVAILABLE`, `BUSY`) or the client gave up
    before any attempt could have reached a leader (`ClusterUnavailable`). Everything else
    (`OutcomeUnknownError`, a garbled reply, an internal error, our own deadline) is `info`.
    """
    if isinstance(exc, OutcomeUnknownError):
        return "info", exc.code
    if isinstance(exc, (BadFrame, InternalError)):
        return "info", exc.code
    if isinstance(exc, (ClusterUnavailable, NotLeader, Unavailable, Busy)):
        return "fail", exc.code
    if isinstance(exc, RaftqError):
        return "fail", exc.code
    if isinstance(exc, trio.TooSlowError):
        return "info", "HARNESS_TIMEOUT"
    return "info", type(exc).__name__


def _death_of(m: Message) -> dict[str, Any] | None:
    h = m.headers
    if "x-death-reason" not in h:
        return None

    def as_int(text: str | None) -> int | None:
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None

    return {
        "reason": h.get("x-death-reason"),
        "queue": h.get("x-death-queue"),
        "message_id": as_int(h.get("x-death-message-id")),
        "delivery_count": as_int(h.get("x-death-delivery-count")),
    }


def _delivery(m: Message) -> Delivery:
    return Delivery(value_of(m.body), m.message_id, m.receipt, m.delivery_count, m.group,
                    _death_of(m))


class RunSetupError(Exception):
    """The run cannot start (e.g. its output directory holds an earlier run)."""


class _RateLimiter:
    """Spaces invocations evenly at `rate_per_s` (no burst beyond one second of backlog)."""

    def __init__(self, rate_per_s: float) -> None:
        self.interval_s = 1.0 / max(rate_per_s, 0.001)
        self.next_s: float | None = None

    async def acquire(self) -> None:
        now = trio.current_time()
        if self.next_s is None or self.next_s < now - 1.0:
            self.next_s = now
        slot = self.next_s
        self.next_s += self.interval_s
        await trio.sleep_until(slot)


class Run:
    """The state of one run (see the module docstring). Use `run()`.

    Args:
        opts: the run's options.
        history: where operations are recorded (default: a new one on the real clocks).
    """

    def __init__(self, opts: RunOptions, history: History | None = None) -> None:
        self.opts = opts
        self.seed = opts.seed if opts.seed is not None else random.randrange(1 << 31)
        opts.seed = self.seed
        self.history = history if history is not None else History()
        self.open_stream: Callable[[str, int], Awaitable[trio.abc.Stream]] = trio.open_tcp_stream
        """How the clients connect to a node (TCP; the whole-node simulator: in memory)."""
        self.gen = Generator(opts.workload, self.seed)
        self.outcome = RunOutcome(opts, self.history, generator=self.gen)
        self.stop = trio.Event()
        self.addrs: list[str] = []
        self.cfg: config_mod.ClusterConfig | None = None
        self.procs: NodeProcs | None = None
        self.mesh: ProxyMesh | None = None
        self.nemesis: Nemesis | None = None
        self.admin: AsyncClient | None = None
        self.spare: dict[int, config_mod.NodeConfig] = {}
        """Entries for the ids a membership fault may add (their links have proxies too)."""
        self.clients: list[AsyncClient] = []
        """Every client `_client` made (told of membership changes)."""
        self.phase = "setup"

    # -- clock ----------------------------------------------------------------------------
    def clock_s(self) -> float:
        return self.history.now_ns() / 1e9

    # -- setup ----------------------------------------------------------------------------
    async def _build_cluster(self, spare: int = 0) -> None:
        """Bind the proxies, write the configuration; with `spare` ids beyond the initial
        nodes prepared for membership faults (ports, proxies, entries in `self.spare`)."""
        o = self.opts
        for leftover in ("data", "cluster.toml", "history.jsonl"):
            if (o.out_dir / leftover).exists():
                raise RunSetupError(
                    f"{o.out_dir} already holds a run ({leftover}); a run needs a fresh cluster: "
                    "choose another --out or remove it"
                )
        o.out_dir.mkdir(parents=True, exist_ok=True)
        every = list(range(1, o.nodes + spare + 1))
        ports = _free_ports(2 * len(every))
        raft = {i: ("127.0.0.1", ports[2 * (i - 1)]) for i in every}
        client = {i: ("127.0.0.1", ports[2 * (i - 1) + 1]) for i in every}
        self.mesh = ProxyMesh(raft)
        dial = await self.mesh.bind()
        entries = {
            i: config_mod.NodeConfig(i, raft[i], client[i], (o.out_dir / "data" / f"n{i}"),
                                     dial[i], initial=i <= o.nodes)
            for i in every
        }
        nodes = {i: entries[i] for i in every if i <= o.nodes}
        self.spare = {i: entries[i] for i in every if i > o.nodes}
        cfg = config_mod.ClusterConfig(
            cluster_id=f"jepsen-{self.seed}",
            secret=f"jepsen-secret-{self.seed:012d}-{random.randrange(1 << 30)}".encode(),
            nodes=nodes,
            tick_ms=o.tick_ms,
            election_ticks=o.election_ticks,
            heartbeat_ticks=o.heartbeat_ticks,
        )
        if o.snapshot_entries is not None:
            # Snapshots asked for, and installed: the log keeps a margin of half as many.
            cfg = replace(cfg, snapshot_entries=o.snapshot_entries,
                          log_margin_entries=min(cfg.log_margin_entries, o.snapshot_entries // 2))
        self.cfg = config_mod.write(cfg, o.out_dir / "cluster.toml")
        self.addrs = self.cfg.client_addrs()
        self.procs = NodeProcs(self.cfg, o.out_dir / "logs", o.node_log_level)

    def _client(self, process: int, first: int | None = None) -> AsyncClient:
        """A client of its own for `process`, its servers listed from node `first` (default:
        `process` modulo the cluster size) on."""
        k = (process if first is None else first) % len(self.addrs)
        servers = self.addrs[k:] + self.addrs[:k]
        client = AsyncClient(
            servers,
            timeout_s=self.opts.op_timeout_s,
            connect_timeout_s=0.5,
            request_timeout_s=self.opts.request_timeout_s,
            backoff_initial_s=0.02,
            backoff_max_s=0.5,
            consumer_id=f"c{process}",
            rng=random.Random(f"{self.seed}/client/{process}"),
            open_stream=self.open_stream,
        )
        self.clients.append(client)
        return client

    def _member_addrs(self) -> dict[int, str]:
        """Client address of each node that is a member now, by id."""
        assert self.procs is not None
        return {nid: self.procs.client_addr(nid) for nid in self.procs.member_ids}

    async def _members_changed(self, view: Members) -> int:
        """After a membership change: new clients start from the members' addresses, and
        every client made so far learns them (`tell_clients`)."""
        self.addrs = [m.client_addr for m in view.members if m.client_addr]
        return await tell_clients(self.clients)

    async def node_statuses(self, timeout_s: float = 1.0) -> list[dict[str, Any]]:
        """Every member's `node_status` (or `{"node_id", "error"}`), asked in parallel."""
        assert self.admin is not None
        out: dict[int, dict[str, Any]] = {}
        admin = self.admin

        async def ask(nid: int, addr: str) -> None:
            try:
                with trio.fail_after(timeout_s + 0.5):
                    out[nid] = await admin.node_status(addr, timeout_s=timeout_s, digest=True)
            except (RaftqError, trio.TooSlowError, OSError) as exc:
                out[nid] = {"node_id": nid, "error": f"{type(exc).__name__}: {exc}"}

        async with trio.open_nursery() as nursery:
            for nid, addr in self._member_addrs().items():
                nursery.start_soon(ask, nid, addr)
        return [out[i] for i in sorted(out)]

    async def node_status_of(self, nid: int, timeout_s: float = 0.5) -> dict[str, Any] | None:
        """One node's `node_status` (no digest), None when it does not answer."""
        assert self.admin is not None and self.procs is not None
        addr = self.procs.client_addr(nid)
        try:
            with trio.fail_after(timeout_s + 0.5):
                return await self.admin.node_status(addr, timeout_s=timeout_s)
        except (RaftqError, trio.TooSlowError, OSError):
            return None

    async def find_leader(self) -> int | None:
        """The node that says it leads, with the highest term; None when none does."""
        sts = await self.node_statuses(0.5)
        leaders = [s for s in sts if s.get("role") == "leader"]
        if not leaders:
            return None
        return int(max(leaders, key=lambda s: s.get("term", 0))["node_id"])

    async def wait_for_leader(self, timeout_s: float) -> int:
        """Wait until a node leads and a majority of the members name it. Raises
        TooSlowError."""
        with trio.fail_after(timeout_s):
            while True:
                sts = await self.node_statuses(0.5)
                leaders = [s for s in sts if s.get("role") == "leader"]
                if leaders:
                    lead = max(leaders, key=lambda s: s.get("term", 0))
                    agree = [s for s in sts if s.get("leader_id") == lead["node_id"]
                             and s.get("term") == lead["term"]]
                    if len(agree) > len(sts) // 2:
                        return int(lead["node_id"])
                await trio.sleep(0.05)

    async def _create_queues(self) -> None:
        assert self.admin is not None
        for q in self.opts.workload.queues:
            with trio.fail_after(30):
                while True:
                    try:
                        await self.admin.create_queue(q.name, **q.options())
                        break
                    except (OutcomeUnknownError, ClusterUnavailable) as exc:
                        logger.info("create_queue %s: %s; again", q.name, exc)

    # -- workers --------------------------------------------------------------------------
    async def _call(self, inv: Op, fn: Callable[[], Any], deadline_s: float) -> Any:
        """Run one client call for the invocation `inv` and record its completion.

        Returns the call's result, or None when the completion is `fail` or `info`.
        """
        try:
            with trio.fail_after(deadline_s):
                result = await fn()
        except trio.Cancelled:
            self.history.complete(inv, "info", error="CANCELLED")
            raise
        except Exception as exc:
            type_, code = classify(exc)
            self.history.complete(inv, type_, error=code)
            return None
        return result

    async def producer(self, process: int, limiter: _RateLimiter) -> None:
        """Send unique values until told to stop."""
        h = self.history
        async with self._client(process) as client:
            while not self.stop.is_set():
                await limiter.acquire()
                if self.stop.is_set():
                    break
                op: EnqueueOp = self.gen.enqueue(process)
                inv = h.invoke("enqueue", process, queue=op.queue, value=op.value,
                               dedup_id=op.dedup_id, group=op.group,
                               tag="poison" if op.poison else None)

                async def send(op: EnqueueOp = op) -> Any:
                    return await client.send(op.queue, body_of(op.value), dedup_id=op.dedup_id,
                                             group=op.group)

                r = await self._call(inv, send, self.opts.op_timeout_s + 2)
                if r is not None:
                    h.complete(inv, "ok", message_id=r.message_id, duplicate=r.duplicate)

    async def consumer(self, process: int, limiter: _RateLimiter) -> None:
        """Receive, then ack, nack, crash or ack too late, until told to stop."""
        h = self.history
        wl = self.opts.workload
        p = process
        async with self._client(process) as client:
            while not self.stop.is_set():
                await limiter.acquire()
                if self.stop.is_set():
                    break
                op: ReceiveOp = self.gen.receive(p)
                inv = h.invoke("receive", p, queue=op.queue, max_messages=op.max_messages,
                               visibility_timeout_ms=op.visibility_timeout_ms,
                               tag="stale-ack" if op.stale else None)

                async def receive(op: ReceiveOp = op, name: str = f"c{p}") -> Any:
                    return await client.receive(
                        op.queue, max_messages=op.max_messages, wait_s=op.wait_s,
                        visibility_timeout_ms=op.visibility_timeout_ms, consumer=name)

                msgs = await self._call(inv, receive, self.opts.op_timeout_s + op.wait_s + 2)
                if msgs is None:
                    continue
                deliveries = [_delivery(m) for m in msgs]
                h.complete(inv, "ok", messages=deliveries)
                for k, d in enumerate(deliveries):
                    action = self.gen.action(p, d.value, op)
                    if action == "crash":
                        h.append(Op("info", "crash", p, queue=op.queue,
                                    receipts=[x.receipt for x in deliveries[k:]]))
                        p += self.opts.concurrency
                        break
                    if action == "stale-ack":
                        await trio.sleep(wl.stale_hold_s)
                    await self.settle(client, p, "nack" if action == "nack" else "ack", op.queue,
                                      d, tag="stale-ack" if action == "stale-ack" else None)

    async def settle(self, client: AsyncClient, p: int, f: str, queue: str, d: Delivery,
                     tag: str | None = None) -> bool:
        """Ack or nack one delivery and record it. Returns True when it completed ok."""
        inv = self.history.invoke(f, p, queue=queue, value=d.value, receipt=d.receipt,
                                  message_id=d.message_id, delivery_count=d.delivery_count,
                                  tag=tag)

        async def call() -> Any:
            if f == "ack":
                return await client.ack(queue, [d.receipt])
            return await client.nack(queue, d.receipt)

        r = await self._call(inv, call, self.opts.op_timeout_s + 2)
        if r is None:
            return False
        self.history.complete(inv, "ok", message_id=d.message_id,
                              delivery_count=d.delivery_count)
        return True

    async def reader(self, k: int) -> None:
        """Reader `k`: `queue_stats` of the workload's queues, one every 1 / `read_rate` s (no
        catching up after a slow one), until told to stop.

        Its client lists node `k` first and sticks to whichever node it believes leads, so the
        readers start on different nodes and a reader keeps asking a leader that was cut off
        as long as it answers. Records `stats` operations, an ok one with the queue's lifetime
        totals (`totals`), for the checker's `reads` rule.
        """
        h = self.history
        p = READER_PROCESS + k
        interval_s = 1.0 / max(self.opts.workload.read_rate, 0.001)
        async with self._client(p, first=k) as client:
            while not self.stop.is_set():
                await trio.sleep(interval_s)
                if self.stop.is_set():
                    break
                op = self.gen.read(p)
                inv = h.invoke("stats", p, queue=op.queue)

                async def stats(q: str = op.queue) -> Any:
                    return await client.queue_stats(q)

                r = await self._call(inv, stats, self.opts.op_timeout_s + 2)
                if r is not None:
                    h.complete(inv, "ok", totals={
                        name: int(r[name]) for name in STATS_TOTALS if name in r})

    def start_readers(self, nursery: trio.Nursery) -> int:
        """Start the workload's readers (default: one per node); returns how many."""
        wl = self.opts.workload
        n = len(self.addrs) if wl.readers is None else wl.readers
        for k in range(n):
            nursery.start_soon(self.reader, k)
        return n

    # -- phases ---------------------------------------------------------------------------
    async def _progress(self) -> None:
        from jepsen_like.report import progress_line

        while True:
            await trio.sleep(self.opts.progress_every_s)
            nem = self.nemesis
            print(progress_line(self.clock_s(), self.phase, self.history,
                                nem.records if nem else [], nem.active if nem else {}),
                  flush=True)

    async def _workload(self, schedule: list[Fault]) -> None:
        o = self.opts
        n_prod = max(1, round(o.concurrency * o.workload.producer_share))
        n_cons = max(1, o.concurrency - n_prod)
        prod_limiter = _RateLimiter(o.rate * n_prod / (n_prod + n_cons))
        cons_limiter = _RateLimiter(o.rate * n_cons / (n_prod + n_cons))
        assert self.nemesis is not None
        t0 = self.clock_s()
        t_end = trio.current_time() + o.duration_s
        self.phase = "workload"
        async with trio.open_nursery() as outer:
            nem_done = trio.Event()

            async def nemesis_task() -> None:
                assert self.nemesis is not None
                try:
                    with trio.move_on_at(t_end):
                        await self.nemesis.run(schedule, t0)
                finally:
                    nem_done.set()

            outer.start_soon(nemesis_task)
            with trio.move_on_at(t_end + o.op_timeout_s + o.workload.stale_hold_s + 5):
                async with trio.open_nursery() as workers:
                    for p in range(n_prod):
                        workers.start_soon(self.producer, p, prod_limiter)
                    for p in range(n_prod, n_prod + n_cons):
                        workers.start_soon(self.consumer, p, cons_limiter)
                    self.start_readers(workers)
                    await trio.sleep_until(t_end)
                    self.stop.set()
            await nem_done.wait()
        self.outcome.workload_window_s = (t0, self.clock_s())

    async def _drain(self) -> dict[str, Any]:
        """Receive and settle everything left, dead-letter queues included.

        One task per queue (each its own history process, its acks on the next process ids,
        concurrently) receives and acks (poison messages of a source queue are nacked, so they
        reach the dead-letter queue); the drain ends when every queue gave
        `drain_empty_rounds` empty receives in a row and the leader counts no message left
        (ready, leased or delayed) in any of them.
        """
        o = self.opts
        queues = [q.name for q in o.workload.queues] + [q.dlq for q in o.workload.queues]
        empties = dict.fromkeys(queues, 0)
        received = Counter[str]()
        rounds = Counter[str]()
        done = False
        stop = trio.Event()
        async with self._client(DRAIN_PROCESS) as client:
            # Past the deadline the queue tasks are cancelled; before it they stop gracefully
            # (each finishes its operation), so no request is abandoned on a closing client.
            with trio.move_on_after(o.drain_timeout_s + o.op_timeout_s + 5):
                async with trio.open_nursery() as nursery:
                    for k, q in enumerate(queues):
                        nursery.start_soon(self._drain_queue, client, q, DRAIN_PROCESS + 1000 * k,
                                           empties, received, rounds, stop)
                    with trio.move_on_after(o.drain_timeout_s):
                        while True:
                            await trio.sleep(0.1)
                            if not all(n >= o.drain_empty_rounds for n in empties.values()):
                                continue
                            left = await self._messages_left(client, queues)
                            if left is not None and not any(left.values()):
                                done = True
                                break
                            # Leased messages (an ack that failed, a lease not ended yet).
                            for q in queues:
                                if left is None or left.get(q):
                                    empties[q] = 0
                    stop.set()
        return {"complete": done, "rounds": dict(rounds), "received": dict(received)}

    async def _drain_queue(
        self, client: AsyncClient, q: str, p: int, empties: dict[str, int],
        received: Counter[str], rounds: Counter[str], stop: trio.Event,
    ) -> None:
        o = self.opts
        h = self.history
        dlqs = {x.dlq for x in o.workload.queues}
        vt_ms = {x.name: x.visibility_timeout_ms for x in o.workload.queues}.get(
            q, max(2000, o.workload.max_visibility_timeout_ms))
        while not stop.is_set():
            rounds[q] += 1
            inv = h.invoke("receive", p, queue=q, max_messages=DRAIN_BATCH,
                           visibility_timeout_ms=vt_ms, tag="drain")

            async def receive() -> Any:
                return await client.receive(q, max_messages=DRAIN_BATCH,
                                            visibility_timeout_ms=vt_ms)

            msgs = await self._call(inv, receive, o.op_timeout_s + 2)
            if msgs is None:
                empties[q] = 0
                await trio.sleep(0.1)
                continue
            ds = [_delivery(m) for m in msgs]
            h.complete(inv, "ok", messages=ds)
            received[q] += len(ds)
            if not ds:
                empties[q] += 1
                await trio.sleep(0.05)
                continue
            empties[q] = 0
            async with trio.open_nursery() as acks:
                for k, d in enumerate(ds):
                    poison = d.value is not None and d.value in self.gen.poison_values
                    f = "nack" if poison and q not in dlqs else "ack"
                    acks.start_soon(self._settle_quietly, client, p + 1 + k, f, q, d)

    async def _settle_quietly(self, client: AsyncClient, p: int, f: str, queue: str,
                              d: Delivery) -> None:
        await self.settle(client, p, f, queue, d, tag="drain")

    async def _messages_left(self, client: AsyncClient, queues: list[str]) -> dict[str, int] | None:
        out = {}
        try:
            for q in queues:
                st = await client.queue_stats(q)
                out[q] = int(st.get("messages", 0))
        except RaftqError:
            return None
        return out

    async def _final_statuses(self, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Poll every node until all report the same commit index, applied index and digest."""
        sts: list[dict[str, Any]] = []
        with trio.move_on_after(timeout_s):
            while True:
                sts = await self.node_statuses(1.0)
                if all("error" not in s for s in sts) and all(
                    len({str(s.get(k)) for s in sts}) == 1
                    for k in ("commit_index", "applied_index", "digest")
                ):
                    break
                await trio.sleep(0.2)
        return sts

    def _collect_crashes(self) -> None:
        assert self.procs is not None
        for c in self.procs.unexpected_exits():
            c["seen_at_s"] = round(self.clock_s(), 3)
            c["phase"] = self.phase
            logger.error("node %s (pid %s) exited by itself with status %s", c["node_id"],
                         c["pid"], c["exit_code"])
            self.outcome.crashes.append(c)

    async def _watch_crashes(self) -> None:
        while True:
            self._collect_crashes()
            await trio.sleep(0.2)

    async def execute(self) -> RunOutcome:
        """Run every step (see the module docstring) and return the unchecked outcome."""
        o = self.opts
        out = self.outcome
        t = time.monotonic()
        schedule = (
            list(o.schedule) if o.schedule is not None
            else make_schedule(o.nemeses, o.duration_s, random.Random(f"{self.seed}/nemesis"),
                               **o.schedule_opts)
        )
        out.schedule = schedule
        await self._build_cluster(spare_ids_needed(schedule))
        assert self.procs is not None and self.mesh is not None
        procs, mesh = self.procs, self.mesh
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(mesh.run)
                for nid in sorted(procs.nodes):
                    await procs.start(nid)
                nursery.start_soon(self._watch_crashes)
                async with AsyncClient(self.addrs, timeout_s=5.0, connect_timeout_s=0.5,
                                       request_timeout_s=1.0, backoff_max_s=0.3) as admin:
                    self.admin = admin
                    membership = MembershipNemesis(
                        procs, mesh, admin, self.spare, self.find_leader, self.clock_s,
                        on_change=self._members_changed, initial_size=o.nodes,
                    ) if self.spare else None
                    self.nemesis = Nemesis(procs, mesh, self.find_leader, self.clock_s,
                                           status_of=self.node_status_of, membership=membership)
                    if o.progress:
                        nursery.start_soon(self._progress)
                    await self.wait_for_leader(30)
                    await self._create_queues()
                    out.timings_s["setup"] = time.monotonic() - t
                    t = time.monotonic()
                    try:
                        await self._workload(schedule)
                    finally:
                        out.faults = [r.to_json() for r in self.nemesis.records]
                    out.timings_s["workload"] = time.monotonic() - t
                    t = time.monotonic()
                    self.phase = "heal"
                    self._collect_crashes()
                    healed = await self.nemesis.heal_all()
                    await self.wait_for_leader(30)
                    out.timings_s["heal"] = time.monotonic() - t
                    out.drain["healed"] = healed
                    t = time.monotonic()
                    self.phase = "drain"
                    await trio.sleep(o.workload.max_visibility_timeout_ms / 1000 + 0.5)
                    out.drain.update(await self._drain())
                    out.timings_s["drain"] = time.monotonic() - t
                    t = time.monotonic()
                    self.phase = "final"
                    out.final_statuses = await self._final_statuses()
                    if membership is not None:
                        out.final_members = await final_members(admin)
                    out.timings_s["final"] = time.monotonic() - t
                    out.proxies = {"totals": mesh.totals(), "links": mesh.stats()}
                nursery.cancel_scope.cancel()
        except Exception as exc:
            logger.exception("run stopped early")
            out.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._collect_crashes()
            t_stop = time.monotonic()
            await procs.stop_all()
            out.timings_s["stop"] = time.monotonic() - t_stop
            out.proxies.setdefault("totals", mesh.totals())
            if self.nemesis is not None:
                out.faults = [r.to_json() for r in self.nemesis.records]
            self.history.close_outstanding()
            out.pids = {str(i): np.pids for i, np in procs.nodes.items()}
        return out


def queue_specs(workload: Workload) -> list[QueueSpec]:
    """What the checker needs to know of the workload's queues and their dead-letter queues."""
    specs = []
    for q in workload.queues:
        specs.append(QueueSpec(q.name, q.fifo, q.max_deliveries, q.visibility_timeout_ms, q.dlq))
        # A dead-letter queue made with its source: default options, FIFO as the source.
        specs.append(QueueSpec(q.dlq, q.fifo, 10, 30_000, None))
    return specs


def check_outcome(out: RunOutcome) -> dict[str, Any]:
    """Check the history and the run's own requirements; store and return the result."""
    o = out.options
    res = check(
        out.history.ops,
        queue_specs(o.workload),
        final_statuses=out.final_statuses,
        faults=out.faults,
        require_faults=o.require_faults,
    )
    res["drain"] = {
        "valid": bool(out.drain.get("complete")),
        **{k: v for k, v in out.drain.items() if k != "complete"},
        "complete": bool(out.drain.get("complete")),
    }
    res["node_crashes"] = {
        "valid": not out.crashes,
        "count": len(out.crashes),
        "crashes": out.crashes,
    }
    if any(f.kind == "membership" for f in out.schedule) or any(
            f.get("kind") == "membership" for f in out.faults):
        res["membership"] = check_membership(out)
    if out.error is not None:
        res["run"] = {"valid": False, "error": out.error}
    out.check = res
    for extra in o.extra_checks:
        section = extra(out)
        res[section.get("name", "scenario")] = section
    failed = [k for k, v in res.items() if isinstance(v, dict) and v.get("valid") is False]
    res["failed_checks"] = failed
    res["valid"] = not failed
    return res


async def run(opts: RunOptions) -> RunOutcome:
    """Run, check, and write the results (see `jepsen_like.report`)."""
    from jepsen_like import report

    r = Run(opts)
    out = await r.execute()
    t = time.monotonic()
    check_outcome(out)
    out.timings_s["check"] = time.monotonic() - t
    t = time.monotonic()
    report.write_all(out, plots=opts.plots)
    out.timings_s["report"] = time.monotonic() - t
    return out


def run_sync(opts: RunOptions) -> RunOutcome:
    """`run` in a fresh trio loop."""
    return trio.run(run, opts)
