"""Registry, baselines (from their definitions), the select() contract and the estimator."""
import pytest
import torch

import score_select
from score_codec.errors import InputError
from score_select import ScoreSelection, available_methods, get_selector, register, select
from score_select.registry import SelectionTask

D64 = torch.float64
EXPECTED = {"score", "coding-rate", "random", "herding", "kcenter", "rded"}


def clusters(C=4, per=30, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(C, d, generator=g)
    y = torch.arange(C).repeat_interleave(per)
    X = mu[y] + 0.8 * torch.randn(len(y), d, generator=g)
    perm = torch.randperm(len(y), generator=g)
    return X[perm].to(D64), y[perm]


def unit(X):
    return X / X.norm(dim=1, keepdim=True)


def test_every_expected_method_is_registered():
    missing = EXPECTED - set(available_methods())
    assert not missing, f"not registered: {missing}"


def test_unknown_method_and_duplicate_registration_raise():
    with pytest.raises(InputError, match="known"):
        get_selector("nope")
    with pytest.raises(InputError):
        register("random", lambda task: (None, None))


def test_a_registered_method_is_usable_through_select_and_scored_like_the_others():
    name = "first-k-test"

    @register(name, replace=True)
    def first_k(task: SelectionTask):
        picks = [torch.nonzero(task.labels == c).flatten()[:int(b)] for c, b in enumerate(task.budgets)]
        return torch.cat(picks), None

    X, y = clusters()
    idx, gains = select(X, y, 3, method=name, alpha=0.0, beta=0.0)
    assert idx.tolist() == torch.cat([torch.nonzero(y == c).flatten()[:3] for c in range(4)]).tolist()
    F = score_select.coding_rate(unit(X[idx]), 0.5, n=12).item()
    assert gains.sum().item() == pytest.approx(F, rel=1e-10)


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_every_method_meets_budgets_with_distinct_picks(method):
    X, y = clusters()
    idx, gains = select(X, y, 5, method=method, soft_labels=torch.randn(len(y), 3, 4))
    assert torch.equal(torch.bincount(y[idx], minlength=4), torch.full((4,), 5))
    assert len(set(idx.tolist())) == 20 and gains.shape == (20,) and gains.dtype == D64


def test_random_is_seeded():
    X, y = clusters()
    a = select(X, y, 5, method="random", seed=1)[0]
    b = select(X, y, 5, method="random", seed=1)[0]
    c = select(X, y, 5, method="random", seed=2)[0]
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_herding_greedily_matches_the_class_mean():
    X, y = clusters(C=1, per=25)
    idx, _ = select(X, y, 6, method="herding")
    Z = unit(X)
    mu = Z.mean(0)
    chosen = []
    for k in range(6):
        errs = [((mu - (Z[chosen + [i]].sum(0)) / (k + 1)).norm().item(), i) for i in range(25) if i not in chosen]
        chosen.append(min(errs)[1])
    assert idx.tolist() == chosen
    # the herded mean is closer to the class mean than a random subset's
    rnd = select(X, y, 6, method="random")[0]
    assert (Z[idx].mean(0) - mu).norm() < (Z[rnd].mean(0) - mu).norm()


def test_kcenter_picks_the_farthest_point_each_time():
    X, y = clusters(C=1, per=25)
    idx, _ = select(X, y, 5, method="kcenter")
    Z = unit(X)
    for k in range(1, 5):
        dmin = torch.cdist(Z, Z[idx[:k]]).min(1).values
        assert dmin[idx[k]].item() == pytest.approx(dmin.max().item(), rel=1e-9)


def test_rded_keeps_the_lowest_cross_entropy_images_and_needs_logits():
    X, y = clusters()
    logits = torch.randn(len(y), 4, dtype=D64)
    idx, _ = select(X, y, 3, method="rded", soft_labels=logits)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    for c in range(4):
        members = torch.nonzero(y == c).flatten()
        want = members[torch.argsort(ce[members])[:3]].tolist()
        assert sorted(idx[y[idx] == c].tolist()) == sorted(want)
    with pytest.raises(InputError, match="logits"):
        select(X, y, 3, method="rded")


def test_estimator_stores_params_only_and_fit_sets_ranking_and_gains():
    est = ScoreSelection(ipc=4, alpha=2.0, beta=0.0, dtype=D64)
    assert not hasattr(est, "ranking_")
    assert est.get_params()["alpha"] == 2.0
    X, y = clusters()
    est.fit(X, y)
    idx, gains = select(X, y, 4, alpha=2.0, beta=0.0, dtype=D64)
    assert est.ranking_.tolist() == idx.tolist()
    torch.testing.assert_close(est.gains_, gains)
    Xs, ys = est.transform(X, y)
    assert torch.equal(Xs, X[idx]) and torch.equal(ys, y[idx])
    est.set_params(method="random")
    assert est.fit(X, y).ranking_.tolist() != idx.tolist()
    with pytest.raises(InputError):
        est.set_params(nope=1)
    with pytest.raises(InputError):
        ScoreSelection().transform(X)


def test_presets_follow_the_paper_table():
    assert score_select.preset("imagenet1k", 50)[:2] == (5.0, 1.0)
    assert score_select.preset("tiny", 50)[:2] == (10.0, 0.001)
    assert score_select.preset("imagenette", 10) == (0.1, 0.1, 10.0)
    assert score_select.preset("tiny", 20)[:2] == (5.0, 0.001)  # nearer to 10 than to 50
    with pytest.raises(InputError):
        score_select.preset("cifar", 10)


def test_unknown_keywords_raise_type_error_naming_the_accepted_ones():
    import score_select

    X = torch.randn(40, 8)
    y = torch.arange(40) % 4
    with pytest.raises(TypeError, match="eps_sq") as exc:
        score_select.select(X, y, 2, eps=0.5)
    assert "'eps'" in str(exc.value) and "order" in str(exc.value)
    with pytest.raises(TypeError, match="'order'"):
        score_select.select(X, y, 2, method="random", order="round_robin")   # random takes no greedy options
    idx, _ = score_select.select(X, y, 2, order="round_robin")              # a real greedy option is accepted
    assert len(idx) == 8
