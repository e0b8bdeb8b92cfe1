"""The storage-versus-accuracy benchmark: student top-1 against label bytes for our codecs and the peers.

Run it with ``python -m benchmarks.storage_vs_accuracy --preset glyphs-quick``; the protocol is
``benchmarks/storage_vs_accuracy/PROTOCOL.md``.
"""
from benchmarks.storage_vs_accuracy.presets import PRESETS, Config
from benchmarks.storage_vs_accuracy.runner import ARTIFACTS_DIR, RESULTS_DIR, Pipeline, main, read_sre2l, run

__all__ = ["Config", "PRESETS", "Pipeline", "run", "main", "read_sre2l", "RESULTS_DIR", "ARTIFACTS_DIR"]
