"""Systems measured by `scripts/bench cluster` and `scripts/bench compare`.

One module per system: `raftq_peer` (the local three-node raftq cluster, driven through
`cluster.client.AsyncClient`), `rabbitmq_peer` (a three-node RabbitMQ cluster with a quorum
queue, driven through aio-pika), `syncobj_peer` (pysyncobj's `ReplQueue` on three processes,
`syncobj_node` being one such process), and `limits` (fsync, synced RocksDB batches, trio
loopback). `common` has what they share: timing, percentiles, resident memory, port choice and
the run-time install of benchmark-only packages.
"""
