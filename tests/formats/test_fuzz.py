"""Fuzz the dump readers: damaged dump files may only raise the library's documented errors.

Each case reads in a forked child with a time limit and an address-space cap (a hang or an unbounded
allocation fails the case); examples are drawn at random on every run."""
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from score_codec.formats import read_dump

from tests.common import CampaignTally, all_files, damage_file, run_isolated_report
from tests.dumpgen import make_epoch_dump, make_fkd_dump, make_lpqld_dump

FUZZ_EXAMPLES = int(os.environ.get("SCORE_FUZZ_EXAMPLES", "40"))
#: cases of the slow campaign per dump family (SCORE_FUZZ_CAMPAIGN overrides)
CAMPAIGN_EXAMPLES = int(os.environ.get("SCORE_FUZZ_CAMPAIGN", "5000"))
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


def _read(work):
    with read_dump(work, "auto", num_classes=10) as contents:
        for _ in contents.matrices():
            pass


#: seconds one read may take, and address space it may add, before the case fails as a hang / a blow-up
READ_SECONDS, READ_MEMORY = 30.0, 512 * 2**20


def _outcome(dumps, tmp_path_factory, fam, file_pick, pos, mode, nbytes):
    """Damage a copy of dump ``fam`` and read it in a child: (outcome, peak bytes, description)."""
    work = str(tmp_path_factory.mktemp("case") / fam)
    shutil.copytree(dumps[fam], work)
    files = all_files(work)
    victim = files[file_pick % len(files)]
    damage_file(victim, pos, mode, nbytes)
    outcome, peak = run_isolated_report(lambda: _read(work), timeout=READ_SECONDS, memory=READ_MEMORY)
    shutil.rmtree(os.path.dirname(work), ignore_errors=True)
    return outcome, peak, f"{fam}: {os.path.relpath(victim, work)} {mode} {nbytes} bytes at {pos:.4f}: {outcome}"


def _acceptable(outcome, peak):
    return (outcome == "ok" or outcome.startswith("score-error")) and peak < READ_MEMORY


def _case(dumps, tmp_path_factory, fam, file_pick, pos, mode, nbytes):
    outcome, peak, what = _outcome(dumps, tmp_path_factory, fam, file_pick, pos, mode, nbytes)
    assert _acceptable(outcome, peak), f"{what} (peak {peak} bytes)"


@pytest.mark.timeout(300)
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fam=st.sampled_from(FAMILIES), file_pick=st.integers(0, 1000), pos=st.floats(0, 1),
       mode=st.sampled_from(["flip", "truncate", "zero", "garbage"]), nbytes=st.integers(1, 32))
def test_damaged_dumps_raise_only_score_errors(dumps, tmp_path_factory, fam, file_pick, pos, mode, nbytes):
    _case(dumps, tmp_path_factory, fam, file_pick, pos, mode, nbytes)


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
@pytest.mark.parametrize("fam", FAMILIES)
def test_fuzz_campaign(dumps, tmp_path_factory, fam):
    """CAMPAIGN_EXAMPLES damaged dumps of one family; the outcome counts and the peak memory per read go to
    $SCORE_FUZZ_REPORT (JSON lines) when it is set."""
    tally = CampaignTally(READ_MEMORY)

    @settings(max_examples=CAMPAIGN_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(file_pick=st.integers(0, 1000), pos=st.floats(0, 1), mode=st.sampled_from(["flip", "truncate", "zero", "garbage"]),
           nbytes=st.integers(1, 32))
    def run(file_pick, pos, mode, nbytes):
        tally.add(*_outcome(dumps, tmp_path_factory, fam, file_pick, pos, mode, nbytes))

    run()
    tally.finish(dump=fam)
