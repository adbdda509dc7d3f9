"""`python -m backend.cli ...` is `mlassist ...`."""

import sys

from backend.cli import main

sys.exit(main())
