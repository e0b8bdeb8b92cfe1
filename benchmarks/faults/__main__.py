"""``python -m benchmarks.faults``: see :mod:`benchmarks.faults.report`."""
import sys

from benchmarks.faults.report import main

sys.exit(main())
