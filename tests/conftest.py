import os

import pytest
import torch

# Two cores: tests run single-threaded so parallel helpers and CI never oversubscribe.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
