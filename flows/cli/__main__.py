"""`python -m flows.cli ...` is `vlmpipe ...`."""

import sys

from flows.cli import main

sys.exit(main())
