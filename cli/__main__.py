"""``python -m cli``: the ``tfnn`` command of this checkout."""

import sys

from cli import main

sys.exit(main())
