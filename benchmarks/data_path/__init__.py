"""The 224-px training data path benchmark: ``python -m benchmarks.data_path`` (see PROTOCOL.md)."""
