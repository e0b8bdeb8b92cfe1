"""``python -m benchmarks.gpu_step``: see :mod:`benchmarks.gpu_step.run`."""
import sys

from .run import main

sys.exit(main())
