"""Test support: deterministic simulators (not part of the product).

* `tests.sim.raft_sim`: N pure Raft cores over an in-memory network, counted in ticks.
* `tests.sim.node_sim`: N whole nodes (the production `RaftLoop`, `QueueApp`, actors and request
  handling) over an in-memory network and disk, on trio's `MockClock`.
* `tests.sim.sim_io`: the whole-node simulator's in-memory disk, mark and network.
* `tests.sim.cli`: `scripts/simulate`.
"""
