"""`python -m alignloop` is the `alignloop` console script."""

import sys

from alignloop.cli import main

sys.exit(main())
