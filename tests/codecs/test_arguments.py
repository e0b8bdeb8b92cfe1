"""Meaningless numeric arguments are refused with a named error (exit 2 on the command line), for every
codec, and no store is left behind."""
import math
import os

import numpy as np
import pytest

import score_codec as sc
from score_codec.cli import main

from tests.common import teacher_like_logits

METHODS = ["svd", "rsvd", "cur", "rpca", "shared", "global", "two-level"]
BAD = [dict(rank=0), dict(rank=-3), dict(rank=2.5), dict(rank=True), dict(energy=1.5), dict(energy=0.0),
       dict(energy=math.nan), dict(ratio=math.nan), dict(ratio=math.inf), dict(ratio=0.0), dict(ratio=-2.0),
       dict(target_bytes=0), dict(target_bytes=-10), dict(residual=-1), dict(chunk_images=0),
       dict(shard_bytes=0), dict(zstd_level=23)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", BAD, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_meaningless_arguments_are_refused(tmp_path, method, bad):
    y = teacher_like_logits(6, 4, 10, seed=1)
    with pytest.raises(sc.ScoreError) as info:
        sc.encode(y, tmp_path / "x.store", method=method, labels=[i % 2 for i in range(6)], **bad)
    name = next(iter(bad))
    assert name.split("_")[0] in str(info.value) and info.value.exit_code == 2
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("config", [dict(fit_temperature=math.nan), dict(fit_temperature=0), dict(penalty=-1.0),
                                    dict(newton_steps=-1), dict(newton_steps=1.5), dict(fit_rows=0)])
@pytest.mark.parametrize("method", ["global", "two-level"])
def test_store_codec_options_are_checked(method, config):
    with pytest.raises(sc.CodecError, match=next(iter(config))):
        sc.get_codec(method, **config)


@pytest.mark.parametrize("method, config", [("rsvd", dict(oversample=-1)), ("rsvd", dict(niter=-2)),
                                            ("rpca", dict(tol=math.nan)), ("rpca", dict(max_iter=0)),
                                            ("rpca", dict(lam=-1.0)), ("two-level", dict(class_rank=-1))])
def test_image_codec_options_are_checked(method, config):
    with pytest.raises(sc.CodecError, match=next(iter(config))):
        sc.get_codec(method, **config)


@pytest.mark.parametrize("method", METHODS)
def test_an_unknown_codec_setting_is_refused_with_the_accepted_ones(tmp_path, method):
    """A misspelt ``codec_config`` key (here ``newton_step``) would otherwise be ignored: the encode would
    run with the default it meant to change."""
    y = teacher_like_logits(6, 4, 10, seed=1)
    with pytest.raises(sc.CodecError, match="'newton_step'") as info:
        sc.encode(y, tmp_path / "x.store", method=method, rank=2, labels=[i % 2 for i in range(6)],
                  codec_config={"newton_step": 0})
    accepted = type(sc.get_codec(method)).settings()
    assert all(k in str(info.value) for k in accepted) and ("none" in str(info.value) or accepted)
    assert info.value.exit_code == 2 and os.listdir(tmp_path) == []


@pytest.mark.parametrize("method", METHODS)
def test_settings_are_the_configuration_a_codec_records(method):
    codec = sc.get_codec(method)
    config = codec.get_config()
    assert set(config) - {"id"} == set(type(codec).settings())
    assert sc.codec_from_config(config).get_config() == config


@pytest.mark.parametrize("method, ratio", [("svd", 5000.0), ("shared", 5000.0), ("global", 150.0), ("two-level", 150.0)])
def test_a_ratio_that_leaves_rank_zero_everywhere_is_refused(tmp_path, method, ratio):
    y = teacher_like_logits(20, 64, 100, seed=2)
    # pool=False: coding every row is what leaves rank 0 (the automatic split refuses such budgets too, below)
    with pytest.raises(sc.BudgetError, match="rank 0"):
        sc.encode(y, tmp_path / "x.store", method=method, ratio=ratio, labels=[i % 3 for i in range(20)], pool=False)
    assert not (tmp_path / "x.store").exists()
    if method == "global":
        with pytest.raises(sc.BudgetError, match=f"ratio {ratio:g}x"):
            sc.encode(y, tmp_path / "x.store", method=method, ratio=ratio)
        assert not (tmp_path / "x.store").exists()


def _run(argv):
    """main()'s exit code, whether it returns it or argparse raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("args", [["--chunk-images", "0"], ["--workers", "-1"], ["--ratio", "nan"], ["--rank", "0"],
                                  ["--method", "global", "--rank", "-3"], ["--method", "global", "--energy", "1.5"],
                                  ["--method", "cur", "--ratio", "inf"]])
def test_cli_exits_2_with_a_message(tmp_path, capsys, args):
    src = tmp_path / "y.npy"
    np.save(src, teacher_like_logits(6, 4, 10, seed=1).numpy().astype(np.float16))
    code = _run(["encode", str(src), str(tmp_path / "o.store"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and "error" in err and "Traceback" not in err
    assert not (tmp_path / "o.store").exists()
