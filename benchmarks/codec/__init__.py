"""The codec benchmark: size, fidelity and speed of every codec on real teacher logits (10 and 1000
classes).  Run it with ``python -m benchmarks.codec``; the protocol is ``benchmarks/codec/PROTOCOL.md``.
"""
