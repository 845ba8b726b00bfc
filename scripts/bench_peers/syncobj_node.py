"""One pysyncobj process for the benchmark: a `ReplQueue` replica plus a small TCP front end.

pysyncobj is a library, not a server: to be measured like the other systems (a client process
sending over TCP and waiting for a commit), each of the three processes serves clients on its
own port. Frames are a 4-byte big-endian length and a payload `op (1 byte) | request id (4
bytes) | data`; ops: `P` put(data) -> status byte; `G` get -> status byte + item (empty when
none); `S` -> JSON {"leader": bool, "qsize": int, "has_quorum": bool}. A put or get is answered
when pysyncobj calls back, i.e. after the command is committed by a majority and applied
(pysyncobj's journal is an mmap'd file, written without fsync). Any node accepts commands;
followers forward them to the leader (pysyncobj does that itself).

Usage: python syncobj_node.py --self 127.0.0.1:P --partners 127.0.0.1:Q,127.0.0.1:R
       --client-port C --journal FILE --password-file FILE [--tick-s 0.001]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
from pathlib import Path
from typing import Any

from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.batteries import ReplQueue
from pysyncobj.config import FAIL_REASON

OK, FAIL = b"\x00", b"\x01"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--self", required=True)
    p.add_argument("--partners", required=True)
    p.add_argument("--client-port", type=int, required=True)
    p.add_argument("--journal", required=True)
    p.add_argument("--password-file", required=True)
    p.add_argument("--tick-s", type=float, default=0.001)
    args = p.parse_args()
    queue = ReplQueue()
    conf = SyncObjConf(
        password=Path(args.password_file).read_text().strip(),
        journalFile=args.journal,
        autoTickPeriod=args.tick_s,
        appendEntriesPeriod=args.tick_s,
        commandsQueueSize=200_000,
        logCompactionMinEntries=200_000,
        dynamicMembershipChange=False,
    )
    sync = SyncObj(args.self, args.partners.split(","), conf=conf, consumers=[queue])
    asyncio.run(serve(sync, queue, args.client_port))


async def serve(sync: SyncObj, queue: ReplQueue, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def reply(rid: bytes, payload: bytes) -> None:
            if not writer.is_closing():
                writer.write(struct.pack(">I", 4 + len(payload)) + rid + payload)

        def callback_for(rid: bytes, is_get: bool) -> Any:
            def cb(result: Any, error: int) -> None:  # called in pysyncobj's thread
                if error == FAIL_REASON.SUCCESS:
                    data = OK + (result or b"" if is_get else b"")
                else:
                    data = FAIL + str(error).encode()
                loop.call_soon_threadsafe(reply, rid, data)
            return cb

        try:
            while True:
                header = await reader.readexactly(4)
                frame = await reader.readexactly(struct.unpack(">I", header)[0])
                op, rid, data = frame[:1], frame[1:5], frame[5:]
                if op == b"P":
                    queue.put(data, callback=callback_for(rid, False))
                elif op == b"G":
                    queue.get(callback=callback_for(rid, True))
                elif op == b"S":
                    status = {"leader": sync._isLeader(), "qsize": queue.qsize(),
                              "has_quorum": sync.hasQuorum}
                    reply(rid, OK + json.dumps(status).encode())
                else:
                    reply(rid, FAIL + b"bad op")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await stop.wait()
    sync.destroy()


if __name__ == "__main__":
    main()
