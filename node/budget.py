"""A budget of bytes that tasks take before they hold data and give back when it is gone.

Bounds a buffer by its size, not its count of items: one reply (or command) may be a few bytes
or several MiB. An item larger than the whole budget is let in when nothing else is held, so
it never waits for ever.
"""

from __future__ import annotations

import trio

__all__ = ["ByteBudget"]


class ByteBudget:
    """`acquire(n)` waits until `n` more bytes fit (or nothing is held); `release(n)` gives
    them back. One trio run; not thread-safe.

    Args:
        max_bytes: the most bytes held at once (but see the module docstring).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self.waits = 0  # how often a task had to wait: the buffer was full
        self._released = trio.Event()

    def fits(self, n: int) -> bool:
        """Whether `n` more bytes may be held now."""
        return self.used_bytes == 0 or self.used_bytes + n <= self.max_bytes

    async def acquire(self, n: int) -> None:
        """Wait until `n` bytes fit, then hold them."""
        if not self.fits(n):
            self.waits += 1
            while not self.fits(n):
                await self._released.wait()
        self.used_bytes += n

    def release(self, n: int) -> None:
        """Give back `n` bytes held."""
        self.used_bytes -= n
        released, self._released = self._released, trio.Event()
        released.set()
