"""`python -m node --config FILE --id ID`: run one raftq node."""

import sys

from node.main import main

sys.exit(main())
