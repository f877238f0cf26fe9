"""``python -m xent``: the `xent` console script (`xent.cli`)."""
import sys

from xent.cli import main

sys.exit(main())
