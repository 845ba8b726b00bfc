"""The replicated queue state machine: pure, after RabbitMQ's rabbit_fifo on Ra.

`apply(meta, command, state) -> (state, reply, effects)` is the whole write path;
commands are built by `make_*` helpers (or `command_from_wire` from a client
request) and stored in the log with `encode_command`. Reads are `query_*`
functions. No clock, I/O, threads or randomness: every replica decides the same.
See docs/semantics.md for the meaning of every command.
"""

from ._apply import Reply as Reply
from ._apply import apply as apply
from ._apply import state_enter as state_enter
from ._commands import DEFAULT_DLQ as DEFAULT_DLQ
from ._commands import Ack as Ack
from ._commands import ChangeVisibility as ChangeVisibility
from ._commands import Command as Command
from ._commands import CreateQueue as CreateQueue
from ._commands import CreateTopic as CreateTopic
from ._commands import DeleteQueue as DeleteQueue
from ._commands import DeleteTopic as DeleteTopic
from ._commands import Enqueue as Enqueue
from ._commands import EnqueueBatch as EnqueueBatch
from ._commands import ListQueues as ListQueues
from ._commands import ListTopics as ListTopics
from ._commands import MessageSpec as MessageSpec
from ._commands import Meta as Meta
from ._commands import Nack as Nack
from ._commands import Publish as Publish
from ._commands import PurgeQueue as PurgeQueue
from ._commands import QueueStats as QueueStats
from ._commands import Receive as Receive
from ._commands import Redrive as Redrive
from ._commands import Subscribe as Subscribe
from ._commands import Tick as Tick
from ._commands import Unsubscribe as Unsubscribe
from ._commands import is_read_only as is_read_only
from ._commands import make_ack as make_ack
from ._commands import make_change_visibility as make_change_visibility
from ._commands import make_create_queue as make_create_queue
from ._commands import make_create_topic as make_create_topic
from ._commands import make_delete_queue as make_delete_queue
from ._commands import make_delete_topic as make_delete_topic
from ._commands import make_enqueue as make_enqueue
from ._commands import make_enqueue_batch as make_enqueue_batch
from ._commands import make_list_queues as make_list_queues
from ._commands import make_list_topics as make_list_topics
from ._commands import make_message as make_message
from ._commands import make_nack as make_nack
from ._commands import make_publish as make_publish
from ._commands import make_purge_queue as make_purge_queue
from ._commands import make_queue_stats as make_queue_stats
from ._commands import make_receive as make_receive
from ._commands import make_redrive as make_redrive
from ._commands import make_subscribe as make_subscribe
from ._commands import make_tick as make_tick
from ._commands import make_unsubscribe as make_unsubscribe
from ._commands import queue_of as queue_of
from ._effects import ArmTimer as ArmTimer
from ._effects import Effect as Effect
from ._effects import ReleaseCursor as ReleaseCursor
from ._effects import WakeWaiters as WakeWaiters
from ._errors import BAD_REQUEST as BAD_REQUEST
from ._errors import BATCH_TOO_LARGE as BATCH_TOO_LARGE
from ._errors import ERROR_CODES as ERROR_CODES
from ._errors import INTERNAL_ERROR as INTERNAL_ERROR
from ._errors import INVALID_RECEIPT as INVALID_RECEIPT
from ._errors import MESSAGE_TOO_LARGE as MESSAGE_TOO_LARGE
from ._errors import QUEUE_EXISTS as QUEUE_EXISTS
from ._errors import QUEUE_FULL as QUEUE_FULL
from ._errors import QUEUE_NOT_FOUND as QUEUE_NOT_FOUND
from ._errors import TOPIC_EXISTS as TOPIC_EXISTS
from ._errors import TOPIC_NOT_FOUND as TOPIC_NOT_FOUND
from ._errors import UNKNOWN_OPERATION as UNKNOWN_OPERATION
from ._errors import ErrorReply as ErrorReply
from ._errors import SnapshotError as SnapshotError
from ._invariants import check_invariants as check_invariants
from ._options import QueueOptions as QueueOptions
from ._queries import query_depth as query_depth
from ._queries import query_list_queues as query_list_queues
from ._queries import query_list_topics as query_list_topics
from ._queries import query_next_due_ms as query_next_due_ms
from ._queries import query_queue_options as query_queue_options
from ._queries import query_queue_stats as query_queue_stats
from ._queries import query_ready as query_ready
from ._queries import query_total_messages as query_total_messages
from ._snapshot import digest as digest
from ._snapshot import restore as restore
from ._snapshot import snapshot as snapshot
from ._snapshot import snapshot_chunks as snapshot_chunks
from ._state import MachineState as MachineState
from ._state import new_state as new_state
from ._wire import OPERATIONS as OPERATIONS
from ._wire import command_from_wire as command_from_wire
from ._wire import decode_command as decode_command
from ._wire import encode_command as encode_command
