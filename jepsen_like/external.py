"""jepsen_like's workload and checker against a cluster it did not start.

`ExternalRun` is a `Run` (`jepsen_like.runner`) whose node processes someone else runs, e.g.
`raftq cluster up --detach`, changed by `raftq cluster add-node`, `replace-node` and the
like: the same producers, consumers and readers, the same drain, final statuses and checker,
but instead of a drawn nemesis a script of the caller's runs while the workload does
(`execute(during, after_drain)`). What the script does to the cluster is recorded as faults
(`open_fault`/`close_fault`, `fault`, and `membership_change`, which reads `members` before
and after and records what changed, as the `membership` nemesis does), so the results show it
like a nemesis's faults and `check_membership` judges it. The members are those the cluster
names (`members`): the final statuses are asked of them only.

It does not watch the node processes (it did not start them): node crashes are the caller's
to notice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import trio

from cluster.client import AsyncClient
from cluster.errors import RaftqError
from cluster.members import Members
from jepsen_like.faults import FaultRecord
from jepsen_like.membership_nemesis import final_members, members_diff, view_summary
from jepsen_like.runner import Run, RunOptions, RunOutcome, _RateLimiter, check_outcome

__all__ = ["ExternalRun", "Script"]

Script = Callable[["ExternalRun"], Awaitable[None]]


class ExternalRun(Run):
    """A run against the cluster at `servers` (see the module docstring).

    Args:
        opts: the run's options (`schedule`, `nemeses` and the node options are not used).
        servers: client addresses of the cluster's nodes.
    """

    def __init__(self, opts: RunOptions, servers: Sequence[str]) -> None:
        super().__init__(opts)
        self.addrs = list(servers)
        self.members_now: dict[int, str] = {}
        self.records: list[FaultRecord] = []

    # -- the cluster's members --------------------------------------------------------------
    def _member_addrs(self) -> dict[int, str]:
        return dict(self.members_now)

    async def node_status_of(self, nid: int, timeout_s: float = 0.5) -> dict[str, Any] | None:
        assert self.admin is not None
        try:
            with trio.fail_after(timeout_s + 0.5):
                return await self.admin.node_status(self.members_now[nid], timeout_s=timeout_s)
        except (RaftqError, trio.TooSlowError, OSError, KeyError):
            return None

    async def read_members(self, timeout_s: float = 20.0) -> Members:
        """`members`, asked again until it answers (at most `timeout_s`); the run's members
        are then the ones it names.

        Raises:
            trio.TooSlowError: no answer in time.
        """
        assert self.admin is not None
        with trio.fail_after(timeout_s):
            while True:
                try:
                    view = await self.admin.members(timeout_s=3.0)
                    break
                except RaftqError:
                    await trio.sleep(0.1)
        self.members_now = {m.id: m.client_addr for m in view.members if m.client_addr}
        return view

    # -- faults -------------------------------------------------------------------------------
    def open_fault(self, kind: str, variant: str, nodes: Sequence[int] = ()) -> FaultRecord:
        """Start recording a fault (its start time is now)."""
        rec = FaultRecord(len(self.records), kind, variant, nodes=list(nodes))
        rec.start_s = self.clock_s()
        rec.start_wall_ms = time.time_ns() / 1e6
        self.records.append(rec)
        return rec

    def close_fault(self, rec: FaultRecord) -> None:
        """The fault is over (its end time is now)."""
        if rec.end_s is None:
            rec.end_s = self.clock_s()
            rec.end_wall_ms = time.time_ns() / 1e6

    @contextlib.asynccontextmanager
    async def fault(self, kind: str, variant: str,
                    nodes: Sequence[int] = ()) -> AsyncIterator[FaultRecord]:
        """A fault that lasts as long as the block; the block fills the record (`evidence`,
        `pids`, `verified`)."""
        rec = self.open_fault(kind, variant, nodes)
        try:
            yield rec
        finally:
            self.close_fault(rec)

    @contextlib.asynccontextmanager
    async def membership_change(self, variant: str) -> AsyncIterator[FaultRecord]:
        """A membership change the block makes (e.g. a `raftq cluster replace-node`): records
        `members_before`, `members_after` and `changed` around it, tells the workload's
        clients the new members, and keeps `verified` (which the block sets from its own
        evidence) only if the members changed."""
        async with self.fault("membership", variant) as rec:
            rec.evidence["change"] = variant
            rec.evidence["members_before"] = view_summary(await self.read_members())
            yield rec
            after = await self.read_members()
            rec.evidence["members_after"] = view_summary(after)
            changed = members_diff(rec.evidence["members_before"], rec.evidence["members_after"])
            rec.evidence["changed"] = changed
            rec.nodes = sorted(changed["added"] + changed["removed"] + changed["promoted"])
            rec.verified = rec.verified and bool(rec.nodes)
            rec.evidence["clients_told"] = await self._members_changed(after)

    async def wait_enqueues(self, n: int, timeout_s: float = 20.0) -> int:
        """Wait until `n` more enqueues completed `ok` than now (bounded); returns how many
        did."""
        def oks() -> int:
            return sum(1 for op in self.history.ops if op.f == "enqueue" and op.type == "ok")

        start = oks()
        with trio.move_on_after(timeout_s):
            while oks() - start < n:
                await trio.sleep(0.05)
        return oks() - start

    # -- the run ------------------------------------------------------------------------------
    async def execute_script(self, during: Script, after_drain: Script | None = None
                             ) -> RunOutcome:
        """Create the queues, run the workload while `during` runs (it ends when `during`
        returns), drain, run `after_drain` (e.g. start the nodes that are down), take the
        final statuses and members, and check. Returns the checked outcome."""
        o = self.opts
        out = self.outcome
        t = time.monotonic()
        try:
            async with AsyncClient(self.addrs, timeout_s=5.0, connect_timeout_s=0.5,
                                   request_timeout_s=1.0, backoff_max_s=0.3) as admin:
                self.admin = admin
                await self.read_members()
                await self.wait_for_leader(30)
                await self._create_queues()
                out.timings_s["setup"] = time.monotonic() - t
                t = time.monotonic()
                self.phase = "workload"
                t0 = self.clock_s()
                try:
                    await self._workload_with(during)
                finally:
                    out.workload_window_s = (t0, self.clock_s())
                out.timings_s["workload"] = time.monotonic() - t
                t = time.monotonic()
                self.phase = "drain"
                await trio.sleep(o.workload.max_visibility_timeout_ms / 1000 + 0.5)
                out.drain.update(await self._drain())
                out.timings_s["drain"] = time.monotonic() - t
                t = time.monotonic()
                self.phase = "heal"
                if after_drain is not None:
                    await after_drain(self)
                await self.read_members()
                await self.wait_for_leader(30)
                out.timings_s["heal"] = time.monotonic() - t
                t = time.monotonic()
                self.phase = "final"
                out.final_statuses = await self._final_statuses()
                out.final_members = await final_members(admin)
                out.timings_s["final"] = time.monotonic() - t
        except Exception as exc:
            out.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            for rec in self.records:
                self.close_fault(rec)
            out.faults = [r.to_json() for r in self.records]
            self.history.close_outstanding()
        check_outcome(out)
        return out

    async def _workload_with(self, during: Script) -> None:
        o = self.opts
        n_prod = max(1, round(o.concurrency * o.workload.producer_share))
        n_cons = max(1, o.concurrency - n_prod)
        prod = _RateLimiter(o.rate * n_prod / (n_prod + n_cons))
        cons = _RateLimiter(o.rate * n_cons / (n_prod + n_cons))
        async with trio.open_nursery() as workers:
            for p in range(n_prod):
                workers.start_soon(self.producer, p, prod)
            for p in range(n_prod, n_prod + n_cons):
                workers.start_soon(self.consumer, p, cons)
            self.start_readers(workers)
            try:
                await during(self)
            finally:
                self.stop.set()
