"""The bytes of an application log entry: the proposing leader's clock, then the command.

Layout: 8-byte big-endian `now_ms` (wall-clock milliseconds on the leader when it proposed the
entry; the machine's `Meta.now_ms`), followed by `node.machine.encode_command(cmd)`.
"""

from __future__ import annotations

import struct

from node import machine

_NOW = struct.Struct(">Q")


def encode_entry(now_ms: int, cmd: machine.Command) -> bytes:
    """Entry data for `cmd` proposed at `now_ms` (>= 0)."""
    return _NOW.pack(now_ms) + machine.encode_command(cmd)


def decode_entry(data: bytes) -> tuple[int, machine.Command | machine.ErrorReply]:
    """Split entry data into (now_ms, command); a short or garbled entry decodes to an error.

    Never raises: `decode_command` answers garbage with an ErrorReply, which `apply` replies.
    """
    if len(data) < _NOW.size:
        return 0, machine.ErrorReply(machine.BAD_REQUEST, "log entry shorter than its header")
    (now_ms,) = _NOW.unpack_from(data)
    return now_ms, machine.decode_command(data[_NOW.size :])
