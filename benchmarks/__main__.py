"""``python -m benchmarks``: run the suite (see ``benchmarks._suite``)."""

import sys

from benchmarks._suite import main

sys.exit(main())
