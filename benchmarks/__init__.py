"""score's benchmarks, one sub-package per benchmark, each run as ``python -m benchmarks.<name>``.

``storage_vs_accuracy`` (student top-1 against label bytes), ``codec`` (codec fidelity and speed),
``label_path`` (decode, encode and training-data-path throughput), ``selection`` (SCORE's greedy selector)
and ``faults`` (the fault table).  :mod:`benchmarks.shared` holds the helpers they share;
``python -m benchmarks.render`` renders the docs' results page and the README's table from the committed JSON.
"""
