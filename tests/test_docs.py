"""The documentation site: it builds with ``mkdocs build --strict``, its API reference documents every
public name, no page or source file carries run history, and the code blocks of the guides and codec
pages run as written."""
from __future__ import annotations

import glob
import importlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.common import fashion_mnist_missing
import torch

from tests.docblocks import ROOT, block_with, blocks, run_block

try:
    import mkdocs  # noqa: F401
    import mkdocstrings  # noqa: F401
    HAVE_MKDOCS = True
except ImportError:
    HAVE_MKDOCS = False

needs_mkdocs = pytest.mark.skipif(not HAVE_MKDOCS, reason="mkdocs / mkdocstrings are not installed "
                                                          '(pip install -e ".[docs]")')




@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built into a temporary directory, strictly (any warning fails the build)."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f",
                        os.path.join(ROOT, "mkdocs.yml"), "-d", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    return out


@needs_mkdocs
def test_site_builds_strictly_with_every_page(site):
    nav_pages = re.findall(r":\s*([\w/.-]+\.md)\s*$", open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8").read(),
                           flags=re.M)
    assert len(nav_pages) >= 20
    for page in nav_pages:
        html = os.path.join(site, "index.html" if page == "index.md" else page[:-3].removesuffix("/index") + "/index.html")
        assert os.path.getsize(html) > 0, page
    # the changelog page includes CHANGELOG.md itself
    assert "Keep a Changelog" in open(os.path.join(site, "changelog", "index.html"), encoding="utf-8").read()


def _documented_ids(site) -> set:
    ids = set()
    for f in glob.glob(os.path.join(site, "api", "**", "*.html"), recursive=True):
        ids |= set(re.findall(r'id="((?:score_codec|score_select)[\w.]*)"', open(f, encoding="utf-8").read()))
    return ids


def _is_documented(ids: set, package: str, name: str) -> bool:
    """Some rendered heading ``<module>.<name>`` names the object ``package.<name>`` is."""
    obj = getattr(importlib.import_module(package), name)
    for ident in ids:
        module, _, last = ident.rpartition(".")
        if last != name or not module:
            continue
        try:
            there = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if there is obj or (isinstance(obj, (int, float, str)) and there == obj):
            return True
    return False


@needs_mkdocs
@pytest.mark.parametrize("package", ["score_codec", "score_select"])
def test_api_reference_documents_every_public_name(site, package):
    ids = _documented_ids(site)
    missing = [n for n in importlib.import_module(package).__all__ if not _is_documented(ids, package, n)]
    assert not missing, (f"{package} names without an API reference entry: {missing}; add "
                         f"'::: <defining module>.<name>' to a page under docs/api/")


# built from pieces so that this file does not match itself
HISTORY = re.compile("|".join(["dec" + "ember", "sit" + "ting", "earlier " + "machine", "fresh " + "clone",
                               "issue's " + "goal"]), flags=re.I)
TEXT_SUFFIXES = (".py", ".md", ".txt", ".json", ".csv", ".sh", ".yml", ".yaml", ".toml", ".cfg", ".ini")


def test_no_run_history_in_docs_or_code():
    """README, docs (the changelog aside) and the code explain what is, not when or on which machine."""
    files = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "mkdocs.yml")]
    for top in ["docs", "score_codec", "score_select", "benchmarks", "tests"]:
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            files += [os.path.join(dirpath, n) for n in names if n.endswith(TEXT_SUFFIXES)]
    hits = []
    for path in files:
        if os.path.basename(path) == "CHANGELOG.md" or os.path.getsize(path) > 5_000_000:
            continue
        for i, line in enumerate(open(path, encoding="utf-8", errors="replace"), 1):
            if HISTORY.search(line):
                hits.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


# ---- code blocks of the guides and the codec pages -------------------------------------------------------

PAGES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "guides", "*.md"))
               + glob.glob(os.path.join(ROOT, "docs", "codecs", "*.md"))) + ["docs/index.md"]


def _params():
    out = []
    for page in PAGES:
        for b in blocks(page):
            marks = [pytest.mark.slow] if b.slow else []
            out.append(pytest.param(b, id=b.id, marks=marks))
    return out


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """One working directory per page, shared by its blocks in order."""
    cache = {}

    def get(page: str) -> str:
        if page not in cache:
            cache[page] = str(tmp_path_factory.mktemp(re.sub(r"\W", "_", page)))
        return cache[page]
    return get


def test_every_page_with_code_is_run():
    ran = {b.page for page in PAGES for b in blocks(page)}
    assert {"docs/guides/compress-a-dump.md", "docs/guides/train-with-compressed-labels.md",
            "docs/guides/select-images.md", "docs/guides/imagenet-style.md", "docs/codecs/writing-a-codec.md"} <= ran


@pytest.mark.parametrize("block", _params())
def test_doc_block_runs_as_written(block, workdirs):
    if "fashion-mnist" in block.code and fashion_mnist_missing():
        pytest.skip("Fashion-MNIST is not installed (bash scripts/install-system-deps.sh)")
    cwd = workdirs(block.page)
    result = run_block(block, cwd)
    check = CHECKS.get((block.page, block.index))
    if check is not None:
        check(result, cwd)


# what each block is for, checked on what it returned or wrote

def _index(page: str, marker: str) -> int:
    return block_with(page, marker).index


def _check_select_python(ns, cwd):
    # the estimator with the same parameters picks the same images as select()
    assert torch.equal(torch.as_tensor(ns["sel"].ranking_), torch.as_tensor(ns["idx"]))
    assert torch.bincount(ns["labels"][torch.as_tensor(ns["idx"])], minlength=10).tolist() == [50] * 10


def _check_select_cli(r, cwd):
    for out, beta in [("sel", 0.1), ("sel_b0", 0.0)]:
        sel = json.load(open(os.path.join(cwd, out, "selection.json")))
        assert sel["ipc"] == 5 and sel["beta"] == beta and sel["selected"] == 50 and len(set(sel["indices"])) == 50
        assert np.bincount(sel["labels"], minlength=10).tolist() == [5] * 10                  # IPC 5 per class


def _check_codec_example(ns, cwd):
    # the store was written by the page's codec, and rank 8 holds the rank-8 matrices up to float rounding
    assert ns["stats"]["methods"] == {"first-rows": 50} and ns["stats"]["codec"] == {"id": "first-rows"}
    assert float(ns["err"]) < 1e-3 and ns["stats"]["ratio"] > 1


def _check_compress_cli(r, cwd):
    assert re.search(r"^\s*all\s+10000\s", r.stdout, flags=re.M), r.stdout
    # the plan printed one line per ratio: its kept epochs (10 label epochs in the dump), or why it cannot
    assert all(re.search(rf"^\s*{x}x\s+\d+ of 10\s", r.stdout, flags=re.M) for x in (2, 4)), r.stdout
    assert re.search(r"^\s*8x\s+n/a, at most [\d.]+x fits \[1\]$", r.stdout, flags=re.M), r.stdout
    assert re.search(r"^\[1\] .*ratio 8x leaves", r.stdout, flags=re.M), r.stdout
    orig = sorted(os.listdir(os.path.join(cwd, "sre2l_dump", "epoch_0")))
    assert orig and sorted(os.listdir(os.path.join(cwd, "restored_dump", "epoch_0"))) == orig
    assert np.load(os.path.join(cwd, "dump_logits.npy")).shape == (1000, 10, 10)


def _check_compress_python(ns, cwd):
    assert ns["stats"]["ratio"] > 3.5 and os.path.isdir(os.path.join(cwd, "restored_py", "epoch_0"))


def _check_relabel(ns, cwd):
    assert ns["stats"]["images"] == 500 and ns["stats"]["rows"] == 2500


def _check_train_loop(ns, cwd):
    assert ns["epoch"] == 4 and torch.isfinite(ns["loss"])


def _check_train_cli(r, cwd):
    assert 0.0 <= json.loads(r.stdout)["top1"] <= 1.0


def _check_gpu_decode(ns, cwd):
    assert tuple(ns["teacher_logits"].shape) == (50, 10) and torch.isfinite(ns["teacher_logits"]).all()


def _check_imagenet_relabel(r, cwd):
    import score_codec

    attrs = score_codec.LabelStore(os.path.join(cwd, "labels.store")).aug_reader.attrs
    assert attrs["input_size"] == 224 and attrs["normalize"] == {"mean": [0.485, 0.456, 0.406],
                                                                 "std": [0.229, 0.224, 0.225]}


def _check_imagenet_train(ns, cwd):
    assert tuple(ns["views"].shape[1:]) == (3, 224, 224) and float(ns["views"].min()) < 0   # normalised
    assert torch.isfinite(ns["loss"]) and float(ns["gap"]) < 1e-3


def _check_kl_fit(ns, cwd):
    import score_codec

    store = score_codec.LabelStore(os.path.join(cwd, "fit.store"))
    assert store.verify() == [] and store.stats()["ratio"] >= 20 * 0.98
    assert store.stats()["codec"]["fit_temperature"] == 20


def _check_index(ns, cwd):
    assert ns["stats"]["ratio"] >= 20 * 0.98 and tuple(ns["store"].matrix(0).shape) == (20, 1000)


def _check_pooling(ns, cwd):
    # 100x cannot code all 50 epochs usefully: fewer are kept, the budget is met and replay cycles the kept ones
    st, store = ns["st"], ns["store"]
    assert 1 <= st["keep_epochs"] < st["source_epochs"] == 50 and st["ratio"] >= 100 * 0.98
    assert st["kl_t1"] <= 0.01 and store.view_for_epoch(7) == 7 % st["keep_epochs"]
    # the plan's 100x is the encode's split; 1000x cannot hold a useful label and says how far it can go
    at10, at100, at1000 = ns["plans"]
    assert at100["keep_epochs"] == st["keep_epochs"] and at10["keep_epochs"] > at100["keep_epochs"]
    assert at1000["error"] and at1000["max_ratio"] < 1000


G, C = "docs/guides/", "docs/codecs/"
CHECKS = {
    (G + "select-images.md", _index(G + "select-images.md", "ScoreSelection(")): _check_select_python,
    (G + "select-images.md", _index(G + "select-images.md", "score-select fashion-mnist")): _check_select_cli,
    (G + "compress-a-dump.md", _index(G + "compress-a-dump.md", "score-codec encode")): _check_compress_cli,
    (G + "compress-a-dump.md", _index(G + "compress-a-dump.md", "encode_dump(")): _check_compress_python,
    (G + "train-with-compressed-labels.md", _index(G + "train-with-compressed-labels.md", "relabel(")): _check_relabel,
    (G + "train-with-compressed-labels.md",
     _index(G + "train-with-compressed-labels.md", "opt.step()")): _check_train_loop,
    (G + "train-with-compressed-labels.md", _index(G + "train-with-compressed-labels.md", "train-student")): _check_train_cli,
    (G + "train-with-compressed-labels.md", _index(G + "train-with-compressed-labels.md", "LabelDecoder(")): _check_gpu_decode,
    (G + "imagenet-style.md", _index(G + "imagenet-style.md", "--normalize imagenet --input-size 224 \\\n    --epochs 3")):
        _check_imagenet_relabel,
    (G + "imagenet-style.md", _index(G + "imagenet-style.md", "opt.step()")): _check_imagenet_train,
    (C + "writing-a-codec.md", _index(C + "writing-a-codec.md", "FirstRowsCodec")): _check_codec_example,
    (C + "kl-fit.md", _index(C + "kl-fit.md", "codec_config=")): _check_kl_fit,
    ("docs/index.md", _index("docs/index.md", "demo.store")): _check_index,
    (C + "pooling.md", _index(C + "pooling.md", "pooled.store")): _check_pooling,
}
