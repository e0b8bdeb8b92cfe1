"""No silent fidelity loss: every codec at full rank decodes the labels it was given within the precision of
its quantisation (fp16 factors, and the default int8), on the logits of a trained Fashion-MNIST classifier
and on teacher-like logits."""
import logging

import numpy as np
import pytest
import torch

import score_codec as sc
from score_codec.store.encoder import QUANT_DAMAGE_UNITS, default_quant

from tests.common import centred, kl_rows, teacher_like_logits

METHODS = ["svd", "rsvd", "cur", "rpca", "shared", "global", "two-level"]
EPS16 = float(np.finfo(np.float16).eps)
#: one rounding step of each quantisation, relative to the largest value it stores
STEP = {"fp16": EPS16, "int8": 1.0 / 127}
#: KL(T=1) between source and decoded rows that full-rank factors stay under at each quantisation
FULL_RANK_KL = {"fp16": 1e-4, "int8": 2e-3}
QUANTS = [None, "fp16"]   # None: the method's default (int8 for global and two-level, else fp16)


@pytest.fixture(scope="module")
def fashion_logits():
    """(60, 12, 10) logits of a linear classifier trained on 2,000 Fashion-MNIST images, over 12 views per
    image (shifts and flips): a real 10-class soft-label dump with confident, varied rows."""
    from score_codec.training.images import load_fashion_mnist

    x, y = load_fashion_mnist("train")
    x = torch.as_tensor(np.asarray(x[:2000]), dtype=torch.float32).reshape(2000, -1)
    x = x / max(float(x.max()), 1.0)
    y = torch.as_tensor(np.asarray(y[:2000]), dtype=torch.int64)
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    imgs = x[:60].reshape(60, 1, 28, 28)
    g = torch.Generator().manual_seed(1)
    views = []
    for _ in range(12):
        dx, dy = (int(v) for v in torch.randint(-3, 4, (2,), generator=g))
        v = torch.roll(imgs, shifts=(dy, dx), dims=(2, 3))
        views.append(v.flip(-1) if bool(torch.rand(1, generator=g) < 0.5) else v)
    with torch.no_grad():
        out = torch.stack([model(v.reshape(60, -1)) for v in views], 1)
    assert float(out.abs().max()) > 10     # trained: confident rows, the case fp16 factors must survive
    return out, y[:60].tolist()


def _check_full_rank(tmp_path, logits, labels, method, quant):
    n, k, c = logits.shape
    # rank C: a basis (shared, global, two-level) spans every class; per-image ranks are capped at min(K, C)
    opts = {} if quant is None else {"quant": quant}
    sc.encode(logits, tmp_path / "x.store", method=method, rank=c, labels=labels, **opts)
    store = sc.LabelStore(tmp_path / "x.store")
    q = quant or default_quant(method)
    assert store.quant == q
    dec = torch.stack([store.matrix(i) for i in range(n)]).double()
    want = centred(logits.double())
    err = float((dec - want).abs().amax(dim=(1, 2)).max() / want.abs().amax())
    # a few rounding steps of the largest logit, no more
    assert err <= QUANT_DAMAGE_UNITS * STEP[q], f"{method}: decoded error {err / STEP[q]:.1f} {q} steps"
    assert kl_rows(logits, dec) < FULL_RANK_KL[q]


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("method", METHODS)
def test_full_rank_round_trips_a_real_dump(tmp_path, fashion_logits, method, quant):
    logits, labels = fashion_logits
    _check_full_rank(tmp_path, logits, labels, method, quant)


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [5, 20])
def test_full_rank_round_trips_teacher_like_logits(tmp_path, method, k, quant):
    logits = teacher_like_logits(60, k, 10, seed=k) * 3
    _check_full_rank(tmp_path, logits, [i % 10 for i in range(60)], method, quant)


def test_ill_conditioned_cur_factors_are_replaced_and_reported(tmp_path, caplog):
    logits = teacher_like_logits(100, 20, 10, seed=0) * 3
    with caplog.at_level(logging.WARNING, logger="score_codec.store.encoder"):
        sc.encode(logits, tmp_path / "x.store", method="cur", rank=10, quant="fp16")
    assert "stored as balanced SVD factors" in caplog.text
    store = sc.LabelStore(tmp_path / "x.store")
    worst = max(float((store.matrix(i) - centred(logits[i])).abs().max()) for i in range(100))
    assert worst <= QUANT_DAMAGE_UNITS * EPS16 * float(centred(logits).abs().max())
