"""Fuzz the dump readers: damaged dump files may only raise the library's documented errors."""
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from score_codec.errors import ScoreError
from score_codec.formats import read_dump

from tests.common import all_files, damage_file
from tests.dumpgen import make_epoch_dump, make_fkd_dump, make_lpqld_dump

FUZZ_EXAMPLES = int(os.environ.get("SCORE_FUZZ_EXAMPLES", "40"))
# the default run draws a fixed example set (CI stays reproducible); SCORE_FUZZ_RANDOM=1 draws new ones
FUZZ_RANDOM = bool(os.environ.get("SCORE_FUZZ_RANDOM"))
FAMILIES = ["sre2l", "lpld", "gvbsm", "edc", "lpqld", "fkd"]


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("dumps")
    out = {}
    for fam in FAMILIES:
        d = str(root / fam)
        if fam == "lpqld":
            make_lpqld_dump(d, ipc=2, epochs=2)
        elif fam == "fkd":
            make_fkd_dump(d, ipc=2, crops=3)
        else:
            make_epoch_dump(d, family=fam, ipc=2, epochs=2)
        out[fam] = d
    return out


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=not FUZZ_RANDOM,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fam=st.sampled_from(FAMILIES), file_pick=st.integers(0, 1000), pos=st.floats(0, 1),
       mode=st.sampled_from(["flip", "truncate", "zero", "garbage"]), nbytes=st.integers(1, 32))
def test_damaged_dumps_raise_only_score_errors(dumps, tmp_path_factory, fam, file_pick, pos, mode, nbytes):
    work = str(tmp_path_factory.mktemp("case") / fam)
    shutil.copytree(dumps[fam], work)
    files = all_files(work)
    damage_file(files[file_pick % len(files)], pos, mode, nbytes)
    try:
        with read_dump(work, "auto", num_classes=10) as contents:
            for _ in contents.matrices():
                pass
    except ScoreError:
        pass
