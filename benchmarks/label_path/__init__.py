"""The label-path benchmarks: decode, encode and training-data-path throughput at ImageNet scale
(:mod:`~benchmarks.label_path.bench`, ``python -m benchmarks.label_path``), the same paths per device
(:mod:`~benchmarks.label_path.device_paths`) and a preset's end-to-end throughput
(:mod:`~benchmarks.label_path.throughput`).  The protocol is ``benchmarks/label_path/PROTOCOL.md``.
"""
