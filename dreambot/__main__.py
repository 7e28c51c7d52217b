"""`python -m dreambot ...`: the same as the `dreambot` console script."""

import sys

from .cli import main

sys.exit(main())
