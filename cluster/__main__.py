"""`python -m cluster ...`: the `raftq` command line."""

from cluster.cli import main

main()
