"""``python -m benchmarks.data_path``: see :mod:`benchmarks.data_path.run`."""
import sys

from .run import main

sys.exit(main())
