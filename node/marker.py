"""The durability mark's file: `MarkerFile` (what it holds and why: node/raft/_durability.py).

The mark lives in its own small file beside the node's database (`<data_dir>/durable.mark`), not
in RocksDB: a record kept in the same write-ahead log would be cut together with the log it is
meant to vouch for. Each write replaces the file atomically (write a temporary file, fsync it,
rename it over the old one, fsync the directory), so a crash leaves the old mark or the new one.

Format: CBOR `{"format": 1, "cluster_id": str, "node_id": int, "term": int, "vote": int | None,
"standing": int, "index": int, "index_term": int}` preceded by a 4-byte big-endian CRC32 of the
CBOR bytes.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from struct import Struct
from typing import Any

import cbor2

from node.raft import DurabilityMark, Index, NodeId, Standing, Term
from node.storage import CorruptStorageError

__all__ = ["MARK_FILE_NAME", "MarkerFile"]

MARK_FILE_NAME = "durable.mark"
"""Name of the mark file in a node's data directory."""

_FORMAT = 1
_CRC = Struct(">I")
_STANDINGS = {s.value: s for s in Standing}


class MarkerFile:
    """Reads and atomically rewrites one node's durability mark.

    Args:
        path: the mark file (`<data_dir>/durable.mark`).
        cluster_id: the node's cluster; a mark of another cluster or node is refused.
        node_id: the node's id.

    Not thread-safe: one write at a time (the Raft loop serialises them).
    """

    def __init__(self, path: Path, cluster_id: str, node_id: int) -> None:
        self.path = path
        self.cluster_id = cluster_id
        self.node_id = node_id

    def load(self) -> DurabilityMark | None:
        """Return the mark, or None when there is no mark file.

        Raises:
            CorruptStorageError: the file fails its checksum, does not decode, or belongs to
                another cluster or node (the message names the file and what is wrong).
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CorruptStorageError(f"durability mark {self.path}: unreadable: {exc}") from None
        if len(raw) < _CRC.size:
            raise self._bad(f"{len(raw)} bytes, too short for its checksum")
        body = raw[_CRC.size :]
        if _CRC.unpack_from(raw)[0] != zlib.crc32(body):
            raise self._bad("checksum mismatch")
        try:
            obj: Any = cbor2.loads(body)
        except Exception as exc:
            raise self._bad(f"undecodable CBOR ({exc})") from None
        if type(obj) is not dict or obj.get("format") != _FORMAT:
            raise self._bad(f"unknown format {obj!r:.80}")
        if (obj.get("cluster_id"), obj.get("node_id")) != (self.cluster_id, self.node_id):
            raise self._bad(
                f"belongs to cluster {obj.get('cluster_id')!r} node {obj.get('node_id')!r}, "
                f"not cluster {self.cluster_id!r} node {self.node_id!r}"
            )
        try:
            term, vote, standing = obj["term"], obj["vote"], obj["standing"]
            index, index_term = obj["index"], obj["index_term"]
            ok = (
                all(type(v) is int and v >= 0 for v in (term, index, index_term))
                and (vote is None or (type(vote) is int and vote > 0))
                and standing in _STANDINGS
            )
        except KeyError as exc:
            raise self._bad(f"field {exc} missing") from None
        if not ok:
            raise self._bad(f"malformed fields {obj!r:.120}")
        return DurabilityMark(
            Term(term),
            None if vote is None else NodeId(vote),
            _STANDINGS[standing],
            Index(index),
            Term(index_term),
        )

    def store(self, mark: DurabilityMark) -> None:
        """Replace the mark, durably (blocking: call from a worker thread on a hot path).

        Raises:
            OSError: the file could not be written; the old mark is left in place.
        """
        body = cbor2.dumps(
            {
                "format": _FORMAT,
                "cluster_id": self.cluster_id,
                "node_id": self.node_id,
                "term": mark.term,
                "vote": mark.vote,
                "standing": int(mark.standing),
                "index": mark.index,
                "index_term": mark.index_term,
            }
        )
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, _CRC.pack(zlib.crc32(body)) + body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _bad(self, problem: str) -> CorruptStorageError:
        return CorruptStorageError(
            f"durability mark {self.path}: {problem} (move the node's data directory away and "
            "restart it; see docs/operations.md \"Recovery\")"
        )
