"""scan_dump: one pass for metadata and a bounded, spread sample; a second pass streams the files."""
import os

import numpy as np
import pytest

from score_codec.errors import FormatError
from score_codec.formats import read_dump, scan_dump

from tests.dumpgen import make_epoch_dump


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("scan") / "dump")
    make_epoch_dump(root, family="sre2l", ipc=4, epochs=6, batch_size=8)     # 40 images, 30 files of 8 rows
    return root


def test_scan_sees_what_read_dump_sees_and_streams_the_same_logits(dump):
    scan = scan_dump(dump)
    with read_dump(dump) as c:
        assert scan.aug.rows.tobytes() == c.aug.rows.tobytes()
        assert scan.aug.batches.tobytes() == c.aug.batches.tobytes()
        assert np.array_equal(scan.labels, c.labels) and np.array_equal(scan.ks, c.ks)
        assert scan.num_classes == c.num_classes and scan.format == c.format
        streamed = np.concatenate(list(scan.logits()))
        assert np.array_equal(streamed, np.asarray(c.row_logits))      # exact: the same bytes, read twice
    assert sum(len(b) for b in scan.sample) == len(scan.aug.rows)       # a small dump is sampled whole


@pytest.mark.parametrize("want", [8, 20, 50])
def test_sample_is_bounded_and_spread_over_the_files(dump, want):
    scan = scan_dump(dump, sample_rows=want)
    total = len(scan.aug.rows)
    kept = sum(len(b) for b in scan.sample)
    assert min(want, total) <= kept <= 2 * want + 8          # at most one file past the bound
    with read_dump(dump) as c:
        rows = np.asarray(c.row_logits)
    # the kept files are every m-th file from the first (m a power of two): the sample spans the dump
    files = [rows[j * 8:(j + 1) * 8] for j in range(total // 8)]
    picked = [next(j for j, f in enumerate(files) if np.array_equal(f, b)) for b in scan.sample]
    stride = picked[1] - picked[0] if len(picked) > 1 else 1
    assert picked == list(range(0, len(files), stride)) and stride & (stride - 1) == 0
    assert picked[-1] >= len(files) - stride


def test_a_dump_changed_between_the_passes_is_refused(dump, tmp_path):
    import shutil

    work = str(tmp_path / "dump")
    shutil.copytree(dump, work)
    scan = scan_dump(work)
    shutil.rmtree(os.path.join(work, "epoch_5"))
    with pytest.raises(FormatError, match="second read found|differ from the first read"):
        list(scan.logits())


def test_an_empty_file_adds_nothing_to_the_sample(tmp_path):
    from score_codec.formats.base import BatchRecord, new_rows
    from score_codec.formats.npy import NpyReader

    class WithEmptyFirstFile(NpyReader):
        def batches(self):
            yield BatchRecord("empty", np.zeros((0, self.y.shape[2]), np.float16), new_rows(0), None)
            yield from super().batches()

        def num_files(self):
            return self.num_images + 1

    path = str(tmp_path / "y.npy")
    np.save(path, np.random.default_rng(0).standard_normal((6, 4, 10)).astype(np.float16))
    scan = scan_dump(path, reader=WithEmptyFirstFile(path), sample_rows=1000)
    assert [len(b) for b in scan.sample] == [4] * 6      # file 0 (file index 0 is always sampled) is skipped


def _poison(root: str, epoch: int, batch: int, value: float) -> str:
    """Set row 3, class 2 of one SRe2L batch file's logits to ``value``; returns the file."""
    import torch

    p = os.path.join(root, f"epoch_{epoch}", f"batch_{batch}.tar")
    items = torch.load(p, weights_only=False)
    items[5][3, 2] = value
    torch.save(items, p)
    return p


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_the_scan_maps_files_and_leaves_value_checks_to_the_second_pass(dump, tmp_path, value):
    """The scan memory-maps files and checks no logit values (its second pass reads and checks every
    file), except those it reads: the basis-fit sample's and, for the row-mapping test, the files before
    the test settles (--trust-order here: no mapping test)."""
    import shutil

    from score_codec.errors import InputError

    work = str(tmp_path / "dump")
    shutil.copytree(dump, work)
    bad = _poison(work, 0, 3, value)           # file 3: read after the stride reached 4, never sampled
    scan = scan_dump(work, sample_rows=4, check_mapping=False)   # 30 files of 8 rows, at most 16 rows kept
    assert len(scan.sample) < 30
    with pytest.raises(InputError, match=rf"{os.path.basename(bad)}: row 3, class 2: logit is -?(nan|inf)"):
        list(scan.logits())
    _poison(work, 0, 3, 0.0)
    first = _poison(work, 0, 0, value)         # file 0 is always in the sample: the scan itself refuses it
    with pytest.raises(InputError, match=rf"{os.path.basename(first)}: row 3, class 2: logit is -?(nan|inf)"):
        scan_dump(work, sample_rows=4, check_mapping=False)
    with pytest.raises(InputError, match=rf"{os.path.basename(first)}: row 3, class 2: logit is -?(nan|inf)"):
        scan_dump(work, sample_rows=4)         # the mapping test reads it too: the NaN is named, not a mismatch


def test_logits_finite_reads_float16_bits_like_isfinite():
    from score_codec.formats.base import logits_finite

    special = np.array([0.0, -0.0, 65504.0, -65504.0, 6e-8, np.inf, -np.inf, np.nan], np.float16)
    for v in special:
        x = np.zeros((3, 4), np.float16)
        x[1, 2] = v
        assert logits_finite(x) == bool(np.isfinite(v)), v
        assert logits_finite(x.astype(np.float32)) == bool(np.isfinite(v)), v
    every = np.arange(2 ** 16, dtype=np.uint16).view(np.float16)   # all 65,536 float16 bit patterns
    finite = np.isfinite(every)
    assert [logits_finite(v[None, None]) for v in every[::97]] == list(finite[::97])
    assert not logits_finite(every.reshape(256, 256)) and logits_finite(every[finite][None])
