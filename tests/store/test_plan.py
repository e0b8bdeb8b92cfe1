"""Planning: the split of several ratios on one fit, and that it is the split an encode makes."""
import json

import numpy as np
import pytest

import score_codec as sc
from score_codec.cli.main import main
from score_codec.errors import BudgetError, InputError

from tests.common import assert_ratio_met, head_like_logits

N, K, C = 160, 30, 500


@pytest.fixture(scope="module")
def logits():
    return head_like_logits(N, K, C, d=16, seed=7)


@pytest.fixture(scope="module")
def planned(logits):
    return sc.plan(logits, [8, 60, 120, 5000])


def _encoded(tmp_path, logits, ratio, **kw):
    return sc.encode(logits, tmp_path / f"r{ratio}.store", ratio=ratio, overwrite=True, **kw)


def test_plan_spans_every_epoch_pooling_and_refusal(planned):
    every, pooled, fewer, refused = planned
    assert every["keep_epochs"] == K and every["error"] is None
    assert 1 <= fewer["keep_epochs"] < pooled["keep_epochs"] < K
    # more epochs dropped, never a rank below the smallest useful one
    assert fewer["rank"] >= fewer["min_rank"] and pooled["rank"] >= pooled["min_rank"]
    # at or above the smallest rank whose probe KL is within max_kl (quantisation may move it a little)
    assert pooled["kl_t1"] <= 0.0105 and fewer["kl_t1"] <= 0.0105
    assert refused["error"] and refused["keep_epochs"] is None and 120 < refused["max_ratio"] < 5000
    json.dumps(planned)   # the entries are what --json prints


@pytest.mark.parametrize("ratio", [8, 60, 120])
def test_plan_is_the_split_encode_makes(tmp_path, logits, planned, ratio):
    entry = next(e for e in planned if e["ratio"] == ratio)
    st = _encoded(tmp_path, logits, ratio)
    assert st["keep_epochs"] == entry["keep_epochs"]
    store = sc.LabelStore(tmp_path / f"r{ratio}.store")
    assert int(store.basis_table["rank"][0]) == entry["rank"]
    # the predicted bytes count records on a sample: the store lands within the rate control's tolerance
    assert abs(st["label_bytes"] / entry["label_bytes"] - 1) < 0.02
    assert_ratio_met(st, ratio)


def test_a_refused_ratio_is_the_encode_refusal(tmp_path, logits, planned):
    with pytest.raises(BudgetError) as exc:
        _encoded(tmp_path, logits, 5000)
    # the same refusal; its figures are measured floats, so compared approximately
    assert exc.value.reason.split(" label bytes")[0] == planned[-1]["error"].split(" label bytes")[0]
    assert exc.value.max_ratio == pytest.approx(planned[-1]["max_ratio"], rel=1e-3)


def test_plan_honours_the_split_options(logits, planned):
    loose, kept, every = sc.plan(logits, [60], max_kl=0.05)[0], sc.plan(logits, [60], keep_epochs=3)[0], \
        sc.plan(logits, [60], pool=False)[0]
    assert loose["keep_epochs"] >= planned[1]["keep_epochs"] and loose["kl_t1"] <= 0.05
    assert kept["keep_epochs"] == 3 and kept["rank"] > planned[1]["rank"]
    assert every["keep_epochs"] == K and every["rank"] < planned[1]["min_rank"]


def test_ratios_may_be_any_iterable(logits, planned):
    got = sc.plan(logits, (x for x in (60, 120)))
    assert [e["keep_epochs"] for e in got] == [planned[1]["keep_epochs"], planned[2]["keep_epochs"]]


def test_a_residual_store_is_at_most_its_prediction(tmp_path, logits):
    # residual entries are counted before zstd: the store is no larger than predicted, and meets the ratio
    entry = sc.plan(logits, [30], residual=1)[0]
    st = _encoded(tmp_path, logits, 30, residual=1)
    assert st["keep_epochs"] == entry["keep_epochs"]
    assert st["label_bytes"] <= entry["label_bytes"] * 1.01
    assert_ratio_met(st, 30)


@pytest.mark.parametrize("call", [
    lambda y: sc.plan(y, [10], method="svd"),
    lambda y: sc.plan(y, [0]),
    lambda y: sc.plan(y, [float("nan")]),
    lambda y: sc.plan(y, []),
    lambda y: sc.plan(y, 20),
    lambda y: sc.plan(y, ["abc"]),
    lambda y: sc.plan(y, [None]),
    lambda y: sc.plan(y, [10], device="bogus"),
    lambda y: sc.plan([y[0], y[1, :3]], [10]),        # views that are not label epochs
    lambda y: sc.plan(y, [10], keep_epochs=K + 1),
])
def test_plan_refuses_what_it_cannot_plan(logits, call):
    with pytest.raises(InputError):
        call(logits)


def test_plan_dump_is_the_split_encode_dump_makes(tmp_path, logits):
    npy = tmp_path / "logits.npy"
    np.save(npy, logits.numpy().astype(np.float16))
    entries = sc.plan_dump(npy, [60, 5000], scratch_dir=tmp_path)
    assert entries[0]["source_format"] == "npy" and entries[1]["error"]
    st = sc.encode_dump(npy, tmp_path / "d.store", ratio=60)
    assert st["keep_epochs"] == entries[0]["keep_epochs"]
    assert int(sc.LabelStore(tmp_path / "d.store").basis_table["rank"][0]) == entries[0]["rank"]
    assert abs(st["label_bytes"] / entries[0]["label_bytes"] - 1) < 0.02
    # nothing is left in the scratch directory but what was there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.store", "logits.npy"]


def test_plan_dump_refuses_before_reading_and_names_the_file(tmp_path, logits):
    npy = tmp_path / "logits.npy"
    np.save(npy, logits.numpy().astype(np.float16))
    with pytest.raises(InputError, match="method 'svd'"):
        sc.plan_dump(tmp_path / "missing.npy", [10], method="svd")    # refused before the dump is opened
    with pytest.raises(InputError, match="logits.npy: cannot keep 99"):
        sc.plan_dump(npy, [10], keep_epochs=99, scratch_dir=tmp_path)
    with pytest.raises(InputError, match="is not a directory"):
        sc.plan_dump(npy, [10], scratch_dir=npy)
    # a residual plans on the per-image path, as encode_dump codes it
    entry = sc.plan_dump(npy, [30], residual=1, scratch_dir=tmp_path)[0]
    st = sc.encode_dump(npy, tmp_path / "res.store", ratio=30, residual=1)
    assert st["keep_epochs"] == entry["keep_epochs"] and st["label_bytes"] <= entry["label_bytes"] * 1.01


def test_cli_plan(tmp_path, logits, capsys):
    npy = tmp_path / "logits.npy"
    np.save(npy, logits.numpy().astype(np.float16))
    assert main(["plan", str(npy), "--ratio", "60", "5000", "--quiet", "--scratch-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "kept epochs" in lines[1] and " of 30" in lines[2] and "n/a, at most" in lines[3]
    assert lines[3].endswith("[1]") and lines[4].startswith("[1] ratio 5000x leaves")
    assert main(["plan", str(npy), "--ratio", "60", "--json", "--quiet", "--scratch-dir", str(tmp_path)]) == 0
    entry = json.loads(capsys.readouterr().out)[0]
    assert entry["ratio"] == 60 and 1 <= entry["keep_epochs"] < K
    # bad input: exit 2, naming what is wrong
    assert main(["plan", str(tmp_path / "missing.npy"), "--ratio", "60", "--quiet"]) == 2
    assert "missing.npy" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["plan", str(npy), "--ratio", "-3"])
    assert exc.value.code == 2
    capsys.readouterr()
    assert main(["plan", str(npy), "--ratio", "60", "--device", "bogus", "--quiet"]) == 2
    assert "device" in capsys.readouterr().err


def test_plan_table_notes_name_each_reason_once():
    from score_codec.cli.plan import plan_table

    ok = dict(ratio=10, error=None, max_ratio=None, keep_epochs=5, source_epochs=10, inner_ratio=5.0, rank=3,
              kl_t1=0.001, label_bytes=2000, predicted_ratio=10.1)

    def refused(x, most, why=None):
        return dict(ratio=x, max_ratio=most, error=why or f"ratio {x}x leaves too few bytes, at most {most}x")

    lines = plan_table([refused(300, 50.0), ok, refused(100, 50.0), refused(20, None, "rank 0 stores nothing"),
                        refused(30, None, "rank 0 stores nothing"), refused(70, None, "another reason")]).splitlines()
    assert lines[1].split() == ["300x", "n/a,", "at", "most", "50.0x", "fits", "[1]"] and "5 of 10" in lines[2]
    assert lines[3].endswith("fits [1]") and lines[4].endswith("n/a [2]") and lines[5].endswith("n/a [2]")
    assert lines[6].endswith("n/a [3]")
    # one note per reason; a shared note gives the smallest ratio's reason and names the others
    assert lines[7:] == ["[1] ratio 100x leaves too few bytes, at most 50.0x (and 300x, with fewer bytes)",
                         "[2] rank 0 stores nothing (and 30x, with fewer bytes)", "[3] another reason"]
