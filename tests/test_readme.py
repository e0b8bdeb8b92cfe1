"""The README's examples run as written: its Python API snippets (default run) and its command-line
walkthrough, from training a glyph teacher to the training loop over the compressed store (slow)."""
from __future__ import annotations

import os
import re
import json
import shutil
import subprocess
from typing import List, Tuple

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks(lang: str, start: str = "", end: str = "") -> List[str]:
    """The README's fenced ``lang`` code blocks between the headings ``start`` and ``end`` (whole file when
    both are empty)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    if start:
        text = text[text.index(start):]
    if end:
        text = text[:text.index(end)]
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def _commands(block: str) -> List[str]:
    """The shell commands of a bash block: continuation lines joined, comments dropped."""
    return [c for c in (" ".join(p.strip() for p in cmd.split("\\\n")) for cmd in
                        re.split(r"(?<!\\)\n", block)) if c and not c.startswith("#")]


def _run_snippet(code: str) -> dict:
    """Execute a README snippet in the current directory; its global names afterwards."""
    ns: dict = {"__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), ns)
    return ns


def _snippet(marker: str) -> str:
    """The one README Python block that contains ``marker``."""
    found = [b for b in _blocks("python") if marker in b]
    assert len(found) == 1, f"expected one README python block with {marker!r}, found {len(found)}"
    return found[0]


def test_python_api_snippets_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = _run_snippet(_snippet("score_codec.encode("))
    assert ns["stats"]["ratio"] >= 30 * 0.98 and ns["store"].verify() == []
    assert ns["m"].shape == (50, 1000) and ns["rows"].shape == (3, 1000)
    # rows() is the batched path to the same numbers as matrix()
    assert torch.allclose(torch.as_tensor(ns["rows"][1]), torch.as_tensor(ns["store"].matrix(5)[0]), atol=1e-5)

    ns = _run_snippet(_snippet("score_select.select("))
    idx, labels = torch.as_tensor(ns["idx"]), ns["labels"]
    assert len(set(idx.tolist())) == 500 and torch.bincount(labels[idx], minlength=10).tolist() == [50] * 10
    assert torch.equal(torch.as_tensor(ns["sel"].ranking_), idx)


def _walkthrough() -> Tuple[List[str], str]:
    """The commands of "Compress an existing dump", "Train a student" and score-select's command line
    (except the one for the user's own data), and the training-loop snippet that uses their store."""
    cmds = []
    for start, end in [("## Compress an existing dump", "## Train a student"),
                       ("## Train a student", "## Select images with SCORE"),
                       ("### Command line", "### How it scales")]:
        for block in _blocks("bash", start, end):
            cmds += [c for c in _commands(block) if not c.split()[1].startswith("data/")]   # not the user's own
    return cmds, _snippet("CompressedSoftLabelDataset(")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("score-codec") is None, reason="the package's scripts are not installed")
def test_command_line_walkthrough_runs_as_written(tmp_path, monkeypatch):
    cmds, loop = _walkthrough()
    assert [" ".join(c.split()[:2]) for c in cmds] == [
        "score-codec train-teacher", "score-codec relabel", "score-codec encode", "score-codec info",
        "score-codec verify", "score-codec decode", "score-codec decode", "score-codec train-student",
        "score-select \"cjk-glyphs:train?classes=100\"", "score-select \"cjk-glyphs:train?classes=100\"",
        "score-codec relabel"]
    outputs = {}
    for cmd in cmds:
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
        outputs.setdefault(cmd.split()[1], r.stdout)
    # what the README says they print: the teacher's and student's top-1 as JSON, verify's summary row
    assert 0.5 < json.loads(outputs["train-teacher"])["test_top1"] <= 1.0
    assert 0.2 < json.loads(outputs["train-student"])["top1"] <= 1.0
    assert re.search(r"^\s*all\s+20000\s", outputs["verify"], flags=re.M), outputs["verify"]
    for f in ["glyph_teacher.safetensors", "glyph_labels.store", "glyph_dump_fp16", "glyph_dump.store",
              "glyph_dump_restored", "glyph_logits.npy", "sel/selection.json", "sel.store"]:
        assert os.path.exists(tmp_path / f), f
    # the restored SRe2L dump has the original's files, one per (epoch, batch)
    orig = sorted(os.listdir(tmp_path / "glyph_dump_fp16" / "epoch_0"))
    assert orig and sorted(os.listdir(tmp_path / "glyph_dump_restored" / "epoch_0")) == orig
    monkeypatch.chdir(tmp_path)
    ns = _run_snippet(loop)
    assert ns["epoch"] == 19 and torch.isfinite(ns["loss"])
