"""What the benchmark systems share: results, percentiles, memory sampling, ports, installs."""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BODY_BYTES = 1024
"""Body size of every benchmark message, in bytes (1 KiB)."""

ROOT = Path(__file__).resolve().parents[2]
"""The repository root."""


def ensure_packages(specs: dict[str, str]) -> list[str]:
    """Install benchmark-only packages into this interpreter's environment when missing.

    They are not dependencies of raftq, so they are not in pyproject.toml: the benchmark
    installs them at run time with `python -m pip install`.

    Args:
        specs: importable module name -> pip requirement (e.g. {"aio_pika": "aio-pika"}).

    Returns:
        The requirements that were installed (empty when all were there).

    Raises:
        RuntimeError: pip failed (its last output lines are in the message).
    """
    missing = [req for mod, req in specs.items() if importlib.util.find_spec(mod) is None]
    if not missing:
        return []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *missing],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise RuntimeError(f"pip install {' '.join(missing)} failed: {tail}")
    importlib.invalidate_caches()
    return missing


def percentile_ms(latencies_s: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0 to 100, nearest rank) of latencies in seconds, in milliseconds."""
    if not latencies_s:
        return None
    ordered = sorted(latencies_s)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank] * 1000


def latency_figures(latencies_s: Sequence[float]) -> dict[str, float | None]:
    """p50 and p99 (and max) of latencies given in seconds, as `p50_ms`, `p99_ms`, `max_ms`."""
    return {
        "p50_ms": percentile_ms(latencies_s, 50),
        "p99_ms": percentile_ms(latencies_s, 99),
        "max_ms": max(latencies_s) * 1000 if latencies_s else None,
    }


def body(i: int, size_bytes: int = BODY_BYTES) -> bytes:
    """A message body of `size_bytes` bytes whose first 8 bytes carry `i`."""
    return i.to_bytes(8, "big") + b"x" * (size_bytes - 8)


def random_body(size_bytes: int = BODY_BYTES) -> bytes:
    """A body of `size_bytes` random bytes (incompressible, unlike `body`)."""
    return os.urandom(size_bytes)


def _kib_field(path: str, name: str) -> int:
    """The `name:` line of a /proc file in bytes (its value is in kB), 0 when it is gone."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Resident memory of one process in bytes (VmRSS), 0 when it is gone."""
    return _kib_field(f"/proc/{pid}/status", "VmRSS:")


def pss_bytes(pid: int) -> int:
    """Proportional resident memory of one process (Pss: each shared page divided among the
    processes sharing it), 0 when it is gone."""
    return _kib_field(f"/proc/{pid}/smaps_rollup", "Pss:")


def tree_memory_bytes(pid: int) -> int:
    """Resident memory of the process tree of `pid`: VmRSS when it is one process; with
    children (a raftq node's forked snapshot writer shares its pages copy-on-write) the sum
    of their Pss, so that a shared page counts once."""
    pids = tree_pids(pid)
    if len(pids) == 1:
        return rss_bytes(pid)
    return sum(pss_bytes(p) for p in pids)


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc), for memory of a process tree."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far, in seconds (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class RssSampler:
    """Samples the resident memory of named process trees in a thread; keeps each peak.

    Use as a context manager around a workload. `peak_bytes[name]` is the largest
    `tree_memory_bytes` of `pids[name]` seen at any sample.

    Attributes:
        pids: name (e.g. "n1") -> root pid of the tree.
        period_s: seconds between samples.
        peak_bytes: name -> peak resident bytes.
    """

    pids: dict[str, int]
    period_s: float = 0.25
    peak_bytes: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one sample now."""
        for name, pid in self.pids.items():
            total = tree_memory_bytes(pid)
            self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), total)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def peak_mib(self) -> dict[str, float]:
        """name -> peak resident memory in MiB."""
        return {k: round(v / 2**20, 1) for k, v in self.peak_bytes.items()}

    def current_mib(self) -> dict[str, float]:
        """name -> resident memory in MiB now (one sample, which also counts for the peaks)."""
        self.sample()
        return {name: round(tree_memory_bytes(pid) / 2**20, 1) for name, pid in self.pids.items()}

    def children(self) -> dict[str, int]:
        """name -> how many processes its tree has besides its root now (a raftq node's
        forked snapshot writer, while it runs)."""
        return {name: len(tree_pids(pid)) - 1 for name, pid in self.pids.items()}


def ports_free(ports: Iterable[int], host: str = "127.0.0.1") -> bool:
    """True when every port can be bound on `host` now."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def pick_base_port(offsets: Sequence[int], lo: int = 20000, hi: int = 40000) -> int:
    """A base port B such that every B + offset is free on 127.0.0.1.

    Raises:
        RuntimeError: none found in 200 tries.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(lo, hi, 10)
        if ports_free(base + o for o in offsets):
            return base
    raise RuntimeError("no free port range found")


def wait_port(port: int, timeout_s: float, host: str = "127.0.0.1") -> bool:
    """Wait until something accepts TCP connections on host:port; False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def rate_window(
    done_at_s: Sequence[float], start_s: float, end_s: float
) -> float | None:
    """Completions per second among `done_at_s` (monotonic seconds) within [start_s, end_s)."""
    if end_s <= start_s:
        return None
    n = sum(1 for t in done_at_s if start_s <= t < end_s)
    return n / (end_s - start_s)


class Unavailable(Exception):
    """A system cannot be run on this machine; the message says why (shown in its row)."""


def code_version() -> str:
    """The commit the measured code is at ("abc1234"), "+dirty" when node/ or cluster/ have
    uncommitted changes (the tree is shared: a node started later may run other code)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=False).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "node", "cluster"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()
    return head + ("+dirty" if dirty else "")
