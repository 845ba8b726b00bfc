"""Fault injection against a real raftq cluster, a history checker, a report.

Run it with `scripts/jepsen` or `python -m jepsen_like` (docs/jepsen.md). The pure parts are
importable on their own: `jepsen_like.history` (operations, JSON lines), `jepsen_like.checker`
(total-queue and the stricter checks), `jepsen_like.generator` (the workload as data); the
parts that run a cluster are `jepsen_like.runner`, `jepsen_like.nemesis` (with
`jepsen_like.disk_nemesis` and `jepsen_like.membership_nemesis`), `jepsen_like.proxy`,
`jepsen_like.procs`, `jepsen_like.scenarios` and `jepsen_like.report`;
`jepsen_like.external` runs the workload and checker against a cluster it did not start.
"""

from jepsen_like.checker import QueueSpec as QueueSpec
from jepsen_like.checker import check as check
from jepsen_like.history import Delivery as Delivery
from jepsen_like.history import History as History
from jepsen_like.history import Op as Op
from jepsen_like.history import read_jsonl as read_jsonl
