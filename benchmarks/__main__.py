"""``python -m raygrain.benchmarks``: run the suite (see ``benchmarks._suite``)."""

import sys

from raygrain.benchmarks._suite import main

sys.exit(main())
