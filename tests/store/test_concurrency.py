"""Several processes and DataLoader workers reading one store at once."""
import multiprocessing as mp
import os
import shutil
import subprocess
import json

import numpy as np
import pytest
import torch

import score_codec as sc
from score_codec.training.dataset import CompressedSoftLabelDataset

from tests.common import assert_float32_decode_equal, teacher_like_logits
from tests.training.test_dataset import EPOCHS, assert_same_stream, images, store_path, stream, teacher  # noqa: F401 (fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read_all(path):
    torch.set_num_threads(1)
    store = sc.LabelStore(path)
    out = []
    for _ in range(3):  # repeated passes keep the four readers overlapping
        out = [store.matrix(i).numpy() for i in range(len(store))]
        rows = store.rows(np.arange(len(store)), np.arange(len(store)) % 16).numpy()
    return np.stack(out), rows


def test_four_processes_read_one_store_at_once(tmp_path):
    y = teacher_like_logits(64, 16, 10, seed=51)
    sc.encode(y, tmp_path / "c.store", rank=4, residual=1, shard_bytes=4000)
    want, want_rows = _read_all(str(tmp_path / "c.store"))
    with mp.get_context("spawn").Pool(4) as pool:
        results = pool.map(_read_all, [str(tmp_path / "c.store")] * 4)
    for got, rows in results:  # the same bytes, decoded in other processes: float32 rounding of rank-4 products
        assert_float32_decode_equal(got, want, terms=4 + 2)
        assert_float32_decode_equal(rows, want_rows, terms=4 + 2)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker")
def test_four_dataloader_workers_give_the_same_stream(images, store_path):  # noqa: F811
    ds = CompressedSoftLabelDataset(images, store_path)
    ref = stream(ds, store_path, range(EPOCHS))
    assert_same_stream(ref, stream(ds, store_path, range(EPOCHS), num_workers=4, persistent_workers=True))


def test_torchrun_ranks_get_disjoint_shares_of_every_stored_batch(tmp_path, images, store_path):  # noqa: F811
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    out = tmp_path / "shares.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "tests.dist_train_job", store_path, str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shares = json.loads(out.read_text())  # epoch -> rank -> list of batches of dataset indices
    store = sc.LabelStore(store_path)
    rows, batches = store.aug.rows, store.aug.batches
    for e in range(EPOCHS):
        eb = batches[batches["epoch"] == e]
        r0, r1 = shares[str(e)]["0"], shares[str(e)]["1"]
        assert len(r0) == len(r1) == len(eb)
        for b, (x0, x1) in zip(eb, zip(r0, r1)):
            stored = rows["image"][b["row_start"] : b["row_start"] + b["size"]].tolist()
            assert not set(x0) & set(x1) or len(stored) % 2  # disjoint unless padding repeats one
            assert set(x0) | set(x1) == set(stored)
