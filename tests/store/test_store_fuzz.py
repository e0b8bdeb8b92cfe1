"""Fuzz the store reader: damaged files may only raise the library's documented errors."""
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import score_codec as sc
from score_codec.errors import ScoreError

from tests.common import all_files, damage_file, make_meta, teacher_like_logits

FUZZ_EXAMPLES = int(os.environ.get("SCORE_FUZZ_EXAMPLES", "60"))
# the default run draws a fixed example set (CI stays reproducible); SCORE_FUZZ_RANDOM=1 draws new ones
FUZZ_RANDOM = bool(os.environ.get("SCORE_FUZZ_RANDOM"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    sc.encode(teacher_like_logits(12, 6, 10, seed=41), root / "s.store", rank=3, residual=1, meta=make_meta(12, 6),
              labels=[i % 3 for i in range(12)], shard_bytes=1200)
    sc.encode(teacher_like_logits(12, 6, 10, seed=42), root / "s.h5", method="shared", rank=3,
              labels=[i % 3 for i in range(12)])
    return root


def _read_everything(path):
    store = sc.LabelStore(path)
    for i in range(len(store)):
        store.matrix(i)
    store.rows(np.arange(len(store)), np.zeros(len(store), np.int64))
    store.verify()
    store.stats()
    store.aug


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=not FUZZ_RANDOM,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["s.store", "s.h5"]), file_pick=st.integers(0, 100), pos=st.floats(0, 1),
       mode=st.sampled_from(["flip", "truncate", "zero"]), nbytes=st.integers(1, 64))
def test_damaged_store_raises_only_score_errors(pristine, tmp_path_factory, which, file_pick, pos, mode, nbytes):
    work = tmp_path_factory.mktemp("case") / which
    src = pristine / which
    shutil.copytree(src, work) if src.is_dir() else shutil.copy(src, work)
    files = all_files(work)
    damage_file(files[file_pick % len(files)], pos, mode, nbytes)
    try:
        _read_everything(str(work))
    except ScoreError:
        pass
