"""``python -m benchmarks.label_path``: see :mod:`benchmarks.label_path.bench`."""
import sys

from benchmarks.label_path.bench import main

sys.exit(main())
