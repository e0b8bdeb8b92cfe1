"""Run under torchrun by tests/store/test_distributed.py: relabel a small set across ranks."""
import sys

import torch

torch.set_num_threads(1)
from score_codec.training.images import TensorImages, load_fashion_mnist  # noqa: E402
from score_codec.training.models import ConvNet  # noqa: E402
from score_codec.training.relabel import relabel  # noqa: E402


def setup():
    x, y = load_fashion_mnist("train")
    torch.manual_seed(0)
    return TensorImages(x[:30, :, 8:20, 8:20], y[:30]), ConvNet(1, 10, width=4, depth=1).eval()


if __name__ == "__main__":
    images, teacher = setup()
    relabel(images, teacher, sys.argv[1], 3, mix="cutmix", batch_size=8, rank=3, seed=5, input_size=10,
            progress=False, raw_dump=sys.argv[2])
