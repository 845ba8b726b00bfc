"""Raft consensus as a pure, sans-I/O state machine (no sockets, clocks, files or tasks).

See `RaftNode` for the calling rules and `Ready` for the persist, send, apply, advance contract.
"""

from ._driver import ReadyIO as ReadyIO
from ._driver import follow_readies as follow_readies
from ._driver import run_sync as run_sync
from ._durability import DurabilityMark as DurabilityMark
from ._durability import assess_durability as assess_durability
from ._durability import lower_mark_before as lower_mark_before
from ._durability import mark_of as mark_of
from ._durability import raise_mark_after as raise_mark_after
from ._errors import CompactedError as CompactedError
from ._errors import NotLeader as NotLeader
from ._errors import ProposalDropped as ProposalDropped
from ._errors import RaftError as RaftError
from ._errors import UnavailableError as UnavailableError
from ._membership import ChangeKind as ChangeKind
from ._membership import ConfChange as ConfChange
from ._membership import ConfChangeError as ConfChangeError
from ._membership import Membership as Membership
from ._node import Config as Config
from ._node import PeerStatus as PeerStatus
from ._node import RaftNode as RaftNode
from ._node import Status as Status
from ._ready import ReadState as ReadState
from ._ready import Ready as Ready
from ._ready import SoftState as SoftState
from ._storage import MemoryStorage as MemoryStorage
from ._storage import Storage as Storage
from ._storage import entry_size_bytes as entry_size_bytes
from ._types import MESSAGE_TYPES as MESSAGE_TYPES
from ._types import REPAIR_DONE as REPAIR_DONE
from ._types import REPAIR_ENTER as REPAIR_ENTER
from ._types import REPAIR_NONE as REPAIR_NONE
from ._types import AppendEntries as AppendEntries
from ._types import AppendEntriesResponse as AppendEntriesResponse
from ._types import Entry as Entry
from ._types import EntryKind as EntryKind
from ._types import HardState as HardState
from ._types import Heartbeat as Heartbeat
from ._types import HeartbeatResponse as HeartbeatResponse
from ._types import Index as Index
from ._types import InstallSnapshot as InstallSnapshot
from ._types import InstallSnapshotResponse as InstallSnapshotResponse
from ._types import JoinQuery as JoinQuery
from ._types import JoinQueryResponse as JoinQueryResponse
from ._types import Message as Message
from ._types import NodeId as NodeId
from ._types import RequestVote as RequestVote
from ._types import RequestVoteResponse as RequestVoteResponse
from ._types import Role as Role
from ._types import Snapshot as Snapshot
from ._types import SnapshotMeta as SnapshotMeta
from ._types import Standing as Standing
from ._types import Term as Term
from ._types import TimeoutNow as TimeoutNow
