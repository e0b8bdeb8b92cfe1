"""``python -m benchmarks.storage_vs_accuracy``: see :mod:`benchmarks.storage_vs_accuracy.runner`."""
import sys

from benchmarks.storage_vs_accuracy.runner import main

sys.exit(main())
