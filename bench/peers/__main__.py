"""`python -m bench.peers`: the peer benchmark (bench/peers/run.py)."""

import sys

from bench.peers.run import main

sys.exit(main())
