"""benchmarks.label_path.device_paths: every path runs on the CPU, and the table compares devices as speed-ups."""
from __future__ import annotations

from benchmarks.label_path.device_paths import measure, table


def test_cpu_paths_decode_what_the_reader_decodes_and_encode_faithfully(tmp_path):
    res = measure("cpu", str(tmp_path), quick=True)
    assert {"encode_projection", "encode_kl_fit", "decode", "gather_fp16", "select_s"} <= set(res)
    assert res["decode_max_abs_diff"] < 1e-4
    # teacher-like 1000-class rows at 30x (0.30 nats measured; the mean row alone is several nats away)
    assert 0 <= res["kl_t1"] < 0.5


def test_table_gives_the_second_device_speedup_in_the_direction_of_faster():
    res = {"cpu": dict(encode_projection=100.0, encode_kl_fit=10.0, decode=1000.0, gather_fp16=2000.0, select_s=4.0,
                   kl_t1=0.1, decode_max_abs_diff=0.0),
           "cuda": dict(encode_projection=1000.0, encode_kl_fit=200.0, decode=5000.0, gather_fp16=2000.0, select_s=0.5,
                    kl_t1=0.1, decode_max_abs_diff=1e-6)}
    lines = table(res, quick=False)
    assert lines[0].endswith("| cuda vs cpu |")
    by = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert by["encode, global 30x, projection (rows/s)"].endswith(" 10.0x |")
    assert by["encode, global 30x, KL fit (rows/s)"].endswith(" 20.0x |")
    assert by["select: SCORE (s)"].endswith(" 8.0x |")   # seconds: fewer is faster
    assert all(len(line.split("|")) == len(lines[0].split("|")) for line in lines)
