"""The fault benchmark: faults injected into label stores and dumps, and what was detected and lost.
Run it with ``python -m benchmarks.faults``; the protocol is ``benchmarks/faults/PROTOCOL.md``.
"""
