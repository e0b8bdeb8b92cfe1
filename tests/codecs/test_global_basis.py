"""Store-scope codecs (global, two-level): recovered subspaces, KL-fitted coefficients, rate control, writer paths."""
from __future__ import annotations

import logging

import pytest
import torch

import score_codec as sc
from score_codec.codecs.basis import GramAccumulator, fit_coefficients, head_basis, orthonormal_rows
from score_codec.errors import BudgetError, CodecError

from tests.common import assert_ratio_met, centred, kl_rows, teacher_like_logits


def affine_logits(n=40, k=12, c=60, d=6, seed=0, mix=True):
    """Logits W h + b of a linear head over d-dim features; CutMix-like rows mix two images' features."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, d, generator=g)
    b = torch.randn(c, generator=g)
    own = torch.randn(n, 1, d, generator=g) * 2 + 0.3 * torch.randn(n, k, d, generator=g)
    if mix:
        partner = own[torch.randint(0, n, (n, k), generator=g), torch.arange(k)[None].expand(n, k)]
        lam = torch.rand(n, k, 1, generator=g)
        own = lam * own + (1 - lam) * partner
    return own @ w.T + b, w, b


def test_gram_pca_recovers_the_affine_subspace():
    y, w, _ = affine_logits(d=6)
    acc = GramAccumulator(y.shape[-1])
    for chunk in centred(y).reshape(-1, y.shape[-1]).split(100):   # streaming equals one pass
        acc.add(chunk)
    mean, basis, var = acc.pca()
    assert int((var > 1e-6 * var[0]).sum()) == 6          # the recovered rank (float32 products: a 1e-7 noise floor)
    span = orthonormal_rows((w - w.mean(0)).T)
    # the top 6 principal directions span the centred head's columns
    assert torch.allclose(basis[:6] @ span.T @ span, basis[:6], atol=1e-6)


def test_global_codec_is_near_exact_at_the_subspace_rank_and_reports_it(tmp_path):
    y, _, _ = affine_logits()
    st = sc.encode(y, str(tmp_path / "g1"), method="global", energy=0.999999, quant="fp32")
    store = sc.LabelStore(str(tmp_path / "g1"))
    assert st["rank_max"] == 6 and st["shared_bases"] == 1
    got = torch.stack([store.matrix(i) for i in range(len(store))])
    # fp16 basis, fp32 coefficients: errors at fp16 rounding of the basis
    assert (got - centred(y)).abs().max() < 2e-3 * centred(y).abs().max()
    assert torch.allclose(store.rows([3, 7], [0, 11]), got[[3, 7], [0, 11]], atol=1e-5)


def test_head_basis_gives_exact_logits_with_d_components(tmp_path):
    y, w, b = affine_logits()
    mean, rows = head_basis(w, b)
    assert rows.shape == (6, y.shape[-1])
    a = fit_coefficients(centred(y).reshape(-1, y.shape[-1]), rows.float(), mean.float(), steps=0)
    rec = (a @ rows.float() + mean.float()).reshape(y.shape)
    assert (rec - centred(y)).abs().max() < 1e-4 * y.abs().max()
    st = sc.encode(y, str(tmp_path / "head"), method="global", head=(w, b), quant="int8")
    assert st["rank_max"] == 6


def test_a_head_that_does_not_fit_the_labels_is_bad_input(tmp_path):
    y, w, b = affine_logits()
    c = y.shape[-1]
    with pytest.raises(sc.InputError, match=f"{c + 1} outputs"):
        sc.encode(y, str(tmp_path / "a"), method="global", head=(torch.randn(c + 1, w.shape[1]), None), rank=2)
    with pytest.raises(sc.InputError, match="bias must have shape"):
        sc.encode(y, str(tmp_path / "b"), method="global", head=(w, b[:-1]), rank=2)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_kl_fit_lowers_kl_against_the_projection():
    y = teacher_like_logits(30, 20, 40, rank=6, seed=3)
    rows = centred(y).reshape(-1, 40)
    acc = GramAccumulator(40)
    acc.add(rows)
    mean, basis, _ = acc.pca()
    b, mu = basis[:3].float(), mean.float()
    proj = fit_coefficients(rows, b, mu, steps=0)
    fitted = fit_coefficients(rows, b, mu, steps=3)
    k_proj, k_fit = kl_rows(rows, proj @ b + mu), kl_rows(rows, fitted @ b + mu)
    assert k_fit < 0.7 * k_proj
    # no row gets worse: each Newton step is kept only where it lowers that row's KL
    p = torch.log_softmax(rows.double(), -1)
    per_proj = (p.exp() * (p - torch.log_softmax((proj @ b + mu).double(), -1))).sum(-1)
    per_fit = (p.exp() * (p - torch.log_softmax((fitted @ b + mu).double(), -1))).sum(-1)
    assert bool((per_fit <= per_proj + 1e-6).all())


@pytest.mark.parametrize("ratio", [20, 60])
def test_global_ratio_meets_the_budget_with_bases_counted(ratio, tmp_path):
    y = teacher_like_logits(60, 30, 200, rank=8, seed=4)
    # every row coded (pool=False): the rate control itself; these labels are far from the source, which the
    # encode says
    with pytest.warns(UserWarning, match="KL"):
        st = sc.encode(y, str(tmp_path / f"r{ratio}"), method="global", ratio=ratio, quant="int8", pool=False)
    assert st["keep_epochs"] == 30 and st["kl_t1"] > 0.01
    assert_ratio_met(st, ratio, spent=0.25)           # bases counted, zstd counted, and most of it spent
    with pytest.raises(BudgetError):
        sc.encode(y, str(tmp_path / "r_na"), method="global", ratio=2000, quant="int8")


def test_two_level_class_bases_are_orthogonal_refinements(tmp_path):
    y = teacher_like_logits(24, 10, 30, rank=5, seed=6)
    labels = [i % 4 for i in range(24)]
    sc.encode(y, str(tmp_path / "two"), method="two-level", rank=3, labels=labels, quant="fp16",
              codec_config={"class_rank": 2})
    store = sc.LabelStore(str(tmp_path / "two"))
    assert len(store.basis_table) == 5 and store.basis_table["parent"].tolist() == [-1, 0, 0, 0, 0]
    top = store.basis(0)
    for cl in range(4):
        j = int(store.index["basis"][labels.index(cl)])
        full = store.basis(j)
        assert full.shape == (5, 30) and torch.allclose(full[:3], top)
        assert (full[3:] @ top.T).abs().max() < 1e-2          # orthogonal up to fp16 rounding
    got = torch.stack([store.matrix(i) for i in range(24)])
    sc.encode(y, str(tmp_path / "two_g"), method="global", rank=3, quant="fp16")
    g_store = sc.LabelStore(str(tmp_path / "two_g"))
    g_got = torch.stack([g_store.matrix(i) for i in range(24)])
    assert kl_rows(y, got) < kl_rows(y, g_got)                    # the class level helps at equal global rank
    with pytest.raises(CodecError, match="class"):
        sc.encode(y, str(tmp_path / "two_nolab"), method="two-level", rank=3)


def test_two_level_rate_control_plans_within_the_budget(tmp_path):
    y = teacher_like_logits(40, 20, 60, rank=6, seed=8)
    labels = [i % 5 for i in range(40)]
    st = sc.encode(y, str(tmp_path / "plan"), method="two-level", ratio=8, labels=labels, quant="int8")
    assert 8 <= st["ratio"] < 12


def test_streaming_writer_fit_and_first_chunk_fallback(caplog, tmp_path):
    y = teacher_like_logits(30, 8, 20, rank=4, seed=9)
    with sc.StoreWriter(str(tmp_path / "w1"), 20, method="global", rank=4, quant="int8") as w:
        w.fit(list(y))
        for s in range(0, 30, 7):
            w.add(y[s:s + 7])
    with caplog.at_level(logging.WARNING):
        with sc.StoreWriter(str(tmp_path / "w2"), 20, method="global", rank=4, quant="int8") as w:
            w.add(y[:10])
    assert "first chunk" in caplog.text
    a = sc.LabelStore(str(tmp_path / "w1"))
    sc.encode(y, str(tmp_path / "w3"), method="global", rank=4, quant="int8")
    ref = sc.LabelStore(str(tmp_path / "w3"))
    # fit(all) then chunked adds equals the one-call encode (same basis; rows fitted independently)
    assert a.basis_table.tobytes() == ref.basis_table.tobytes()
    assert torch.allclose(torch.stack([a.matrix(i) for i in range(30)]), torch.stack([ref.matrix(i) for i in range(30)]),
                          atol=1e-3 * float(y.abs().max()))
    with pytest.raises(sc.InputError):
        with sc.StoreWriter(str(tmp_path / "w4"), 20, method="svd", rank=2) as w:
            w.fit(list(y))


def test_resumed_global_store_keeps_its_basis(tmp_path):
    y = teacher_like_logits(40, 8, 20, rank=4, seed=10)
    path = str(tmp_path / "res")
    w = sc.StoreWriter(path, 20, method="global", rank=4, quant="int8", shard_bytes=600)
    w.fit(list(y))
    w.add(y[:25])
    w._flush_shard()
    w.abort(keep_partial=True)                              # as if interrupted after some shards
    w2 = sc.StoreWriter(path, 20, method="global", rank=4, quant="int8", shard_bytes=600, resume=True)
    assert w2.num_images > 0 and w2.bases is not None
    w2.add(y[w2.num_images:])
    w2.close()
    sc.encode(y, str(tmp_path / "res_ref"), method="global", rank=4, quant="int8", shard_bytes=600)
    a, b = sc.LabelStore(path), sc.LabelStore(str(tmp_path / "res_ref"))
    assert a.verify() == [] and a.basis_table.tobytes() == b.basis_table.tobytes()


def test_gram_accumulator_streams_and_merges_like_one_pass():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5000, 30, generator=g, dtype=torch.float64) * 3 + 7
    one = GramAccumulator(30)
    one.add(x, chunk_rows=10**6)
    parts = [GramAccumulator(30) for _ in range(3)]
    for p, chunk in zip(parts, x.split(1700)):
        p.add(chunk, chunk_rows=500)
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    m1, b1, v1 = one.pca()
    m2, b2, v2 = parts[0].pca()
    ref = torch.cov(x.T, correction=0)
    assert torch.allclose(m1, x.mean(0), atol=1e-4) and torch.allclose(m2, x.mean(0), atol=1e-4)
    assert torch.allclose(v1, torch.linalg.eigvalsh(ref).flip(0), rtol=1e-4, atol=1e-4)
    assert torch.allclose(v1, v2, rtol=1e-4, atol=1e-4)


def test_head_basis_below_full_rank_keeps_the_high_variance_directions(tmp_path):
    y, w, b = affine_logits(d=6, seed=5)
    sc.encode(y, str(tmp_path / "h"), method="global", head=(w, b), rank=3, quant="fp32",
              codec_config={"newton_steps": 0})
    sc.encode(y, str(tmp_path / "p"), method="global", rank=3, quant="fp32", codec_config={"newton_steps": 0})
    err = {}
    for name in ("h", "p"):
        st = sc.LabelStore(str(tmp_path / name))
        err[name] = float((torch.stack([st.matrix(i) for i in range(len(st))]) - centred(y)).pow(2).mean())
    # the teacher-head subspace contains the data, so its top-3 directions are the PCA ones (up to fp16)
    assert err["h"] <= 1.05 * err["p"] + 1e-6


def test_newton_fit_is_skipped_above_newton_max_rank(tmp_path):
    from score_codec.codecs import get_codec

    codec = get_codec("global", newton_max_rank=4)
    assert codec.get_config()["newton_max_rank"] == 4
    assert type(codec).from_config(codec.get_config()).newton_max_rank == 4
    assert codec.steps_for(4) == 1 and codec.steps_for(5) == 0
    with pytest.raises(CodecError, match="newton_max_rank"):
        get_codec("global", newton_max_rank=-1)
    # above the threshold the stored coefficients are exactly the least-squares ones
    y = teacher_like_logits(12, 8, 20, seed=3)
    a = sc.encode(y, tmp_path / "a", method="global", rank=6, quant="fp32", codec_config={"newton_max_rank": 4})
    b = sc.encode(y, tmp_path / "b", method="global", rank=6, quant="fp32", codec_config={"newton_steps": 0})
    da, db = sc.LabelStore(tmp_path / "a"), sc.LabelStore(tmp_path / "b")
    assert a["rank_max"] == b["rank_max"] == 6
    for i in range(12):
        assert torch.allclose(da.matrix(i), db.matrix(i), atol=1e-5)


def test_rate_control_on_a_sample_uses_the_store_size():
    """Fitting on a sample of the store (the streaming CLI path) chooses the rank the whole store would get
    when told the store's images and rows; without them it would budget for a store of the sample's size."""
    from score_codec.codecs.global_basis import FitSource, GlobalCodec

    y = teacher_like_logits(40, 20, 60, rank=12, seed=5)
    codec = GlobalCodec(newton_steps=0)
    budget = 2.0 * 60 / 12
    whole = codec.fit(FitSource(list(y)), "int8", budget_per_row=budget)
    sample = codec.fit(FitSource(list(y[::4]), num_images=40, total_rows=800), "int8", budget_per_row=budget)
    small = codec.fit(FitSource(list(y[::4])), "int8", budget_per_row=budget)
    rank = lambda bs: int(bs.full(0)[0].shape[0])   # noqa: E731
    assert rank(sample) == rank(whole) and rank(small) < rank(whole)


def test_global_basis_rows_carry_the_spread_and_code_like_unit_rows():
    """The stored global basis's rows are orthogonal with norms = the components' standard deviations relative
    to the first's; coefficients on it are those on the unit rows divided by the norms, so both decode alike."""
    from score_codec.codecs import get_codec
    from score_codec.codecs.global_basis import BasisEntry, BasisSet, FitSource, MIN_SPREAD, spreads, unit_rows

    y = teacher_like_logits(40, 6, 30, seed=3)
    codec = get_codec("global", newton_steps=0)
    bases = codec.fit(FitSource(list(y)), "int8", rank=8)
    rows, mean = bases.full(0)
    unit, norms = unit_rows(rows)
    assert abs(float(norms[0]) - 1.0) < 1e-2 and (norms[1:] <= norms[:-1] * 1.01).all() and (norms >= MIN_SPREAD * 0.99).all()
    assert torch.allclose(unit @ unit.T, torch.eye(8), atol=2e-3)
    yc = (y - y.mean(-1, keepdim=True)).float()
    # the coefficients' spread is about the same for every component (what one int8 scale per record needs)
    a = codec.coefficients(yc, bases, 0).reshape(-1, 8)
    sd = a.std(0)
    assert float(sd.max() / sd.min()) < 3.0
    a_unit = codec.coefficients(yc, BasisSet([BasisEntry(unit, -1, mean)]), 0).reshape(-1, 8)
    assert torch.allclose(a * norms, a_unit, atol=1e-4 * float(a_unit.abs().max()))
    assert torch.allclose(a @ rows, a_unit @ unit, atol=1e-4 * float(yc.abs().max()))
    assert torch.equal(spreads(torch.zeros(3)), torch.ones(3, dtype=torch.float64))


def test_one_scale_records_keep_more_epochs_at_one_ratio(tmp_path, monkeypatch):
    """At one ratio the global codec's one scale per record (format 5) keeps more epochs than one scale per
    component would, with the probe KL still at or below max_kl."""
    from score_codec.codecs.global_basis import GlobalCodec
    from score_codec.store.record import HEADER

    g = torch.Generator().manual_seed(5)   # logits W h + b of 12-wide features: 400 images, 40 epochs, 200 classes
    w, bias = torch.randn(200, 12, generator=g), torch.randn(200, generator=g)
    y = torch.randn(400, 40, 12, generator=g) @ w.T + bias + 0.01 * torch.randn(400, 40, 200, generator=g)
    st1 = sc.encode(y, str(tmp_path / "one"), ratio=100, progress=False)
    monkeypatch.setattr(GlobalCodec, "one_scale", False)
    st0 = sc.encode(y, str(tmp_path / "per"), ratio=100, progress=False)
    assert st1["keep_epochs"] > st0["keep_epochs"] and st0["keep_epochs"] < 40
    assert st1["kl_t1"] <= 0.01 and st0["kl_t1"] <= 0.01
    assert st1["ratio"] >= 100 * 0.97 and st0["ratio"] >= 100 * 0.97
    a, b = sc.LabelStore(str(tmp_path / "one")), sc.LabelStore(str(tmp_path / "per"))
    assert HEADER.unpack_from(a.record_bytes(0))[5] & 16 and not HEADER.unpack_from(b.record_bytes(0))[5] & 16


def test_a_basis_without_the_spread_keeps_one_scale_per_component(tmp_path):
    """A basis given with unit rows (as stores before format 5 hold them) gets one int8 scale per component:
    one scale would round its small components coarsely.  The same basis scaled to its spread gets one scale,
    and both decode within int8 rounding of the source."""
    from score_codec.codecs.global_basis import BasisEntry, BasisSet, FitSource, unit_rows
    from score_codec.codecs import get_codec
    from score_codec.store.record import FLAG_ONE_SCALE, HEADER

    y = teacher_like_logits(30, 6, 40, seed=4)
    scaled = get_codec("global", newton_steps=0).fit(FitSource(list(y)), "int8", rank=10)
    rows, mean = scaled.full(0)
    unit = BasisSet([BasisEntry(unit_rows(rows)[0], -1, mean)])
    kls = {}
    for name, bases in (("scaled", scaled), ("unit", unit)):
        st = sc.encode(y, str(tmp_path / name), bases=bases, quant="int8", progress=False)
        store = sc.LabelStore(str(tmp_path / name))
        flags = {HEADER.unpack_from(store.record_bytes(i))[5] & FLAG_ONE_SCALE for i in range(len(store))}
        assert flags == ({FLAG_ONE_SCALE} if name == "scaled" else {0})
        got = torch.stack([store.matrix(i) for i in range(len(store))])
        kls[name] = kl_rows(centred(y), got)
    assert kls["scaled"] < 2 * kls["unit"] + 1e-4 and kls["unit"] < 2 * kls["scaled"] + 1e-4


def test_rank_0_global_records_carry_no_scale():
    """A rank-0 int8 record has no coefficients, so no scale and no one-scale flag (FORMAT.md 5.2)."""
    from score_codec.store.record import FLAG_ONE_SCALE, HEADER, pack_coefficient_records, pack_record

    for buf in (pack_record(torch.zeros(4, 0), None, "int8", basis=0, c=7, one_scale=True),
                pack_coefficient_records(torch.zeros(2, 4, 0), "int8", c=7, one_scale=True)[0]):
        assert not HEADER.unpack_from(buf)[5] & FLAG_ONE_SCALE and len(buf) == HEADER.size
