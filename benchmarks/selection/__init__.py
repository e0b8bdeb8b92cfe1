"""The selection benchmark: SCORE's incremental greedy selector against naive recomputation, and the
ImageNet-1K memory and time plan.  Run it with ``python -m benchmarks.selection``; the protocol is
``benchmarks/selection/PROTOCOL.md``.
"""
