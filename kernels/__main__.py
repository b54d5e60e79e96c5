"""``python -m spectriton.kernels``: build every kernel for sm_80 and sm_90, report resources."""

import sys

from spectriton.kernels.build import main

sys.exit(main())
