"""Run under torchrun by tests/store/test_distributed.py: encode a fixed set of logits across ranks."""
import sys

import torch

torch.set_num_threads(1)
from score_codec.store.distributed import encode_distributed  # noqa: E402
from tests.common import make_meta, teacher_like_logits  # noqa: E402

if __name__ == "__main__":
    path, method = sys.argv[1], sys.argv[2]
    y = teacher_like_logits(30, 8, 10, seed=31)
    encode_distributed(y, path, method=method, rank=3, labels=[i % 3 for i in range(30)], meta=make_meta(30, 8),
                       shard_bytes=2000)
