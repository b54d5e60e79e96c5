"""``python -m spectriton``: the same as the ``spectriton`` command."""

import sys

from spectriton.cli import main

sys.exit(main())
