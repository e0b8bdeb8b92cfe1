"""The training step with soft labels on a device: ``python -m benchmarks.gpu_step`` (see PROTOCOL.md)."""
