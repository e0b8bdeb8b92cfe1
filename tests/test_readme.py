"""The README: its size, the markers that tools read (the set-up commands for CI, the results table for
the renderer), and its code blocks, which run as written with checks on what they return."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.common import needs_fashion_mnist
import torch

from tests.docblocks import ROOT, block_with, blocks, read_page, run_block

README = "README.md"
SETUP = 'bash scripts/install-system-deps.sh && pip install -q torch==2.13.0 && pip install -q -e ".[dev]"'
MAIN_COMMAND = SETUP + " && python -m benchmarks.storage_vs_accuracy --preset glyphs-quick"
TEST_COMMAND = SETUP + " && python -m pytest -q"

needs_cli = pytest.mark.skipif(shutil.which("score-codec") is None, reason="the package's scripts are not installed")




def test_readme_is_at_most_15000_bytes():
    size = os.path.getsize(os.path.join(ROOT, README))
    assert size <= 15_000, f"README.md is {size} bytes"


def test_setup_commands_follow_their_markers():
    lines = read_page(README).splitlines()
    for marker, command in [("<!-- main-command -->", MAIN_COMMAND), ("<!-- test-command -->", TEST_COMMAND)]:
        at = [i for i, line in enumerate(lines) if line.strip() == marker]
        assert len(at) == 1, f"{marker} appears {len(at)} times"
        assert lines[at[0] + 1] == "```bash" and lines[at[0] + 2] == command, lines[at[0]:at[0] + 4]


def test_ci_extracts_the_test_command():
    """.ci/run's own extraction (its awk line, run as it runs it) finds the README's test command."""
    script = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    m = re.search(r'^cmd="\$\((awk .*)\)"$', script, flags=re.M)
    assert m, ".ci/run no longer extracts the command with awk"
    r = subprocess.run(["bash", "-c", m.group(1)], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == TEST_COMMAND


def test_results_table_markers():
    text = read_page(README)
    begin, end = "<!-- results-table:begin -->", "<!-- results-table:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    table = text[text.index(begin) + len(begin):text.index(end)]
    assert text.index(begin) < text.index(end) and re.search(r"^\|.*\|$", table, flags=re.M), table


def test_every_readme_block_is_tested():
    """Each python/bash block of the README is one of those the tests below run (or a set-up command)."""
    tested = ["score_codec.encode(Y", "logits.npy", "CompressedSoftLabelDataset(", "score_select.select("]
    for b in blocks(README):
        assert b.code.strip() in (MAIN_COMMAND, TEST_COMMAND) or any(t in b.code for t in tested), b.code


def test_quickstart_python(tmp_path):
    ns = run_block(block_with(README, "score_codec.encode(Y"), str(tmp_path))
    assert 30 * 0.98 <= ns["stats"]["ratio"] and ns["store"].verify() == []
    assert ns["m"].shape == (50, 1000) and ns["rows"].shape == (3, 1000)
    assert float(ns["kl"]) < 1e-3                                   # the rank-32 logits fit in 67 bytes per row
    # rows() is the batched path to the numbers matrix() decodes
    assert torch.allclose(torch.as_tensor(ns["rows"][1]), torch.as_tensor(ns["store"].matrix(5)[0]), atol=1e-5)


@needs_cli
def test_quickstart_command_line(tmp_path):
    r = run_block(block_with(README, "logits.npy", "bash"), str(tmp_path))
    ratio = float(re.search(r"([\d.]+)x smaller than fp16 logits", r.stdout).group(1))
    # the budget, with record sizes counted after zstd, is met and spent (one more basis rank would not fit)
    assert 9.9 <= ratio <= 10.5, r.stdout
    # the plan's 10x line is the split the encode then makes (every one of the 20 label epochs kept)
    assert re.search(r"^\s*10x\s+20 of 20\s", r.stdout, flags=re.M), r.stdout
    assert re.search(r"^\s*100x\s+(\d+ of 20|n/a)", r.stdout, flags=re.M), r.stdout
    summary = re.search(r"^\s*all\s+10000\s+(\S+)\s+(\S+)\s+([\d.]+)%", r.stdout, flags=re.M)
    assert summary and float(summary.group(1)) < 1e-2 and float(summary.group(3)) > 95, r.stdout
    src = np.load(tmp_path / "logits.npy").astype(np.float32)
    out = np.load(tmp_path / "restored.npy")
    assert out.shape == src.shape == (500, 20, 100)
    centred = src - src.mean(-1, keepdims=True)                     # decoded rows are row-centred
    assert np.abs(out - centred).mean() < 0.1 * np.abs(centred).mean()


@pytest.mark.slow
@needs_fashion_mnist
def test_training_loop(tmp_path):
    ns = run_block(block_with(README, "CompressedSoftLabelDataset("), str(tmp_path))
    assert ns["epoch"] == 4 and torch.isfinite(ns["loss"])
    assert len(ns["ds"]) == 500 and os.path.isdir(tmp_path / "fm.store")


def test_selection(tmp_path):
    ns = run_block(block_with(README, "score_select.select("), str(tmp_path))
    idx, labels = torch.as_tensor(ns["idx"]), ns["labels"]
    assert len(set(idx.tolist())) == 500 and torch.bincount(labels[idx], minlength=10).tolist() == [50] * 10
    assert torch.isfinite(torch.as_tensor(ns["gains"])).all()
