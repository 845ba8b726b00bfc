"""The machine's part of a snapshot written by a forked child process, while applies go on.

Encoding the machine's items of a large state takes seconds (about 5 us per message, in
Python); the state must not change meanwhile, so in a worker thread the loop would hold every
apply back for that long, and the encoding would take the GIL from the event loop. Instead the
node forks (as Redis does for its background saves): the child has a copy-on-write image of
the state as of the fork, encodes it to a file and exits; the parent goes on applying at once
and reads the file when the child is done. The fork itself costs a copy of the page tables
(milliseconds for a GiB); the pages the parent changes afterwards are copied by the kernel.

The child runs only this module's `_child`: no trio, no RocksDB, no logging (their threads
and locks are not in the child); it leaves with `os._exit`, and the kernel kills it if the
node dies first (`PR_SET_PDEATHSIG`).

Files (in the directory given, beside the database): `snapshot-machine` holds the node
snapshot's header and the machine's items, exactly as `SnapshotJob.write_machine` writes them
(node/app.py); `snapshot-keys` holds the body keys the state refers to, ascending, as
unsigned 64-bit integers in native order. Both are deleted once read; a crash leaves them,
and the next fork overwrites them.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
from array import array
from pathlib import Path
from typing import Any

from node import machine
from node.snapshots import header_item

__all__ = ["ForkedMachine", "SnapshotForkError"]

ITEMS_FILE = "snapshot-machine"
KEYS_FILE = "snapshot-keys"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
READ_BYTES = 4 * 1024 * 1024
"""How much of the items file `ForkedMachine.copy_to` reads at a time."""


class SnapshotForkError(Exception):
    """The forked child failed (its exit status says how), or its files are missing."""


def _die_with(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux `PR_SET_PDEATHSIG`), so
    that a node killed mid-snapshot leaves no child behind; best effort elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the prctl
        os._exit(1)


def _child(
    state: machine.MachineState, items_path: Path, keys_path: Path, parent_pid: int
) -> None:
    """In the child: write both files, then leave (never returns)."""
    code = 1
    try:
        gc.disable()  # a collection would touch (and so copy) every object's page
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with(parent_pid)
        keys = machine.body_keys(state)
        with open(keys_path, "wb") as f:
            array("Q", keys).tofile(f)
        with open(items_path, "wb", buffering=READ_BYTES) as f:
            f.write(header_item(len(keys)))
            for item in machine.snapshot_items(state):
                f.write(item)
            f.flush()
        code = 0
    except BaseException:  # noqa: BLE001 - the exit status says it failed
        code = 1
    finally:
        os._exit(code)


class ForkedMachine:
    """One forked write of the machine's items (see the module docstring).

    Args:
        state: the state; call at a point where it is the snapshot's (between two applies).
        directory: where the child writes its files.

    Raises:
        OSError: the fork failed.
    """

    def __init__(self, state: machine.MachineState, directory: Path) -> None:
        self.items_path = directory / ITEMS_FILE
        self.keys_path = directory / KEYS_FILE
        for path in (self.items_path, self.keys_path):
            path.unlink(missing_ok=True)
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            _child(state, self.items_path, self.keys_path, parent_pid)
        self.pid: int | None = pid

    def wait(self) -> None:
        """Wait for the child to exit (blocking: call from a worker thread).

        Raises:
            SnapshotForkError: the child did not exit with status 0.
        """
        pid, self.pid = self.pid, None
        if pid is None:
            return
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SnapshotForkError(
                f"the snapshot child process {pid} failed (wait status {status})"
            )

    def body_keys(self) -> list[int]:
        """The body keys the child wrote (after `wait`)."""
        keys = array("Q")
        try:
            data = self.keys_path.read_bytes()
        except OSError as exc:
            raise SnapshotForkError(f"{self.keys_path}: {exc}") from None
        keys.frombytes(data)
        return keys.tolist()

    def copy_to(self, out: Any) -> int:
        """Write the items file to `out` (has `write(bytes)`); returns the bytes written."""
        write = out.write
        size = 0
        try:
            with open(self.items_path, "rb") as f:
                while piece := f.read(READ_BYTES):
                    write(piece)
                    size += len(piece)
        except OSError as exc:
            raise SnapshotForkError(f"{self.items_path}: {exc}") from None
        return size

    def close(self) -> None:
        """Reap the child if still running (killed) and delete the files (idempotent)."""
        pid, self.pid = self.pid, None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for path in (self.items_path, self.keys_path):
            path.unlink(missing_ok=True)
