"""The queue application the Raft loop drives: the machine state, its bodies, and its effects.

Every replica applies every committed entry here, in log order, with the `now_ms` the leader
stamped on it. The machine keeps no message body: its `StoreBodies` effects say what to write
to the body store (node/bodies.py), and every replica writes them, gathered over one apply step
of the Raft loop into one atomic write with the applied index (`flush`). A receive's reply names
its bodies by key; when a client waits for it, the bodies are read right after the apply
(`fill_bodies`), before a later entry can drop them.

The other effects (wake long-poll waiters, arm the tick timer, release the log) go to the sink,
the `ActorSystem`, which realises them only while this node leads (it asks the Raft loop, the
one record of leadership). A new leader re-issues them through `state_enter` (node.machine), so
nothing depends on a follower having seen them. The app keeps no copy of leadership and no
applied index: the loop has both (`RaftLoop.view`, `RaftLoop.applied_index`).

Snapshots are node snapshots (node/snapshots.py): the machine's items, then the bodies.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

import cbor2

from node import machine
from node.bodies import BodyStore, FrozenBodies
from node.entry import decode_entry
from node.raft import Entry, SnapshotData
from node.snapshot_fork import ForkedMachine
from node.snapshots import (
    DataFile,
    SnapshotBodies,
    body_items,
    header_item,
    node_digest,
    read_header,
)

logger = logging.getLogger("raftq.app")


class EffectSink:
    """Where the machine's effects go (the ActorSystem, which realises them while this node
    leads); the default ignores them."""

    def wake(self, queue: str) -> None:
        """Messages became deliverable in `queue`."""

    def arm_timer(self, at_ms: int) -> None:
        """Propose a tick at wall-clock `at_ms`."""

    def release(self, index: int) -> None:
        """The log up to `index` is not needed to rebuild the state."""

    def became_leader(self, effects: list[machine.Effect]) -> None:
        """This node now leads; `effects` come from `state_enter`."""

    def lost_leadership(self) -> None:
        """This node no longer leads."""


class SnapshotJob:
    """Writes one node snapshot in two parts (see `RaftLoop._serialize`).

    In place (`forks` False): `write_machine` runs while the state does not change (the loop
    holds applies back): it writes the machine's items and takes a frozen view of the bodies.
    Forked (`forks` True, node/snapshot_fork.py): `freeze` takes the frozen view and `fork`
    starts a child process that writes the machine's items from its copy of the state; both
    while applies are held back, both short; then `write_forked` copies what the child wrote,
    while applies go on. Either way `write_bodies` follows, while applies go on: it writes the
    bodies from the frozen view. All but `fork` may run in a worker thread.

    Args:
        state: the state at the snapshot's index.
        bodies: its body store.
        fork_dir: where a forked child writes its files; None to write in place.
    """

    def __init__(
        self, state: machine.MachineState, bodies: BodyStore, fork_dir: Path | None = None
    ) -> None:
        self._state = state
        self._bodies = bodies
        self._fork_dir = fork_dir
        self._forked: ForkedMachine | None = None
        self._keys: list[int] = []
        self._frozen: FrozenBodies | None = None
        self.size_bytes = 0

    @property
    def forks(self) -> bool:
        return self._fork_dir is not None

    def write_machine(self, out: Any) -> None:
        """Write the header and the machine's items to `out` (has `write(bytes)`)."""
        state = self._state
        self._keys = machine.body_keys(state)
        self.freeze()
        head = header_item(len(self._keys))
        out.write(head)
        self.size_bytes += len(head)
        for item in machine.snapshot_items(state):
            out.write(item)
            self.size_bytes += len(item)

    def freeze(self) -> None:
        """Take the frozen view of the bodies (the state must be the snapshot's)."""
        self._frozen = self._bodies.freeze()

    def fork(self) -> None:
        """Start the child that writes the machine's items (on the loop, between applies).

        Raises:
            OSError: the fork failed.
        """
        assert self._fork_dir is not None
        self._forked = ForkedMachine(self._state, self._fork_dir)
        self._state = None  # type: ignore[assignment]  # the child has it; applies go on

    def write_forked(self, out: Any) -> None:
        """Wait for the child, then write what it wrote to `out`.

        Raises:
            SnapshotForkError: the child failed.
        """
        forked = self._forked
        assert forked is not None, "fork first"
        forked.wait()
        self._keys = forked.body_keys()
        self.size_bytes += forked.copy_to(out)
        forked.close()
        self._forked = None

    def write_bodies(self, out: Any) -> None:
        """Write the bodies (from the frozen view) to `out`; release the view.

        Raises:
            machine.BodyMissing: the store does not hold exactly the state's bodies.
        """
        frozen = self._frozen
        assert frozen is not None, "write_machine first"
        try:
            for item in body_items(self._keys, frozen.items()):
                out.write(item)
                self.size_bytes += len(item)
        finally:
            self.close()

    def close(self) -> None:
        """Release the frozen view and the child (idempotent)."""
        frozen, self._frozen = self._frozen, None
        if frozen is not None:
            frozen.close()
        forked, self._forked = self._forked, None
        if forked is not None:
            forked.close()


def load_state(data: BinaryIO, index: int, bodies: BodyStore) -> machine.MachineState:
    """The machine state of a node snapshot read from `data` (at log `index`).

    The bodies are written to `bodies` only when its applied index is below `index` (the store
    does not belong to this snapshot: a snapshot from the leader whose install a crash cut
    short, or a new store); otherwise the store already holds them and more.

    Raises:
        machine.SnapshotError: the snapshot does not decode, or its bodies do not match.
        StorageError: writing the bodies failed.
    """
    decoder = cbor2.CBORDecoder(data)
    n_bodies = read_header(decoder.decode)
    state = machine.restore_items(decoder.decode)
    if bodies.applied_index < index:
        part = SnapshotBodies(decoder.decode, n_bodies, state)
        written = bodies.replace(part, index)
        logger.info("bodies of %d messages written from the snapshot at index %d", written, index)
    return state


class QueueApp:
    """Holds the machine state and applies committed entries to it.

    Args:
        state: the starting state (restored from the latest snapshot, or new).
        bodies: the body store (it must belong to `state`: see `load_state`).
        sink: where effects go while this node leads.
        snapshot_fork_dir: where a forked child writes the machine's part of a snapshot (see
            `SnapshotJob`); None to write it in place.
    """

    def __init__(
        self, state: machine.MachineState, bodies: BodyStore, sink: EffectSink | None = None,
        snapshot_fork_dir: Path | None = None,
    ) -> None:
        self.state = state
        self.snapshot_fork_dir = snapshot_fork_dir
        self.bodies = bodies
        self.sink = sink or EffectSink()
        self._puts: list[tuple[int, bytes]] = []
        self._drops: list[int] = []
        self._pending: dict[int, bytes] = {}  # bodies put and not yet written (for reads)
        self._prepared: tuple[int, machine.MachineState] | None = None  # see prepare_restore

    def apply(self, entry: Entry, reply_wanted: bool = True) -> Any:
        """Apply one committed entry; return its reply (with bodies when `reply_wanted`)."""
        now_ms, cmd = decode_entry(entry.data)
        meta = machine.Meta(entry.index, entry.term, now_ms)
        self.state, reply, effects = machine.apply(meta, cmd, self.state)
        if effects:
            self._realise(effects, entry.index)
        if reply_wanted and type(cmd) is machine.Receive and type(reply) is dict:
            try:
                reply = machine.fill_bodies(reply, self._get_many)
            except machine.BodyMissing as exc:
                logger.error("entry %d: %s: the body store is damaged", entry.index, exc)
                reply = machine.ErrorReply(machine.INTERNAL_ERROR, str(exc))
        return reply

    def _realise(self, effects: list[machine.Effect], index: int) -> None:
        sink = self.sink
        for eff in effects:
            if isinstance(eff, machine.StoreBodies):
                if index > self.bodies.applied_index:  # else already in the store
                    self._puts.extend(eff.puts)
                    self._drops.extend(eff.drops)
                    self._pending.update(eff.puts)
            elif isinstance(eff, machine.WakeWaiters):
                sink.wake(eff.queue)
            elif isinstance(eff, machine.ArmTimer):
                sink.arm_timer(eff.at_ms)
            elif isinstance(eff, machine.ReleaseCursor):
                sink.release(eff.index)

    def _get_many(self, keys: Sequence[int]) -> list[bytes | None]:
        pending = self._pending
        if not pending:
            return self.bodies.get_many(keys)
        out = [pending.get(k) for k in keys]
        missing = [k for k, body in zip(keys, out, strict=True) if body is None]
        if missing:
            found = iter(self.bodies.get_many(missing))
            out = [body if body is not None else next(found) for body in out]
        return out

    def flush(self, applied_index: int) -> None:
        """Write the bodies gathered since the last flush, with `applied_index` (the last
        entry the loop applied): one atomic write (node/bodies.py). Called by the loop at the
        end of each apply step."""
        if not (self._puts or self._drops) and applied_index <= self.bodies.applied_index:
            return
        puts, drops = self._puts, self._drops
        self._puts, self._drops, self._pending = [], [], {}
        self.bodies.write(puts, drops, applied_index)

    def prepare_restore(self, data: BinaryIO, index: int) -> None:
        """Decode a node snapshot from the leader (at log `index`) and write its bodies as the
        body store's next generation, not live yet; `restore` then swaps the state in. Runs
        in a worker thread while the loop goes on (it touches neither the state nor the live
        bodies).

        Raises:
            machine.SnapshotError: the snapshot does not decode, or its bodies do not match
                (nothing of it is installed; the node's data is unchanged).
            StorageError: writing the bodies failed.
        """
        self._prepared = None
        decoder = cbor2.CBORDecoder(data)
        n_bodies = read_header(decoder.decode)
        state = machine.restore_items(decoder.decode)
        written = self.bodies.prepare(SnapshotBodies(decoder.decode, n_bodies, state), index)
        self._prepared = (index, state)
        logger.info("snapshot at index %d decoded: %d messages, their bodies written",
                    index, written)

    def restore(self, data: bytes | SnapshotData, index: int) -> None:
        """Replace the state and the bodies with a node snapshot's (from the leader): the one
        `prepare_restore` decoded when it is at `index` (its bodies were switched in with the
        snapshot's persist), else decoded now.

        Raises:
            machine.SnapshotError: the snapshot does not decode (state and bodies unchanged).
        """
        self._puts, self._drops, self._pending = [], [], {}
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] == index:
            self.state = prepared[1]
        else:
            fp = io.BytesIO(data) if isinstance(data, bytes) else DataFile(data)
            decoder = cbor2.CBORDecoder(cast("BinaryIO", fp))
            n_bodies = read_header(decoder.decode)
            state = machine.restore_items(decoder.decode)
            self.bodies.replace(SnapshotBodies(decoder.decode, n_bodies, state), index)
            self.state = state
        logger.info("state restored from snapshot at index %d (%d messages)", index,
                    machine.query_total_messages(self.state))

    def snapshot_job(self) -> SnapshotJob:
        """A job writing a node snapshot of the state as it is now (call between applies,
        after `flush`)."""
        return SnapshotJob(self.state, self.bodies, self.snapshot_fork_dir)

    def digest(self) -> str:
        """SHA-256 of the node snapshot (state and bodies): equal on replicas in one state.

        Only meaningful once the bodies of every applied entry are in the store (after the
        first apply step that follows a restart's replay)."""
        return node_digest(self.state, self._get_many)

    def on_leadership(self, leading: bool) -> None:
        """This node began (True) or stopped (False) leading: tell the sink."""
        if leading:
            self.sink.became_leader(machine.state_enter("leader", self.state))
        else:
            self.sink.lost_leadership()
