"""``python -m flows.cli``: the ``tfnn`` command of this checkout."""

import sys

from flows.cli import main

sys.exit(main())
