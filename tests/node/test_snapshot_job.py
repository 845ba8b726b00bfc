"""The node snapshot written in place and by a forked child (node/app.py `SnapshotJob`,
node/snapshot_fork.py): the same bytes, of the state as of the fork even when applies go on."""

from __future__ import annotations

import hashlib
import io
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node import machine
from node.app import QueueApp
from node.bodies import MemoryBodies
from node.entry import encode_entry
from node.raft import Entry, Index, Term
from node.snapshot_fork import ITEMS_FILE, KEYS_FILE, SnapshotForkError


class _Out(io.BytesIO):
    pass


def _app(fork_dir: Path | None) -> tuple[QueueApp, list[int]]:
    app = QueueApp(machine.new_state(), MemoryBodies(), snapshot_fork_dir=fork_dir)
    index = [0]
    rng = random.Random(7)  # the same bodies in each app

    def apply(cmd: machine.Command) -> None:
        index[0] += 1
        app.apply(Entry(Term(1), Index(index[0]), data=encode_entry(1_000 + index[0], cmd)))
        app.flush(index[0])

    apply(machine.CreateQueue("q", machine.QueueOptions()))
    for i in range(300):
        apply(machine.Enqueue("q", rng.randbytes(100 + i), headers={"i": str(i)}))
    apply(machine.Receive("q", "c", max_messages=7))
    return app, index


def _write(job: object, app: QueueApp) -> bytes:
    out = _Out()
    if job.forks:  # type: ignore[attr-defined]
        job.freeze()  # type: ignore[attr-defined]
        job.fork()  # type: ignore[attr-defined]
        # Applies go on after the fork: the child's copy does not see them.
        for i in range(50):
            app.apply(Entry(Term(1), Index(10_000 + i),
                            data=encode_entry(5_000, machine.Enqueue("q", b"later"))))
        app.flush(10_049)
        job.write_forked(out)  # type: ignore[attr-defined]
    else:
        job.write_machine(out)  # type: ignore[attr-defined]
    job.write_bodies(out)  # type: ignore[attr-defined]
    return out.getvalue()


def test_a_forked_snapshot_is_the_in_place_one_of_the_state_at_the_fork(tmp_path: Path) -> None:
    in_place, _ = _app(None)
    expected = _write(in_place.snapshot_job(), in_place)
    # `node_status`'s digest hashes this same stream.
    assert hashlib.sha256(expected).hexdigest() == in_place.digest()
    forked, _ = _app(tmp_path)
    assert forked.digest() == in_place.digest()
    before = forked.digest()
    got = _write(forked.snapshot_job(), forked)
    assert got == expected
    assert forked.digest() != before  # the 50 later applies did change the state
    assert not (tmp_path / ITEMS_FILE).exists() and not (tmp_path / KEYS_FILE).exists()
    # And it restores to the state it was taken of.
    restored = QueueApp(machine.new_state(), MemoryBodies())
    restored.restore(got, 302)
    assert restored.digest() == in_place.digest()


def test_a_child_that_fails_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    app, _ = _app(tmp_path / "missing")  # the child cannot create its files there
    job = app.snapshot_job()
    job.freeze()
    job.fork()
    with pytest.raises(SnapshotForkError, match="failed"):
        job.write_forked(_Out())
    job.close()
    assert not any(tmp_path.iterdir())


CHILD_OUTLIVES = """
import os, signal, sys, time
from pathlib import Path
from node import machine
from node import snapshot_fork

def slow_items(state):
    time.sleep(60)
    yield b""

snapshot_fork.machine.snapshot_items = slow_items  # the child inherits the patch
forked = snapshot_fork.ForkedMachine(machine.new_state(), Path(sys.argv[1]))
print(forked.pid, flush=True)
time.sleep(0.5)  # the child is in slow_items now
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_child_dies_with_a_node_killed_mid_snapshot(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD_OUTLIVES, str(tmp_path)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), f"the snapshot child {child} outlived its node"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
