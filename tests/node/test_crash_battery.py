"""Issue 13's crash batteries: kill -9 of a real node process at seeded instants while the
cluster applies large enqueue batches, while the node takes a snapshot, and while a follower
installs one from the leader. After each kill the node is restarted; every node must reach one
machine index with one digest, and every message confirmed to its producer must be received
exactly once (`tests/node/crash_support.py`).

The instants: a seeded count of confirmed batches (batches); a seeded delay after the node's
snapshot checkpoint appears, cut short when the checkpoint goes (snapshot); a seeded fraction
of the leader's snapshot size written to the follower's write-ahead log since the leader began
sending it, so that both the chunks' arrival and the writing of their bodies are hit (install).

A kill that landed somewhere harmless proves nothing, so each test checks where it landed:
mid-stream (confirmations before and after it), inside a snapshot (the killed node's database,
read as the kill left it, holds its own snapshot's chunks above its committed snapshot, or the
snapshot's checkpoint directory is still there), inside an install (chunks of the leader's
snapshot above the follower's log, or that snapshot's bodies written as a generation not
switched in). A seed retries up to `ATTEMPTS` kills until one lands inside, and fails if none
does; every kill is followed by a restart. The install test reads two lines of the nodes' logs
("snapshot at index N (B bytes)", "installed snapshot at index N").

CI runs a few seeds with tens of thousands of messages in all; the batteries of 20 seeds per
scenario are `extended` (`pytest -m extended tests/node/test_crash_battery.py`). Replay a
seed with `-k seed<N>`; `-s` prints what each kill hit (`OBSERVED` lines).
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from cluster.client import AsyncClient
from cluster.launcher import Launcher
from tests.client.test_launcher import alive
from tests.node.crash_support import (
    QUEUE,
    DbState,
    Load,
    WalMeter,
    check_delivery,
    checkpoint_path,
    children,
    converge,
    db_path,
    dir_identity,
    drain,
    inspect_db,
    last_snapshot_logged,
    leader_of,
    log_has,
    new_cluster,
    observe,
    status,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ATTEMPTS = 3
"""Kills per seed at most, until one lands where the scenario aims."""
CI_SEEDS = range(2)
EXTENDED_SEEDS = range(100, 120)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., Launcher]]:
    """Makes the test's cluster (`new_cluster`); whatever happens to the test, every node it
    started is stopped by pid at teardown, outside the test's trio run."""
    made: list[Launcher] = []

    def make(**overrides: Any) -> Launcher:
        made.append(new_cluster(tmp_path, **overrides))
        return made[-1]

    yield make
    for launcher in made:
        launcher.stop()


def _seeds() -> list[Any]:
    return [pytest.param(s, 1, id=f"seed{s}") for s in CI_SEEDS] + [
        pytest.param(s, 2, id=f"seed{s}", marks=pytest.mark.extended) for s in EXTENDED_SEEDS]


async def _kill(launcher: Launcher, nid: int) -> dict[str, Any]:
    """SIGKILL `nid` by pid; check it is gone, and so are the children it had (within 5 s)."""
    pid = launcher.pids[nid]
    kids = children(pid)
    assert launcher.kill(nid) == -9
    at = time.monotonic()
    assert not alive(pid), f"node {nid} (pid {pid}) still runs after SIGKILL"
    await wait_for(lambda: not any(alive(k) for k in kids), 5,
                   f"the children {kids} of killed node {nid} to end")
    return {"pid": pid, "at": at, "children": kids}


async def _inspect(launcher: Launcher, nid: int) -> DbState:
    return await trio.to_thread.run_sync(inspect_db, db_path(launcher, nid))


async def _check_after(c: AsyncClient, launcher: Launcher, loads: list[Load],
                       tag: str) -> dict[str, Any]:
    """All nodes at one machine index with one digest; every confirmed message there once;
    then (queue empty) still one digest."""
    before = await converge(c, launcher)
    stats = await c.queue_stats(QUEUE)
    got = await drain(c)
    counts = check_delivery(loads, got)
    assert stats["messages"] == len(got), (stats["messages"], len(got))
    after = await converge(c, launcher)
    facts = {"machine_index": before[1]["machine_index"], **counts,
             "digest_after_drain": after[1]["digest"][:12]}
    observe(f"{tag} converged", **facts)
    return facts


async def _start_cluster(launcher: Launcher, c: AsyncClient) -> int:
    launcher.start(wait=False)
    leader = await launcher.wait_for_leader_async(timeout_s=30)
    await c.create_queue(QUEUE, visibility_timeout_ms=20_000)
    return leader


# -- 1. kill -9 while the cluster applies large batches -----------------------------------------

@pytest.mark.parametrize(("seed", "scale"), _seeds())
async def test_kill_9_while_applying_large_batches(
    cluster: Callable[..., Launcher], seed: int, scale: int
) -> None:
    """Producers send batches of 100 bodies of 1 KiB; at a seeded count of confirmed batches
    the leader (even seeds) or a follower (odd seeds) is killed, and restarted after a seeded
    pause while the producers go on."""
    rng = random.Random(seed)
    batches = 80 * scale
    with cluster() as launcher:
        async with AsyncClient(launcher.servers, timeout_s=30) as c:
            leader = await _start_cluster(launcher, c)
            load = Load(c, f"s{seed}", random.Random(seed))
            kill_after = rng.randint(batches // 10, batches * 6 // 10)
            victim = leader if seed % 2 == 0 else rng.choice(
                [n for n in launcher.node_ids if n != leader])
            pause_s = rng.uniform(0.0, 0.5)
            seen: dict[str, Any] = {}

            async def killer() -> None:
                await wait_for(lambda: len(load.confirm_times) >= kill_after, 60,
                               f"{kill_after} batches confirmed", step_s=0.001)
                await trio.sleep(rng.uniform(0.0, 0.02))
                seen["victim_status"] = await status(c, launcher, victim, timeout_s=1.0)
                seen["confirmed_at_kill"] = len(load.confirm_times)
                seen.update(await _kill(launcher, victim))
                seen["db"] = await _inspect(launcher, victim)
                if victim == leader:  # another node took over while it was down
                    seen["new_leader"] = await leader_of(c, launcher)
                await trio.sleep(pause_s)
                launcher.start_node(victim)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                await load.run(batches)
            # Where the kill landed: mid-stream, with the node applying.
            after_kill = sum(1 for t in load.confirm_times if t > seen["at"])
            db = seen["db"]
            observe(f"batches seed{seed}", victim=victim, was_leader=victim == leader,
                    confirmed_at_kill=seen["confirmed_at_kill"], confirmed_after=after_kill,
                    new_leader=seen.get("new_leader"), db=db, errors=load.errors[:3],
                    log_ahead_of_bodies=db.last_index - db.bodies_applied)
            assert kill_after <= seen["confirmed_at_kill"] < batches
            assert after_kill > 0, "no batch was confirmed after the kill"
            assert seen["victim_status"] is not None and seen["victim_status"][
                "applied_index"] > 0
            # The log is made durable before the bodies of its entries are written.
            assert 0 < db.bodies_applied <= db.last_index, db
            if victim == leader:
                assert seen["new_leader"] != victim
            await _check_after(c, launcher, [load], f"batches seed{seed}")


# -- 2. kill -9 while the node takes a snapshot ------------------------------------------------

def _snapshot_hit(db: DbState, checkpoint_left: bool, child: bool) -> str | None:
    """Which part of its own snapshot the kill cut short, from what it left; None: none.

    A child process at the kill is the one a node forks to write a snapshot's machine part
    (where it does so); the frozen view (checkpoint) of the bodies exists from the start of
    the machine part to the end of the bodies; chunks staged above the committed snapshot, at
    an index the node's log holds, are its own snapshot written and not committed yet (a
    snapshot received from the leader would be above its log)."""
    if child:
        return "machine-child"
    if checkpoint_left:
        return "machine-or-bodies"
    if any(i <= db.last_index for i in db.staged):
        return "before-commit"
    return None


async def _new_checkpoint(checkpoint: Path, stale: tuple[int, int] | None) -> None:
    """Wait for a snapshot checkpoint directory other than `stale` (one a kill left)."""
    await wait_for(lambda: dir_identity(checkpoint) not in (None, stale), 60,
                   f"a snapshot checkpoint at {checkpoint}", step_s=0.001)


@pytest.mark.parametrize(("seed", "scale"), _seeds())
async def test_kill_9_while_taking_a_snapshot(
    cluster: Callable[..., Launcher], seed: int, scale: int
) -> None:
    """Snapshots every 20 entries (and, as always, once as many log bytes as the last
    snapshot's size were applied): the killer waits for the victim's snapshot checkpoint to
    appear (the `skip`-th one from now), then kills it after a seeded delay, or at once when
    the checkpoint goes first (the snapshot is about to be committed)."""
    rng = random.Random(seed)
    with cluster(snapshot_entries=20, log_margin_entries=0) as launcher:
        async with AsyncClient(launcher.servers, timeout_s=30) as c:
            leader = await _start_cluster(launcher, c)
            victim = leader if seed % 2 == 0 else rng.choice(
                [n for n in launcher.node_ids if n != leader])
            load = Load(c, f"s{seed}", random.Random(seed))
            await load.run(25 * scale)  # some state, so that snapshots take a while
            stop = trio.Event()
            hits: list[str] = []
            attempts: list[dict[str, Any]] = []
            checkpoint = checkpoint_path(launcher, victim)

            async def killer() -> None:
                stale = dir_identity(checkpoint)
                try:
                    for n in range(ATTEMPTS):
                        skip = rng.randint(0, 1)
                        delay_s = rng.uniform(0.0, 0.3)
                        for k in range(skip + 1):  # a new checkpoint (and, skipped, its end)
                            await _new_checkpoint(checkpoint, stale)
                            stale = None
                            if k < skip:
                                await wait_for(lambda: not checkpoint.exists(), 60,
                                               "the snapshot's end", step_s=0.001)
                        started = time.monotonic()
                        with trio.move_on_after(delay_s):
                            await wait_for(lambda: not checkpoint.exists(), delay_s + 1,
                                           "the snapshot's end", step_s=0.001)
                        waited = time.monotonic() - started
                        kids = (await _kill(launcher, victim))["children"]
                        stale = dir_identity(checkpoint)
                        db = await _inspect(launcher, victim)
                        hit = _snapshot_hit(db, stale is not None, bool(kids))
                        attempts.append({"attempt": n, "skip": skip, "delay_s": round(delay_s, 3),
                                         "waited_s": round(waited, 3), "hit": hit,
                                         "checkpoint_left": stale is not None,
                                         "children": len(kids),
                                         "snapshot_index": db.snapshot_index,
                                         "staged": db.staged, "last_index": db.last_index})
                        launcher.start_node(victim)
                        if hit:
                            hits.append(hit)
                            return
                finally:
                    stop.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                await load.run(400 * scale, stop=stop)
            observe(f"snapshot seed{seed}", victim=victim, was_leader=victim == leader,
                    attempts=attempts, messages=load.messages)
            assert hits, f"no kill landed inside a snapshot: {attempts}"
            await _check_after(c, launcher, [load], f"snapshot seed{seed}")


# -- 3. kill -9 of a follower while it installs a snapshot from the leader ---------------------

def _install_hit(db: DbState, behind: int) -> str | None:
    """Which part of an install the kill cut short; `behind`: the follower's last log index
    before it was restarted (a snapshot above it can only have come from the leader)."""
    incoming = [i for i in db.staged if i > behind]
    if db.other_generations and db.snapshot_index <= behind:
        return "bodies-prepared"  # decoded, its bodies written, not switched in
    if incoming:
        return "receiving"
    return None


async def _current_leader(c: AsyncClient, launcher: Launcher, known: int, follower: int
                          ) -> tuple[int, dict[str, Any]]:
    """The leader among the nodes other than `follower` (`known` asked first), its status."""
    with trio.fail_after(30):
        while True:
            for nid in [known, *(n for n in launcher.node_ids if n not in (known, follower))]:
                st = await status(c, launcher, nid, timeout_s=1.0)
                if st is not None and st["role"] == "leader":
                    return nid, st
            await trio.sleep(0.05)


async def _leave_behind(c: AsyncClient, launcher: Launcher, load: Load, leader: int,
                        follower: int, behind: int, batches: int) -> tuple[int, dict[str, Any]]:
    """Send until the leader's log starts past all the stopped `follower` has or will get:
    its log (`behind`), and the appends the leader sent it before it stopped (they wait in the
    leader's queue for the follower and arrive when it is back: up to `next_index` - 1)."""
    for _ in range(100):
        await load.run(batches)
        leader, ls = await _current_leader(c, launcher, leader, follower)
        # Appends are queued only in the replicate state (probing, one at a time is sent,
        # which the follower refuses when it lacks the entry before it, as a wiped one does).
        peer = ls["peers"][str(follower)]
        queued_to = peer["next_index"] if behind and peer["state"] == "replicate" else 0
        if ls["first_index"] > max(behind + 1, queued_to):
            return leader, ls
    raise AssertionError(f"the leader's log never started past node {follower}'s: {ls}")


async def _kill_after_own_snapshot(launcher: Launcher, load: Load, follower: int) -> None:
    """Send until `follower` logs a snapshot of its own, then kill it: restarted, it has few
    entries to replay and takes no snapshot of its own while it receives the leader's (its
    write-ahead log then grows by what it receives)."""
    log = launcher.log_path(follower)
    before = last_snapshot_logged(log)
    stop = trio.Event()

    async def killer() -> None:
        try:
            await wait_for(lambda: last_snapshot_logged(log) != before, 60,
                           f"a snapshot of node {follower}'s own", step_s=0.002)
            await _kill(launcher, follower)
        finally:
            stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(killer)
        await load.run(1000, stop=stop)


async def _settled(c: AsyncClient, launcher: Launcher, nid: int, quiet_s: float = 0.05,
                   timeout_s: float = 3.0) -> None:
    """Wait (at most `timeout_s`) until node `nid` applied its whole log, or its log and
    applied index stayed the same for `quiet_s` (an uncommitted tail waits for the install)."""
    last: tuple[int, int] | None = None
    since = time.monotonic()
    with trio.move_on_after(timeout_s):
        while True:
            st = await status(c, launcher, nid, timeout_s=1.0)
            if st is not None:
                now = (st["last_index"], st["applied_index"])
                if now[1] >= now[0]:
                    return
                if now != last:
                    last, since = now, time.monotonic()
                elif time.monotonic() - since >= quiet_s:
                    return
            await trio.sleep(0.005)


async def _kill_during_install(c: AsyncClient, launcher: Launcher, load: Load, leader: int,
                               follower: int, fraction: float) -> dict[str, Any]:
    """Start `follower`; once the leader sends it a snapshot (its progress state) and it has
    written the appends the leader had queued for it while it was down, kill it when its
    write-ahead log grew by `fraction` of that snapshot's size (the chunks arrive, then its
    bodies are written: about twice the size in all), or at once when its log says it
    installed the snapshot. One producer goes on meanwhile."""
    stop = trio.Event()
    seen: dict[str, Any] = {"leader": leader}
    log = launcher.log_path(follower)
    offset = log.stat().st_size

    async def killer() -> None:
        try:
            with trio.fail_after(60):
                while True:
                    seen["leader"], st = await _current_leader(c, launcher, seen["leader"],
                                                               follower)
                    if st["peers"][str(follower)]["state"] == "snapshot":
                        break
                    await trio.sleep(0.005)
                seen["sending_at"] = time.monotonic()
                await _settled(c, launcher, follower)
                meter = WalMeter(db_path(launcher, follower))
                seen["settled_after_s"] = round(time.monotonic() - seen["sending_at"], 3)
                snap = last_snapshot_logged(launcher.log_path(seen["leader"]))
                assert snap is not None, "the leader logged no snapshot"
                seen["snapshot"] = snap
                while meter.grown() < fraction * snap[1]:
                    if log_has(log, "installed snapshot at index", offset):
                        seen["installed_first"] = True
                        break
                    await trio.sleep(0.002)
                seen["wal_grown"] = meter.grown()
            seen.update(await _kill(launcher, follower))
        finally:
            stop.set()

    launcher.start_node(follower)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(killer)
        await load.run(1000, producers=1, stop=stop)
    return seen


@pytest.mark.parametrize(("seed", "scale"), _seeds())
async def test_kill_9_while_a_follower_installs_a_snapshot(
    cluster: Callable[..., Launcher], tmp_path: Path, seed: int, scale: int
) -> None:
    """A follower is killed (its data directory moved away for odd seeds), the others go on
    until the leader's log starts past it, then it is restarted; once the leader sends it a
    snapshot it is killed after a seeded fraction of the time the install should take,
    restarted, and left to catch up."""
    rng = random.Random(seed)
    wipe = seed % 2 == 1
    with cluster(snapshot_entries=20, log_margin_entries=0) as launcher:
        async with AsyncClient(launcher.servers, timeout_s=30) as c:
            leader = await _start_cluster(launcher, c)
            follower = rng.choice([n for n in launcher.node_ids if n != leader])
            load = Load(c, f"s{seed}", random.Random(seed))
            await load.run(rng.randint(10, 30) * scale)
            attempts: list[dict[str, Any]] = []
            hits: list[str] = []
            for n in range(ATTEMPTS):
                if wipe:
                    await _kill(launcher, follower)
                else:
                    await _kill_after_own_snapshot(launcher, load, follower)
                behind = (await _inspect(launcher, follower)).last_index
                if wipe:
                    shutil.move(str(launcher.config.node(follower).data_dir),
                                str(tmp_path / f"n{follower}.lost-{n}"))
                    behind = 0
                leader, ls = await _leave_behind(c, launcher, load, leader, follower, behind,
                                                 10 * scale)
                fraction = rng.uniform(0.02, 1.8)
                seen = await _kill_during_install(c, launcher, load, leader, follower, fraction)
                db = await _inspect(launcher, follower)
                hit = _install_hit(db, behind)
                attempts.append({"attempt": n, "wipe": wipe, "behind": behind,
                                 "leader_first_index": ls["first_index"],
                                 "fraction": round(fraction, 3), "hit": hit,
                                 "settled_after_s": seen["settled_after_s"],
                                 "sending_for_s": round(seen["at"] - seen["sending_at"], 3),
                                 "leader_snapshot": seen["snapshot"],
                                 "wal_grown": seen["wal_grown"],
                                 "installed_first": seen.get("installed_first", False),
                                 "snapshot_index": db.snapshot_index, "staged": db.staged,
                                 "generation": db.generation,
                                 "other_generations": db.other_generations})
                launcher.start_node(follower)
                if hit:
                    hits.append(hit)
                    break
                await converge(c, launcher)
            observe(f"install seed{seed}", follower=follower, attempts=attempts,
                    messages=load.messages)
            assert hits, f"no kill landed inside an install: {attempts}"
            facts = await _check_after(c, launcher, [load], f"install seed{seed}")
            st = await status(c, launcher, follower)
            assert st is not None and st["raft_stats"]["snapshots_installed"] >= 1, (
                "the follower caught up without installing a snapshot", facts)
