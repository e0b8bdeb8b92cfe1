"""Fuzz the store reader: damaged files may only raise the library's documented errors.

Every case is read in a forked child with a time limit and an address-space cap, so a read that hangs
(libhdf5 can loop without answering Ctrl-C) or allocates without bound fails its case instead of stalling
or exhausting the run.  Examples are drawn at random on every run."""
import os
import shutil
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import score_codec as sc

from tests.common import (CampaignTally, all_files, damage_file, edit_toc, make_meta, reseal, run_isolated,
                          run_isolated_report, teacher_like_logits)

FUZZ_EXAMPLES = int(os.environ.get("SCORE_FUZZ_EXAMPLES", "40"))
#: cases of the slow campaign per store kind (SCORE_FUZZ_CAMPAIGN overrides)
CAMPAIGN_EXAMPLES = int(os.environ.get("SCORE_FUZZ_CAMPAIGN", "5000"))
#: seconds one read may take, and address space it may add, before the case fails as a hang / a blow-up
READ_SECONDS, READ_MEMORY = 20.0, 512 * 2**20


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    sc.encode(teacher_like_logits(12, 6, 10, seed=41), root / "s.store", rank=3, residual=1, meta=make_meta(12, 6),
              labels=[i % 3 for i in range(12)], shard_bytes=1200)
    sc.encode(teacher_like_logits(12, 6, 10, seed=42), root / "s.h5", method="shared", rank=3,
              labels=[i % 3 for i in range(12)])
    return root


def _read_everything(path, same_as=None):
    """Read every part of the store at ``path``; with ``same_as`` (the undamaged copy) a read that succeeds
    must give back its labels and metadata: damage the checksums cannot see must not change them."""
    store = sc.LabelStore(path)
    ref = None if same_as is None else sc.LabelStore(same_as)
    if ref is not None:
        assert len(store) == len(ref) and store.num_classes == ref.num_classes, "shape changed silently"
    for i in range(len(store)):
        m = store.matrix(i)
        if ref is not None:
            assert np.allclose(np.asarray(m), np.asarray(ref.matrix(i)), rtol=1e-6, atol=1e-6), \
                f"image {i}: labels changed silently"
    store.rows(np.arange(len(store)), np.zeros(len(store), np.int64))
    store.verify()
    store.stats()
    aug = store.aug
    if ref is not None:
        assert np.array_equal(aug.rows, ref.aug.rows) and np.array_equal(aug.batches, ref.aug.batches) and \
            np.array_equal(aug.images, ref.aug.images), "augmentation metadata changed silently"


def _case(pristine, tmp_path_factory, which, file_pick, pos, mode, nbytes, resealed):
    """Damage a copy of store ``which`` and read it in a child: (outcome, peak bytes, description)."""
    work = tmp_path_factory.mktemp("case") / which
    src = pristine / which
    shutil.copytree(src, work) if src.is_dir() else shutil.copy(src, work)
    files = all_files(work)
    victim = files[file_pick % len(files)]
    damage_file(victim, pos, mode, nbytes)
    if resealed:
        try:
            reseal(work, rebuild=False)   # checksums recomputed: the damage reaches the parsers behind them
        except Exception:       # the damage hit what resealing reads (the manifest): fuzz it as it is
            pass
    # checksums recomputed: a forged store may hold other labels, and only has to fail safely
    same_as = None if resealed else str(src)
    outcome, peak = run_isolated_report(lambda: _read_everything(str(work), same_as), timeout=READ_SECONDS,
                                        memory=READ_MEMORY)
    what = (f"{which}: {os.path.relpath(victim, work)} {mode} {nbytes} bytes at {pos:.4f}"
            f"{' (resealed)' if resealed else ''}: {outcome}")
    shutil.rmtree(work.parent, ignore_errors=True)
    return outcome, peak, what


def _acceptable(outcome):
    return outcome == "ok" or outcome.startswith("score-error")


@pytest.mark.timeout(300)
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["s.store", "s.h5"]), file_pick=st.integers(0, 100), pos=st.floats(0, 1),
       mode=st.sampled_from(["flip", "truncate", "zero"]), nbytes=st.integers(1, 64), resealed=st.booleans())
def test_damaged_store_raises_only_score_errors(pristine, tmp_path_factory, which, file_pick, pos, mode, nbytes,
                                                resealed):
    outcome, peak, what = _case(pristine, tmp_path_factory, which, file_pick, pos, mode, nbytes, resealed)
    assert _acceptable(outcome), what
    assert peak < READ_MEMORY, f"{what}: peak {peak} bytes"


def _toc_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                        st.text(max_size=20))
    return st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                        st.dictionaries(st.text(max_size=12), kids, max_size=4)),
                        max_leaves=20)


@pytest.mark.timeout(300)
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["s.store", "s.h5"]), data=st.data())
def test_forged_table_of_contents_raises_only_score_errors(pristine, tmp_path_factory, which, data):
    """A table of contents with valid checksums but forged content (docs/FORMAT.md 2.2): entries replaced,
    removed or given random values reach the header parser itself."""
    work = tmp_path_factory.mktemp("toc") / which
    src = pristine / which
    shutil.copytree(src, work) if src.is_dir() else shutil.copy(src, work)
    index = work if which.endswith(".h5") else work / "index.h5"
    names = ["images", "bases/table", "bases/blob", "aug/row_chunks", "aug/row_blob", "aug/batches", "aug/images"]
    fields = ["offset", "bytes", "dtype", "shape", "crc32"]
    edits = data.draw(st.lists(st.tuples(st.sampled_from(names), st.sampled_from(fields + ["*"]), _toc_values(),
                                         st.booleans()), min_size=1, max_size=4))
    attr_edit = data.draw(st.one_of(st.none(), st.tuples(st.sampled_from(["format_version", "num_classes", "encoding",
                                                                            "manifest"]), _toc_values())))

    def edit(toc):
        for name, field, value, drop in edits:
            entry = toc["datasets"].get(name)
            if field == "*":
                toc["datasets"][name] = value
            elif isinstance(entry, dict) and drop:
                entry.pop(field, None)
            elif isinstance(entry, dict):
                entry[field] = value
        if attr_edit is not None:
            toc["attrs"]["/"][attr_edit[0]] = attr_edit[1]

    edit_toc(index, edit)
    reseal(work, rebuild=False)
    # forged with valid checksums: it may hold other labels, and only has to fail safely
    outcome, peak = run_isolated_report(lambda: _read_everything(str(work)), timeout=READ_SECONDS,
                                        memory=READ_MEMORY)
    shutil.rmtree(work.parent, ignore_errors=True)
    assert _acceptable(outcome), f"{which}: {edits} {attr_edit}: {outcome}"
    assert peak < READ_MEMORY


@pytest.mark.slow
@pytest.mark.timeout(8 * 3600)
@pytest.mark.parametrize("which", ["s.store", "s.h5"])
@pytest.mark.parametrize("resealed", [False, True])
def test_fuzz_campaign(pristine, tmp_path_factory, which, resealed):
    """CAMPAIGN_EXAMPLES damaged stores of one kind, with or without their checksums recomputed; the
    outcome counts and the peak memory per read go to $SCORE_FUZZ_REPORT (JSON lines) when it is set."""
    tally = CampaignTally(READ_MEMORY)

    @settings(max_examples=CAMPAIGN_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(file_pick=st.integers(0, 100), pos=st.floats(0, 1), mode=st.sampled_from(["flip", "truncate", "zero"]),
           nbytes=st.integers(1, 64))
    def run(file_pick, pos, mode, nbytes):
        tally.add(*_case(pristine, tmp_path_factory, which, file_pick, pos, mode, nbytes, resealed))

    run()
    tally.finish(store=which, resealed=resealed)


@pytest.mark.timeout(60)
def test_isolated_reads_report_hangs_blowups_and_crashes():
    import signal
    import time

    assert run_isolated(lambda: time.sleep(60), timeout=1.0) == "hang"
    assert run_isolated(lambda: np.ones(2**28), memory=256 * 2**20) == "memory"
    # (SIGKILL rather than SIGSEGV: pytest's faulthandler would print a traceback for the latter)
    assert run_isolated(lambda: os.kill(os.getpid(), signal.SIGKILL)) == f"crash: signal {int(signal.SIGKILL)}"
    assert run_isolated(lambda: sc.LabelStore("/nonexistent/x.store")) == "score-error: StoreError"
    assert run_isolated(lambda: {}["k"]).startswith("exception: KeyError")


@pytest.mark.timeout(300)
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_forged_aug_chunk_tables_raise_only_score_errors(pristine, tmp_path_factory, data):
    """The compressed row table forged with valid checksums (docs/FORMAT.md 6): chunk bytes (frame headers
    included) changed and their CRC-32s recomputed, then offsets, lengths and row counts anywhere, CRC-32s
    kept (the frames then inflate under the forged counts) or not."""
    import h5py

    work = tmp_path_factory.mktemp("chunks") / "s.store"
    shutil.copytree(pristine / "s.store", work)
    index = work / "index.h5"
    with h5py.File(index, "r") as f:
        table, blob = f["aug/row_chunks"][()], f["aug/row_blob"][()]
    blob_bytes = len(blob)
    # the first chunk's frame header (magic, descriptor, declared content size) as often as anywhere else
    where = st.one_of(st.integers(0, min(13, blob_bytes - 1)), st.integers(0, blob_bytes - 1))
    for pos, value in data.draw(st.lists(st.tuples(where, st.sampled_from([0, 1, 0x7F, 0xFF]) | st.integers(0, 255)),
                                         max_size=4)):
        blob[pos] = value
    for j, e in enumerate(table):   # each chunk's CRC-32 recomputed: the bytes reach the frame parser
        table[j]["crc32"] = zlib.crc32(blob[int(e["offset"]):int(e["offset"]) + int(e["length"])].tobytes())
    big = st.sampled_from([0, 1, blob_bytes - 1, blob_bytes, 2**20, 2**31, 2**32 - 1])
    for j in data.draw(st.lists(st.integers(0, len(table) - 1), min_size=1, max_size=3)):
        for field, values in (("offset", st.one_of(st.integers(0, blob_bytes + 8), big)),
                              ("length", st.one_of(st.integers(0, blob_bytes + 8), big)),
                              ("rows", st.one_of(st.integers(0, 200), big)),
                              ("crc32", st.integers(0, 2**32 - 1))):
            if data.draw(st.booleans()):
                table[j][field] = min(data.draw(values), 2**32 - 1 if field != "offset" else 2**64 - 1)
    with h5py.File(index, "r+") as f:
        for name, arr in (("aug/row_chunks", table), ("aug/row_blob", blob)):
            del f[name]
            f.create_dataset(name, data=arr)
    reseal(work)
    outcome, peak = run_isolated_report(lambda: _read_everything(str(work)), timeout=READ_SECONDS,
                                        memory=READ_MEMORY)
    shutil.rmtree(work.parent, ignore_errors=True)
    assert _acceptable(outcome), f"{table}: {outcome}"
    assert peak < READ_MEMORY
