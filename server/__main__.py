"""`python -m server`: aegen-serve from a checkout, without installing the package."""

import sys

from server.app import main

sys.exit(main())
