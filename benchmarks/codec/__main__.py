"""``python -m benchmarks.codec``: see :mod:`benchmarks.codec.bench`."""
import sys

from benchmarks.codec.bench import main

sys.exit(main())
