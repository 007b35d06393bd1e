"""`python -m client.loadtest` is `aegen-loadtest`."""

import sys

from client.loadtest.cli import main

sys.exit(main())
