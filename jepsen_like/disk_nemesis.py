"""The disk faults of the nemesis: `disk-corruption` and `disk-loss` (`jepsen_like.nemesis`'s
docstring says what they do).

`DiskNemesis` is the part of a `Nemesis` that injects them: it picks a running node that may be
damaged (never more than a minority: at most (n - 1) // 2 nodes damaged and not yet repaired at
any moment), kills it, applies one of the damage operations of `jepsen_like.disk` to its data
directory and starts it again (wiped and started once more if it refuses its data), and keeps
the damaged nodes until they are repaired. A damaged node counts as repaired once its
`node_status` shows it applied everything it could have acknowledged before the damage (its
last index then, or the highest commit index of the cluster if higher) and, when the status
names a `standing`, that it is a voter again.

It owns the damaged nodes; the `Nemesis` owns the fault records, and hands it the record of
each disk fault it injects.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from jepsen_like import disk
from jepsen_like.faults import KINDS, Fault, FaultRecord
from jepsen_like.procs import REFUSAL_EXIT_CODE, NodeProcs

__all__ = ["DISK_KINDS", "DISK_OPS", "Damaged", "DiskNemesis", "StatusOf"]

logger = logging.getLogger("jepsen_like.nemesis")  # the nemesis's log, as before the split

DISK_KINDS = ("disk-corruption", "disk-loss")
"""Kinds that damage a node's disk (a minority of nodes at most, until repaired)."""

DISK_OPS: dict[str, Callable[[Any, random.Random], disk.Damage]] = {
    "flip-wal": lambda d, rng: disk.flip_bit(d, rng, "wal"),
    "flip-sst": lambda d, rng: disk.flip_bit(d, rng, "sst"),
    "truncate-wal": lambda d, rng: disk.truncate_wal(d, rng),
    "cut-wal": lambda d, rng: disk.cut_wal_at_record_boundary(d, rng),
    "delete-wal": lambda d, rng: disk.delete_wal(d),
    "wipe": lambda d, rng: disk.wipe(d),
}
"""The damage operation of each disk variant: (data_dir, rng) -> what it did."""

_WARNING_LINE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^raftq node \d+:|Traceback")

StatusOf = Callable[[int], Awaitable["dict[str, Any] | None"]]
RecordOf = Callable[[int], "FaultRecord | None"]


@dataclass
class Damaged:
    """A node whose disk a fault damaged, until it is seen repaired."""

    node_id: int
    fault: int
    mark: int
    since_s: float


class DiskNemesis:
    """Injects the disk faults of a `Nemesis` and keeps the nodes they damaged until repaired.

    Args:
        procs: the node processes.
        clock_s: seconds since the start of the run (the history's clock).
        record_of: the record of a fault by its index in the schedule (the Nemesis's records),
            or None; a repair is noted in its evidence.
        status_of: one node's `node_status` (None when it does not answer), to see a restarted
            node serve and a damaged node repaired. Without it a restarted node is taken as
            started when it still runs after `settle_s`, and a damaged node as repaired once
            it runs.

    Attributes:
        damaged: every node damaged and not yet seen repaired, by node id.
        start_watch_s: how long a node started on damaged data may take to refuse it or serve.
        settle_s: without `status_of`, how long a restarted node must keep running.
        repair_wait_s: how long a disk fault waits for damaged nodes to be repaired when no
            other node may be damaged.
    """

    start_watch_s = 15.0
    settle_s = 2.0
    repair_wait_s = 15.0

    def __init__(
        self,
        procs: NodeProcs,
        clock_s: Callable[[], float],
        record_of: RecordOf,
        status_of: StatusOf | None = None,
    ) -> None:
        self.procs = procs
        self.clock_s = clock_s
        self.record_of = record_of
        self.status_of = status_of
        self.damaged: dict[int, Damaged] = {}
        self._lock = trio.Lock()

    @property
    def node_ids(self) -> list[int]:
        """The nodes that are members now."""
        return self.procs.member_ids

    def _running_nodes(self) -> list[int]:
        return [i for i in self.node_ids if self.procs.running(i) and not self.procs.paused(i)]

    @property
    def damage_budget(self) -> int:
        """How many nodes may be damaged and not yet repaired at once: a minority."""
        return (len(self.node_ids) - 1) // 2

    async def _status(self, nid: int) -> dict[str, Any] | None:
        if self.status_of is None:
            return None
        st = await self.status_of(nid)
        if not st or "error" in st or st.get("node_id") != nid:
            return None
        return st

    async def refresh_repairs(self) -> list[int]:
        """Forget damaged nodes that are repaired (see the module docstring); record when on
        their faults. Returns the nodes still damaged."""
        for nid, dm in sorted(self.damaged.items()):
            if nid not in self.node_ids:  # removed from the cluster: it no longer counts
                del self.damaged[nid]
                rec = self.record_of(dm.fault)
                if rec is not None:
                    rec.evidence["removed_before_repaired_after_s"] = round(
                        self.clock_s() - dm.since_s, 3)
                continue
            if not self.procs.running(nid) or self.procs.paused(nid):
                continue
            if self.status_of is None:
                repaired, seen = True, None
            else:
                seen = await self._status(nid)
                repaired = seen is not None and _repaired(seen, dm.mark)
            if repaired:
                del self.damaged[nid]
                rec = self.record_of(dm.fault)
                if rec is not None:
                    rec.evidence["repair_seen_after_s"] = round(self.clock_s() - dm.since_s, 3)
                    if seen is not None:
                        rec.evidence["repaired_status"] = {
                            k: seen.get(k) for k in ("role", "term", "commit_index",
                                                     "applied_index", "last_index", "standing")
                            if k in seen}
                logger.info("node %d repaired (fault %d)", nid, dm.fault)
        return sorted(self.damaged)

    async def _disk_target(
        self, rec: FaultRecord, rng: random.Random, targets: list[int] | None
    ) -> int | None:
        """A running node that may be damaged now (waiting for repairs if need be)."""
        budget = self.damage_budget
        deadline = trio.current_time() + self.repair_wait_s
        while True:
            damaged = set(await self.refresh_repairs())
            pool = targets if targets is not None else self._running_nodes()
            ok = [n for n in pool if self.procs.running(n) and not self.procs.paused(n)
                  and len(damaged | {n}) <= budget]
            if ok:
                if damaged:
                    rec.evidence["damaged_not_repaired"] = sorted(damaged)
                return rng.choice(sorted(ok))
            if budget == 0 or trio.current_time() >= deadline:
                rec.note = (f"not injected: {len(self.node_ids)} nodes allow {budget} damaged "
                            f"at once; not repaired yet: {sorted(damaged)}")
                return None
            rec.note = f"waiting for nodes {sorted(damaged)} to be repaired"
            await trio.sleep(0.2)
            rec.note = ""

    async def _mark(self, nid: int) -> int:
        """What `nid` could have acknowledged: its last index, or the highest commit index
        known, if higher."""
        mark = 0
        for other in self.node_ids:
            st = await self._status(other) if self.procs.running(other) else None
            if st is None:
                continue
            mark = max(mark, int(st.get("commit_index") or 0))
            if other == nid:
                mark = max(mark, int(st.get("last_index") or 0))
        return mark

    async def _watch_start(self, nid: int, pid: int) -> tuple[str, dict[str, Any]]:
        """Wait until the node just started (as `pid`) serves, refuses its data, or exits.

        Returns (outcome, evidence): "running" (answers `node_status` as `pid`, or without
        `status_of` still runs after `settle_s`), "refused" (exit status 2 with the refusal
        line), "exited" (any other exit), or "no-answer" (still running, silent, after
        `start_watch_s`).
        """
        t0 = trio.current_time()
        limit = self.settle_s if self.status_of is None else self.start_watch_s
        while True:
            code = self.procs.exit_code(nid, pid)
            if code is not None:
                line = self.procs.refusal_line(nid, pid)
                ev: dict[str, Any] = {"exit_code": code,
                                      "after_s": round(trio.current_time() - t0, 3)}
                if code == REFUSAL_EXIT_CODE and line is not None:
                    return "refused", {**ev, "line": line}
                return "exited", {**ev, "log_tail": self.procs.output(nid, pid)
                                  .splitlines()[-12:]}
            if self.status_of is not None:
                st = await self._status(nid)
                if st is not None and st.get("pid") in (pid, None):
                    return "running", {"after_s": round(trio.current_time() - t0, 3),
                                       "status": {k: st.get(k) for k in (
                                           "role", "term", "commit_index", "applied_index",
                                           "last_index", "standing") if k in st}}
            if trio.current_time() - t0 >= limit:
                running = self.procs.running(nid)
                return ("running" if running and self.status_of is None else "no-answer",
                        {"after_s": round(trio.current_time() - t0, 3), "running": running})
            await trio.sleep(0.05)

    def _warnings(self, nid: int, pid: int, limit: int = 10) -> list[str]:
        """The node's first warnings and errors since `pid` started (not the transport's)."""
        lines = [ln for ln in self.procs.output(nid, pid).splitlines()
                 if _WARNING_LINE.search(ln) and " raftq.transport " not in ln]
        return lines[:limit]

    async def _damage(self, nid: int, fault: Fault, rec: FaultRecord,
                      rng: random.Random) -> disk.Damage | None:
        """Apply the fault's operation to the stopped node's data directory (or, when it
        finds nothing to damage, another corruption chosen by `rng`)."""
        data_dir = self.procs.data_dir(nid)
        order = [fault.variant]
        if fault.kind == "disk-corruption":
            others = [v for v in KINDS["disk-corruption"] if v != fault.variant]
            rng.shuffle(others)
            order += others
        skipped: dict[str, str] = {}
        for op in order:
            fn = DISK_OPS[op]
            try:
                done = await trio.to_thread.run_sync(fn, data_dir, rng)
            except disk.NothingToDamage as exc:
                skipped[op] = str(exc)
                continue
            if skipped:
                rec.evidence["skipped_ops"] = skipped
                rec.note = f"{'/'.join(skipped)}: nothing to damage; did {op}".strip()
            rec.evidence["op"] = op
            return done
        rec.evidence["skipped_ops"] = skipped
        return None

    async def start(
        self, fault: Fault, rec: FaultRecord, rng: random.Random, targets: list[int] | None
    ) -> Callable[[], Awaitable[None]]:
        """Inject one disk fault (a kind of `DISK_KINDS`), recording on `rec` what it did;
        returns its heal (start the node if it is down)."""
        async with self._lock:  # two disk faults never choose at the same time
            nid = await self._disk_target(rec, rng, targets)
            if nid is None:
                async def nothing() -> None:
                    return None
                return nothing
            rec.nodes = [nid]
            mark = await self._mark(nid)
            rec.evidence["mark_index"] = mark
            pid, code = await self.procs.kill(nid)
            if pid is not None:
                rec.pids.append(pid)
            rec.evidence["exit_codes"] = {str(nid): code}
            killed = pid is not None and code == -9
            restarted: list[int] = []
            try:
                damage = await self._damage(nid, fault, rec, rng) if killed else None
            finally:  # whatever happened to the files, the node runs again
                if not self.procs.running(nid):
                    restarted.append(await self.procs.start(
                        nid, may_refuse=fault.kind == "disk-corruption"))
            if damage is not None:
                rec.evidence["damage"] = damage.to_json()
                rec.evidence["damage_summary"] = damage.describe()
                self.damaged[nid] = Damaged(nid, rec.index, mark, self.clock_s())
            if not restarted:
                raise RuntimeError(f"node {nid} was not killed (pid {pid}, exit {code})")
            new_pid = restarted[0]
            outcome, ev = await self._watch_start(nid, new_pid)
            rec.evidence["start"] = ev
            if outcome == "refused":
                rec.evidence["refusal"] = ev.get("line")
                wiped = await trio.to_thread.run_sync(disk.wipe, self.procs.data_dir(nid))
                rec.evidence["operator_wipe"] = wiped.to_json()
                new_pid = await self.procs.start(nid)
                restarted.append(new_pid)
                again, ev2 = await self._watch_start(nid, new_pid)
                rec.evidence["start_after_wipe"] = {"outcome": again, **ev2}
                rec.evidence["outcome_after_wipe"] = again
            rec.evidence["outcome"] = outcome
            rec.evidence["restarted_pids"] = restarted
            rec.evidence["node_warnings"] = self._warnings(nid, restarted[0])
            rec.verified = killed and damage is not None and bool(restarted)
            logger.info("disk fault %d on node %d: %s; %s", rec.index, nid,
                        rec.evidence.get("damage_summary"), outcome)

        async def heal() -> None:
            rec.evidence["running_before_heal"] = self.procs.running(nid)
            if not self.procs.running(nid) and nid in self.node_ids:  # not if removed since
                rec.evidence["restarted_at_heal"] = await self.procs.start(nid)
            rec.evidence["running_at_heal"] = self.procs.running(nid)

        return heal


def _repaired(status: dict[str, Any], mark: int) -> bool:
    """A node's status shows it holds what it could have acknowledged before its damage."""
    standing = status.get("standing")
    if standing is not None and str(standing).lower() not in ("voter", "0"):
        return False
    return (int(status.get("applied_index") or 0) >= mark
            and int(status.get("commit_index") or 0) >= mark)
