"""``python -m benchmarks.selection``: see :mod:`benchmarks.selection.bench`."""
from benchmarks.selection.bench import main

main()
