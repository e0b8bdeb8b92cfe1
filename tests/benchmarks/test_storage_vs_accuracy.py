"""The storage-versus-accuracy benchmark's invariants, on its ``smoke`` preset (about a minute on one core).

Runs the whole pipeline (teacher, selection, relabel with an SRe2L dump, our codecs and the peers at
matched budgets, students) on a tiny Fashion-MNIST configuration and checks properties that must hold
whatever the numbers: every variant's stored bytes meet its budget, unreachable budgets say so, LPLD
visits only its label pool, lossless variants decode exactly, students beat chance, outputs exist.
The ``quick`` and ``full`` presets run the same code at larger sizes (``-m slow`` runs ``quick``).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from score_codec.training.images import FASHION_MNIST_ROOT

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz")),
                                reason="needs `apt-get install dataset-fashion-mnist`")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from benchmarks.storage_vs_accuracy import PRESETS, run

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("sva")
    cfg = dataclasses.replace(PRESETS["smoke"], threads=1)
    rows = run(cfg, cache_dir=str(base / "cache"), out_dir=str(base / "results"))
    return cfg, rows, base


def _storage(rows):
    return [r for r in rows if r["experiment"] == "storage"]


def test_every_variant_meets_its_budget_or_says_na(smoke):
    from benchmarks.storage_vs_accuracy.report import budget_bytes, meets_budget

    cfg, rows, _ = smoke
    sto = _storage(rows)
    assert {r["family"] for r in sto} >= {"raw", "fp16+zstd", "ours", "library", "ours+pool", "LPLD", "LPQLD", "MR-k",
                                          "FKD"}
    measured = 0
    for r in sto:
        if r.get("label_bytes") is None:
            assert r["note"].startswith(("n/a", "error")), r     # unreachable budgets are reported, not hidden
            continue
        measured += 1
        if r["family"] != "fp16+zstd":
            assert meets_budget(r), (r["name"], r["target"], r["label_bytes"], budget_bytes(r))
    assert measured >= 6
    # every target ratio of the preset appears for every family that can be budgeted
    for fam in ("ours", "library", "MR-k", "LPQLD", "FKD"):
        assert {float(r["target"]) for r in sto if r["family"] == fam} == {float(x) for x in cfg.ratios}
    # LPQLD: one row per split of the sweep at every target, each naming its split when it is reachable
    for x in cfg.ratios:
        lp = [r for r in sto if r["family"] == "LPQLD" and float(r["target"]) == x]
        assert sorted(r["vid"] for r in lp) == sorted(f"lpqld-p{p}@{x:g}" for p in cfg.lpqld_splits)
        for r in lp:
            p = int(r["vid"].split("@")[0][len("lpqld-p"):])
            if r.get("label_bytes") is not None:
                assert r["name"].startswith(f"LPQLD keep 1/{p} + MR-")
                assert r["rows_kept"] <= r["rows"] / p + 1e-9       # the kept batches only


def test_library_default_rows_carry_the_allocation_or_the_budget_error(smoke):
    """The library default (score_codec.encode(Y, path, ratio=X, quant="int8")) at every target: a row with
    the encode's allocation (keep_epochs, inner_ratio, probe KL) within budget, or the BudgetError's message."""

    from benchmarks.storage_vs_accuracy.report import meets_budget

    cfg, rows, base = smoke
    lib = [r for r in _storage(rows) if r["family"] == "library"]
    assert sorted(float(r["target"]) for r in lib) == sorted(float(x) for x in cfg.ratios)
    trained = 0
    for r in lib:
        if r.get("label_bytes") is None:
            assert r["note"].startswith("n/a: ratio") and "max_kl" in r["note"], r   # the library's BudgetError
            continue
        assert meets_budget(r) and 1 <= r["keep_epochs"] <= cfg.label_epochs and r["inner_ratio"] > 0
        assert r["probe_kl_t1"] >= 0 and r["rows_kept"] == r["keep_epochs"] * r["rows"] // cfg.label_epochs
        trained += bool(r.get("top1"))
    assert trained >= 1
    j = json.load(open(base / "results" / f"{cfg.name}.json"))
    jl = [r for r in j["rows"] if r["family"] == "library"]
    assert len(jl) == len(lib) and all({"keep_epochs", "inner_ratio", "probe_kl_t1"} <= set(r) for r in jl)


def test_students_beat_chance_and_lossless_variants_are_exact(smoke):
    cfg, rows, _ = smoke
    sto = {r["vid"]: r for r in _storage(rows)}
    raw = sto["raw"]
    assert raw["kl"] < 1e-6 and raw["agree"] == 1.0               # the same logits: KL is float noise
    assert sto["zstd"]["top1"] == raw["top1"]                   # same labels, same seeds: same student
    assert min(raw["top1"]) > 0.15                              # 10 classes: chance is 0.10
    for r in _storage(rows):
        if r.get("top1"):
            assert all(0.0 <= a <= 1.0 for a in r["top1"]) and len(r["top1"]) == len(cfg.seeds)
    ours_1x = [r for r in _storage(rows) if r["family"] == "ours" and r["target"] == 1 and r.get("top1")]
    assert ours_1x and all(r["kl"] < 1e-2 for r in ours_1x)      # near-lossless at 1x
    assert all(r["top1"] or str(r.get("note", "")).startswith("n/a") for r in rows if r["experiment"] == "selection")
    assert all(r["top1"] for r in rows if r["experiment"] == "selection" and r["target_ratio"] == 1)


def test_outputs_written(smoke):
    cfg, rows, base = smoke
    res = base / "results"
    md = (res / f"{cfg.name}.md").read_text()
    assert "| target | variant |" in md and "Selection" in md and "raw fp16" in md
    with open(res / f"{cfg.name}.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert os.path.isdir(base / "cache" / "relabel")            # resumable step cache
    assert any(p.name == "sre2l" for p in (base / "cache" / "relabel").glob("*/*"))


def test_json_result_has_the_documented_fields(smoke):

    cfg, rows, base = smoke
    j = json.load(open(base / "results" / f"{cfg.name}.json"))
    for k in ("preset", "dataset", "num_classes", "ipc", "label_epochs", "teacher_top1", "reference",
              "hard_label_top1", "rows"):
        assert k in j, k
    ref = j["reference"]
    assert set(ref) >= {"top1_mean", "top1_std", "converged", "doubling_gain", "last_quarter_gain", "curve"}
    assert [f for f, _ in ref["curve"]] == [0.25, 0.5, 0.75, 1.0] and isinstance(ref["converged"], bool)
    # convergence is the doubling test: twice the schedule gains under 0.5 point
    assert ref["converged"] == (ref["doubling_gain"] < 0.005)
    assert ref["curve"][-1][1] == ref["top1_mean"]                     # one seed: the curve ends at the result
    assert 0 <= j["hard_label_top1"] <= 1
    fams = {r["family"] for r in j["rows"]}
    assert fams <= {"ours", "library", "ours+pool", "lpld", "lpqld", "mrk", "fkd", "zstd"}
    assert {"ours", "library", "lpld", "lpqld", "mrk", "zstd"} <= fams
    for r in j["rows"]:
        assert set(r) >= {"family", "variant", "target_ratio", "achieved_ratio", "label_bytes", "kl_t1",
                          "top1_mean", "top1_std", "seeds"}
    txt = (base / "results" / f"{cfg.name}.txt").read_text()
    assert "raw fp16 labels" in txt and "hard labels" in txt            # the table printed at the end
    d = ref["doubled_schedule"]                                         # the convergence test by doubling
    assert d["epochs"] == 2 * cfg.train_epochs and 0 <= d["top1"] <= 1
    assert d["gain"] == pytest.approx(d["top1"] - ref["top1_mean"]) and d["converged"] == (d["gain"] < 0.005)
    assert "twice the schedule" in txt
    # the report is a function of the JSON alone: what python -m benchmarks.render re-renders
    from benchmarks.storage_vs_accuracy.report import render_console, render_markdown

    assert (base / "results" / f"{cfg.name}.md").read_text() == render_markdown(j)
    assert txt == render_console(j)
    prov = j["provenance"]
    assert prov["command"] == f"python -m benchmarks.storage_vs_accuracy --preset {cfg.name}"
    assert prov["hardware"] and len(prov["date"]) == 10 and prov["torch"] == torch.__version__
    assert j["config"]["name"] == cfg.name and j["batches_per_epoch"] >= 1


def test_main_prints_the_results_table_and_records_its_command(smoke, tmp_path, capsys):

    from benchmarks.storage_vs_accuracy import main

    cfg, _, base = smoke
    argv = ["--preset", "smoke", "--threads", "1", "--cache-dir", str(base / "cache"), "--out-dir", str(tmp_path)]
    assert main(argv) == 0                                               # every step from the cache
    out = capsys.readouterr().out
    assert f"== {cfg.name}: 10 classes" in out and "raw fp16 labels" in out
    j = json.load(open(tmp_path / f"{cfg.name}.json"))
    assert j["provenance"]["command"] == "python -m benchmarks.storage_vs_accuracy " + " ".join(argv)


def test_time_limit_skips_extra_seeds_and_resumes(smoke):
    """Past the time limit no extra-seed student starts: best rows keep the seeds that ran (the first,
    from the cache), the reference gets all its seeds, and the report is complete for what ran."""

    from benchmarks.storage_vs_accuracy import run

    cfg, first, base = smoke
    two = dataclasses.replace(cfg, seeds=(0, 1), best_seed_families=("LPLD",))
    rows = run(two, cache_dir=str(base / "cache"), out_dir=str(base / "limited"), time_limit=0.0)
    # the selection comparison's cached students are reported (their views are not replayed again)
    sel = {r["method"]: r["top1"] for r in rows if r["experiment"] == "selection" and r["target_ratio"] == 1}
    assert sel["random"] and sel["random"] == [r["top1"] for r in first if r.get("method") == "random"
                                               and r["target_ratio"] == 1][0]
    lpld = [r for r in _storage(rows) if r["family"] == "LPLD" and r.get("top1")]
    assert lpld and all(len(r["top1"]) == 1 for r in lpld)
    j = json.load(open(base / "limited" / f"{cfg.name}.json"))
    assert j["reference"]["seeds"] == 2                                # zstd is lossless: the reference's seeds
    assert all(r["seeds"] <= 1 for r in j["rows"] if r["family"] != "zstd")


def test_rows_report_every_cached_seed_after_the_best_row_moves(smoke, tmp_path):
    """Extra seeds trained while a row was best stay in the report when another family is picked."""
    import shutil

    from benchmarks.storage_vs_accuracy import run

    cfg, _, base = smoke
    shutil.copytree(base / "cache", tmp_path / "cache")
    lpld_best = dataclasses.replace(cfg, seeds=(0, 1), best_seed_families=("LPLD",))
    first = run(lpld_best, cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "a"))
    two = {r["vid"]: r["top1"] for r in _storage(first) if r["family"] == "LPLD" and r.get("top1")}
    assert two and all(len(t) == 2 for t in two.values())
    moved = dataclasses.replace(lpld_best, best_seed_families=("FKD",))   # LPLD rows are no longer picked
    rows = run(moved, cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "b"), time_limit=0.0)
    assert {r["vid"]: r["top1"] for r in _storage(rows) if r["vid"] in two} == two


def test_time_limit_stops_every_student_but_the_reference(smoke):
    """A run past its time limit starts only the reference: the storage rows, the hard-label row and the
    selection comparison (run last) are reported as not run, and the cached steps are reused."""

    from benchmarks.storage_vs_accuracy.report import NOT_RUN
    from benchmarks.storage_vs_accuracy import run

    cfg, _, base = smoke
    other = dataclasses.replace(cfg, lr=cfg.lr / 2, double_check=False)   # new student keys, same cached steps
    rows = run(other, cache_dir=str(base / "cache"), out_dir=str(base / "cut"), time_limit=0.0)
    j = json.load(open(base / "cut" / f"{cfg.name}.json"))
    assert j["reference"]["seeds"] == len(cfg.seeds) and j["hard_label_top1"] is None
    assert all(r["top1_mean"] is None for r in j["rows"] if r["family"] != "zstd")
    sel = [r for r in rows if r["experiment"] == "selection" and r["method"] != cfg.sweep_method and not r.get("note")]
    assert sel and all(r["top1"] == [] for r in sel)
    md = open(base / "cut" / f"{cfg.name}.md").read()
    assert md.count(NOT_RUN) >= len(sel) + sum(1 for r in j["rows"] if r["label_bytes"] and r["family"] != "zstd")


def test_one_pass_per_label_epoch_is_one_student_however_it_is_spelled(smoke, tmp_path):
    """No epochs given and ``train_epochs = K`` train the same student, so they share one cache entry; a
    cache written when the key said "eNone" is still read."""
    from benchmarks.storage_vs_accuracy import run

    cfg, _, base = smoke
    cache = tmp_path / "cache"
    _linked_cache(base, cache)
    implicit = dataclasses.replace(cfg, train_epochs=None, train_steps=None, double_check=False, seeds=(0,))
    first = run(implicit, cache_dir=str(cache), out_dir=str(tmp_path / "a"), time_limit=0.0)   # the reference only
    jsonl = cache / "students.jsonl"
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 1 and f"|e{cfg.label_epochs}|" in lines[0]
    ref = lambda rows: next(r for r in rows if r.get("vid") == "raw")["top1"]
    spelled = dataclasses.replace(implicit, train_epochs=cfg.label_epochs)
    assert ref(run(spelled, cache_dir=str(cache), out_dir=str(tmp_path / "b"), time_limit=0.0)) == ref(first)
    jsonl.write_text(lines[0].replace(f"|e{cfg.label_epochs}|", "|eNone|") + "\n")   # the old spelling
    assert ref(run(implicit, cache_dir=str(cache), out_dir=str(tmp_path / "c"), time_limit=0.0)) == ref(first)
    assert len(jsonl.read_text().splitlines()) == 1                                  # nothing retrained


def test_hard_label_targets_mix_classes_by_the_box_area():
    from benchmarks.storage_vs_accuracy.label_sources import BatchTable, HardLabelSource
    from score_codec.store.meta import BATCH_DTYPE, MIX_CUTMIX, ROW_DTYPE

    rows = np.zeros(4, ROW_DTYPE)
    rows["image"], rows["pos"], rows["mix_index"] = [0, 1, 2, 3], [0, 1, 2, 3], [1, 0, 3, 2]
    batches = np.zeros(1, BATCH_DTYPE)
    batches[0] = (0, 0, 0, 4, MIX_CUTMIX, 0.5, (0, 0, 4, 8))           # box covers half of an 8 x 8 view
    src = HardLabelSource(np.array([3, 1, 2, 0]), BatchTable(batches, rows), 5, 8)
    t = src.targets(0, np.arange(4), 1.0)
    assert torch.allclose(t.sum(1), torch.ones(4))
    assert t[0, 3] == 0.5 and t[0, 1] == 0.5 and t[2, 2] == 0.5 and t[2, 0] == 0.5


def test_lpld_pool_schedule_and_budget_mapping():
    from benchmarks.storage_vs_accuracy.label_sources import BatchTable, LogitSource, PoolSource, TopKSource
    from benchmarks.storage_vs_accuracy.peers import lpqld_params, topk_k
    from score_codec.training.student import kd_loss
    from score_codec.store.meta import BATCH_DTYPE, ROW_DTYPE

    E, nb, B, n, C = 10, 4, 5, 20, 10
    rows = np.zeros(E * n, ROW_DTYPE)
    batches = np.zeros(E * nb, BATCH_DTYPE)
    g = np.random.default_rng(0)
    for e in range(E):
        order = g.permutation(n)
        rows["image"][e * n:(e + 1) * n], rows["epoch"][e * n:(e + 1) * n] = order, e
        for b in range(nb):
            batches[e * nb + b] = (e, b, e * n + b * B, B, 0, np.nan, (-1, -1, -1, -1))
    table = BatchTable(batches, rows)
    Y = torch.randn(n, E, C)
    pool = PoolSource(LogitSource(Y), table, 0.9)                   # 10x: first 4 of 40 batches
    assert pool.pool == [0, 1, 2, 3] and pool.label_bytes == 4 * B * 2 * C
    plan = pool.schedule(table, 5, seed=0)
    assert len(plan) == 5 and all(len(p) == nb for p in plan)
    assert all(e == 0 for p in plan for e, _ in p)                  # only pooled batches are visited
    assert pool.stored_mask(table).sum() == pool.rows_kept == 4 * B
    # budget mapping: MR-k/FKD store 4k bytes per row against 2C bytes of fp16
    assert topk_k(1000, 10) == 50 and topk_k(10, 1) == 5 and topk_k(10, 10) == 0
    assert lpqld_params(1000, 40) == (0.0, 12) and lpqld_params(10, 10) == (0.9, 5) and lpqld_params(10, 100) is None
    # MR-k decodes to a distribution over the top-k classes only; FKD spreads the rest uniformly
    mr, fkd = TopKSource(Y, 3, "mr"), TopKSource(Y, 3, "fkd", T=20.0)
    ids = np.arange(n)
    p_mr, p_fkd = mr.targets(0, ids, 20.0), fkd.targets(0, ids, 20.0)
    assert torch.allclose(p_mr.sum(1), torch.ones(n), atol=1e-5) and int((p_mr > 0).sum(1).max()) == 3
    assert torch.allclose(p_fkd.sum(1), torch.ones(n), atol=1e-2) and bool((p_fkd > 0).all())
    # the students' probability-target loss is train_student's kd_loss on the logits they come from
    s = torch.randn(n, C)
    assert torch.allclose(kd_loss(s, torch.softmax(Y[:, 0] / 20, 1), 20.0, probs=True), kd_loss(s, Y[:, 0], 20.0), atol=1e-6)


@pytest.mark.slow
def test_quick_preset_runs(tmp_path):
    from benchmarks.storage_vs_accuracy.report import meets_budget
    from benchmarks.storage_vs_accuracy import PRESETS, run

    rows = run(PRESETS["quick"], cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "results"))
    for r in _storage(rows):
        assert r.get("label_bytes") is None or r["family"] == "fp16+zstd" or meets_budget(r)
    assert min(next(r for r in rows if r.get("vid") == "raw")["top1"]) > 0.3


def _linked_cache(base, cache) -> None:
    """A new cache folder sharing ``base``'s teacher, selections and relabel dump (symlinks)."""
    cache.mkdir()
    for name in ("teacher.safetensors", "teacher.json", "relabel"):
        src = base / "cache" / name
        os.symlink(src, cache / name, target_is_directory=src.is_dir())
    for p in (base / "cache").glob("select_*.pt"):
        os.symlink(p, cache / p.name)


def test_targets_build_and_train_only_their_variants(smoke, tmp_path):
    """A run with ``targets`` encodes and trains only those targets' variants; the next run reports
    them from the cached students and metrics without encoding them again (their stores are deleted)."""
    import shutil

    from benchmarks.storage_vs_accuracy import run

    cfg, _, base = smoke
    cache = tmp_path / "cache"
    _linked_cache(base, cache)
    other = dataclasses.replace(cfg, lr=cfg.lr / 2, double_check=False, seeds=(0,))   # new student keys
    first = _storage(run(other, cache_dir=str(cache), out_dir=str(tmp_path / "a"), targets=(10,)))
    at10 = [r for r in first if r["target"] == 10 and r.get("label_bytes")]
    rest = [r for r in first if r["target"] not in (1, 10)]
    assert at10 and all(len(r["top1"]) == 1 for r in at10)
    assert rest and all(not r.get("top1") and r.get("label_bytes") is None for r in rest)
    stores = cache / "variants" / f"{cfg.sweep_method}_ipc{cfg.sweep_ipc}"
    assert not [p for p in stores.iterdir() if p.name.endswith("_x100")]
    for p in stores.iterdir():
        if p.is_dir() and p.name.endswith("_x10"):
            shutil.rmtree(p)
    second = _storage(run(other, cache_dir=str(cache), out_dir=str(tmp_path / "b"), targets=(100,)))
    assert not [p for p in stores.iterdir() if p.name.endswith("_x10")]          # 10x: not encoded again
    keep = ("vid", "top1", "label_bytes", "kl", "kl_t1", "agree")
    again = {r["vid"]: {k: r.get(k) for k in keep} for r in second if r["target"] == 10}
    assert again == {r["vid"]: {k: r.get(k) for k in keep} for r in first if r["target"] == 10}
    assert all(len(r["top1"]) == 1 for r in second if r["target"] == 100 and r.get("label_bytes"))


def test_families_build_and_train_only_their_variants(smoke, tmp_path):
    """A run with ``families`` encodes and trains only those families' variants (at its targets); the
    others are left unbuilt, and global-codec variants carry the library's tag in their ids."""
    from benchmarks.storage_vs_accuracy import run
    from benchmarks.storage_vs_accuracy.peers import GLOBAL_TAG

    cfg, _, base = smoke
    cache = tmp_path / "cache"
    _linked_cache(base, cache)
    other = dataclasses.replace(cfg, lr=cfg.lr / 2, double_check=False, seeds=(0,))   # new student keys
    got = [r for r in _storage(run(other, cache_dir=str(cache), out_dir=str(tmp_path / "a"), targets=(10,),
                                   families=("library",))) if r["target"] == 10]
    lib = [r for r in got if r["family"] == "library"]
    assert lib and all(r["vid"].startswith(f"library.{GLOBAL_TAG}@") for r in lib)
    # a budget the library refuses is "n/a" with no student; every other library row trained one
    assert all(len(r.get("top1") or []) == (1 if r.get("label_bytes") else 0) for r in lib), lib
    others = [r for r in got if r["family"] != "library"]
    assert others and all(not r.get("top1") and r.get("label_bytes") is None for r in others)
    assert all(r["vid"].endswith(f".{GLOBAL_TAG}@10") for r in others if r["vid"].startswith("global"))


def test_a_row_with_cached_students_but_no_metrics_is_reported(smoke, tmp_path):
    """Students trained before metrics were cached (or by another run) still reach every output when
    their target is not in this run's ``targets``: top-1 shown, ratio and KL left blank."""
    import shutil

    from benchmarks.storage_vs_accuracy import run

    cfg, rows, base = smoke
    cache = tmp_path / "cache"
    _linked_cache(base, cache)
    shutil.copyfile(base / "cache" / "students.jsonl", cache / "students.jsonl")
    got = _storage(run(cfg, cache_dir=str(cache), out_dir=str(tmp_path / "o"), targets=(10,)))
    ours_1x = lambda rs: {r["vid"]: r for r in rs if r["target"] == 1 and r["family"] == "ours"}   # not in targets
    want = {v: r["top1"] for v, r in ours_1x(_storage(rows)).items() if r.get("top1")}
    assert want and all(ours_1x(got)[v]["top1"] == t and ours_1x(got)[v].get("label_bytes") is None
                        for v, t in want.items())
    j = json.load(open(tmp_path / "o" / f"{cfg.name}.json"))
    shown = [r for r in j["rows"] if r["target_ratio"] == 1 and r["family"] == "ours" and r["top1_mean"] is not None]
    assert len(shown) == len(want) and all(r["achieved_ratio"] is None and r["kl_t1"] is None for r in shown)
    console = open(tmp_path / "o" / f"{cfg.name}.txt").read()
    assert all(f"{100 * r['top1_mean']:.2f}" in console for r in shown)


def test_artifacts_seed_a_fresh_cache(smoke, tmp_path):
    """Saved artifacts let an empty cache resume: the same teacher bytes, no feature pass for the stored
    selection, every student taken from students.jsonl (same top-1, no new lines), the variants' metrics."""

    from benchmarks.storage_vs_accuracy import run

    cfg, rows, base = smoke
    art = tmp_path / "art"
    run(cfg, cache_dir=str(base / "cache"), out_dir=str(tmp_path / "o1"), artifacts=str(art), save_artifacts=True)
    assert {"data.json", "teacher.safetensors", "teacher.json", "students.jsonl",
            f"metrics_{cfg.sweep_method}_ipc{cfg.sweep_ipc}.json"} <= {p.name for p in art.iterdir()}
    assert any(p.name.startswith("select_") for p in art.iterdir())
    fresh = tmp_path / "fresh"
    again = run(cfg, cache_dir=str(fresh), out_dir=str(tmp_path / "o2"), artifacts=str(art))
    assert (fresh / "teacher.safetensors").read_bytes() == (base / "cache" / "teacher.safetensors").read_bytes()
    assert not (fresh / "features.pt").exists()
    assert (fresh / "students.jsonl").read_text() == (art / "students.jsonl").read_text()
    sel = f"{cfg.sweep_method}_ipc{cfg.sweep_ipc}"
    assert (json.load(open(fresh / "variants" / sel / "metrics.json")).keys()
            >= json.load(open(art / f"metrics_{sel}.json")).keys())
    top1 = lambda rs: {r.get("vid", r.get("method")): r.get("top1") for r in rs if r["experiment"] == "storage"}
    assert top1(again) == top1(rows)


def test_artifacts_from_other_images_are_refused(smoke, tmp_path, caplog):

    from benchmarks.storage_vs_accuracy.artifact_cache import save_artifacts, seed_cache

    _, _, base = smoke
    art = tmp_path / "art"
    save_artifacts(str(base / "cache"), str(art), {"train": "a" * 64, "test": "b" * 64})
    assert not seed_cache(str(tmp_path / "c"), str(art), {"train": "c" * 64, "test": "b" * 64})
    assert "made from other images" in caplog.text and "c" * 64 in caplog.text
    assert not (tmp_path / "c").exists()
    assert json.load(open(art / "data.json")) == {"train": "a" * 64, "test": "b" * 64}


def _table(E: int, nb: int, B: int, seed: int = 0):
    """A BatchTable of E epochs of nb batches of B images (each epoch a permutation of the n = nb * B images)."""
    from benchmarks.storage_vs_accuracy.label_sources import BatchTable
    from score_codec.store.meta import BATCH_DTYPE, ROW_DTYPE

    n = nb * B
    rows = np.zeros(E * n, ROW_DTYPE)
    batches = np.zeros(E * nb, BATCH_DTYPE)
    g = np.random.default_rng(seed)
    for e in range(E):
        rows["image"][e * n:(e + 1) * n], rows["epoch"][e * n:(e + 1) * n] = g.permutation(n), e
        for b in range(nb):
            batches[e * nb + b] = (e, b, e * n + b * B, B, 0, np.nan, (-1, -1, -1, -1))
    return BatchTable(batches, rows)


def test_pooled_store_source_replays_the_kept_epochs_batches(tmp_path):
    """A pooled store is replayed as the library replays it: training epoch e visits the stored batches of
    source epoch kept_epochs[view_for_epoch(e)], with the store's rows of that view as targets."""
    import score_codec as sc
    from benchmarks.storage_vs_accuracy.label_sources import PooledStoreSource, kd_metrics, rows_to_probs

    E, nb, B, C = 6, 3, 4, 10
    table = _table(E, nb, B)
    n = nb * B
    Y = torch.randn(n, E, C) * 3
    path = str(tmp_path / "pooled.store")
    sc.encode(Y, path, keep_epochs=3, rank=C)                       # full rank: rows decode to the kept logits
    src = PooledStoreSource(path)
    kept = src.store.kept_epochs
    assert kept == [0, 2, 4] and src.kept == kept
    plan = src.schedule(table, 2 * E + 1, seed=0)
    assert [p[0][0] for p in plan] == [kept[src.store.view_for_epoch(e)] for e in range(2 * E + 1)]
    assert all(len(p) == table.per_epoch and [b for _, b in p] == list(range(nb)) for p in plan)
    assert {le for p in plan for le, _ in p} == set(kept)           # every kept epoch, no other
    for view, le in enumerate(kept):
        ids = table.images(le, 1)
        want = rows_to_probs(torch.as_tensor(src.store.rows(ids, np.full(len(ids), view))), 4.0)
        assert torch.allclose(src.targets(le, ids, 4.0), want)
        assert torch.allclose(src.targets(le, ids, 4.0), rows_to_probs(Y[torch.as_tensor(ids), le], 4.0), atol=2e-2)
    with pytest.raises(ValueError, match="label epoch 1 is not kept"):
        src.targets(1, np.arange(3), 4.0)
    mask = src.stored_mask(table)
    assert mask.shape == (n, E) and mask[:, kept].all() and mask.sum() == n * len(kept) == src.rows_kept
    assert kd_metrics(src, Y, table, 1.0)["kl"] < 1e-2               # measured on the kept rows only


def test_lpqld_composes_pruning_with_mr_k_within_the_budget():
    from benchmarks.storage_vs_accuracy.peers import build_peers, legacy_lpqld_vid
    from benchmarks.storage_vs_accuracy.report import budget_bytes

    E, nb, B, C = 30, 4, 5, 100
    table = _table(E, nb, B)
    Y = torch.randn(nb * B, E, C)
    peers = {v.vid: v for v in build_peers(100, Y, table, 20.0, splits=(3, 10, 30))}
    assert peers["mrk@100"].source is None and peers["fkd@100"].source is None    # 2 B/row: no top-1 alone
    budget = budget_bytes(dict(rows=nb * B * E, C=C, target=100))
    for p, k in ((3, 1), (10, 5), (30, 15)):
        v = peers[f"lpqld-p{p}@100"]
        src = v.source
        assert v.family == "LPQLD" and v.name == f"LPQLD keep 1/{p} + MR-{k}" and src.inner.k == k
        assert src.label_bytes == src.rows_kept * 4 * k <= budget
        assert len(src.pool) == len(table.batches) // p                 # the first 1/p of the stored batches
        assert {le for plan in src.schedule(table, 3, 0) for le, _ in plan} <= {e for e in range(E) if e * nb < len(src.pool)}
        ids = table.images(0, 0)
        assert int((src.targets(0, ids, 20.0) > 0).sum(1).max()) == k   # MR-k: mass on the top k only
    far = {v.vid: v for v in build_peers(1000, Y, table, 20.0, lpld=False, splits=(3,))}["lpqld-p3@1000"]
    assert far.source is None and far.note.startswith("n/a: keep 1/3")  # 0.6 B per kept row: not even top-1
    # the earlier single "LPQLD" row was MR-k alone where it fits, else keep 1/10 + MR-k: same students
    assert legacy_lpqld_vid(1000, 10, None) == "lpqld@10" and legacy_lpqld_vid(1000, 10, 10) is None
    assert legacy_lpqld_vid(100, 100, 10) == "lpqld@100" and legacy_lpqld_vid(100, 100, None) is None
    assert legacy_lpqld_vid(100, 100, 3) is None and legacy_lpqld_vid(10, 1000, 10) is None


def test_ipc1_preset_and_1000_class_targets(tmp_path):
    """glyphs-ipc1 is defined as documented (no run: its variants are listed without being built), and
    the 1000-class presets offer 300x and 1000x."""
    from benchmarks.storage_vs_accuracy.peers import storage_variants
    from benchmarks.storage_vs_accuracy.presets import PRESETS

    cfg = PRESETS["glyphs-ipc1"]
    assert "classes=1000" in cfg.data and "classes=1000" in cfg.test
    assert cfg.ipcs == (1,) and cfg.sweep_ipc == 1 and cfg.sweep_method == "score" and cfg.label_epochs == 300
    assert cfg.double_check and len(cfg.seeds) >= 3 and {300.0, 1000.0} <= set(cfg.ratios)
    for name in ("glyphs-full", "glyphs-1k", "glyphs-ipc1"):
        assert {300.0, 1000.0} <= set(PRESETS[name].ratios), name
    Y = torch.zeros(3, cfg.label_epochs, 1000)
    table = _table(cfg.label_epochs, 1, 3)
    vs = storage_variants(cfg, Y, table, str(tmp_path / "v"), [0, 1, 2])
    assert not list((tmp_path / "v").iterdir())                        # nothing encoded
    for x in cfg.ratios:
        fams = {v.family for v in vs if v.ratio == x}
        assert {"library", "LPLD", "MR-k", "LPQLD", "FKD"} <= fams, x
        assert ("ours" in fams) == (x <= 10), x   # every row coded at 10x; beyond, the library default decides
        assert sorted(v.vid for v in vs if v.ratio == x and v.family == "LPQLD") == \
            sorted(f"lpqld-p{p}@{x:g}" for p in cfg.lpqld_splits)
    protocol = open(os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "storage_vs_accuracy",
                                 "PROTOCOL.md")).read()
    assert "glyphs-ipc1" in protocol and "doubling" in protocol


def test_fixed_recipes_stop_at_fixed_max_ratio(tmp_path):
    """glyphs-full keeps its every-row-coded and ours + pool rows up to 100x (their students are cached) and
    above it compares the library default alone against every peer, LPQLD's three splits included."""
    from benchmarks.storage_vs_accuracy.peers import storage_variants
    from benchmarks.storage_vs_accuracy.presets import PRESETS

    cfg = PRESETS["glyphs-full"]
    assert cfg.fixed_max_ratio == 100
    Y = torch.zeros(3, cfg.label_epochs, 1000)
    vs = storage_variants(cfg, Y, _table(cfg.label_epochs, 1, 3), str(tmp_path / "v"), [0, 1, 2])
    assert not list((tmp_path / "v").iterdir())                        # nothing encoded
    for x in cfg.ratios:
        fams = {v.family for v in vs if v.ratio == x}
        assert {"library", "LPLD", "LPQLD"} <= fams, x
        assert ("ours" in fams) == (x <= cfg.fixed_max_ratio), x
        assert ("ours+pool" in fams) == (cfg.pool_inner < x <= cfg.fixed_max_ratio), x
    assert sum(v.family == "LPQLD" for v in vs if v.ratio == 300) == len(cfg.lpqld_splits)
    # the default keeps every recipe at every target
    assert {v.family for v in storage_variants(dataclasses.replace(cfg, fixed_max_ratio=float("inf")), Y,
                                               _table(cfg.label_epochs, 1, 3), str(tmp_path / "w"), [0, 1, 2])
            if v.ratio == 1000} >= {"ours", "ours+pool"}


def test_the_1000_class_ipc1_selection_table_shares_glyphs_ipc1s_students():
    """glyphs-select-1k-ipc1 names the same cache, dump and student schedule as glyphs-ipc1, so its SCORE rows
    are glyphs-ipc1's students, and it compares every selection the 100-class table does."""
    from benchmarks.storage_vs_accuracy.pipeline import Pipeline
    from benchmarks.storage_vs_accuracy.presets import PRESETS

    a, b = PRESETS["glyphs-ipc1"], PRESETS["glyphs-select-1k-ipc1"]
    pipe = Pipeline.__new__(Pipeline)
    pipe.done = {}
    for seed in b.seeds:
        assert pipe._key("storage|score_ipc1|K300|library@100", seed, a, 300, False) == \
            pipe._key("storage|score_ipc1|K300|library@100", seed, b, 300, False)
    for f in ("cache", "data", "test", "pool", "select_views", "label_epochs", "ipcs", "batch_size", "crop_scale",
              "teacher_width", "teacher_epochs", "codec_config"):
        assert getattr(a, f) == getattr(b, f), f
    assert set(b.select_methods) == set(PRESETS["glyphs-select-ipc1"].select_methods) and b.select_all_seeds
    assert {100.0, 300.0} <= set(b.select_ratios)


def test_convergence_is_read_from_the_doubling_test():
    from benchmarks.storage_vs_accuracy.report import converged_by_doubling, doubling_gain, render_markdown

    assert doubling_gain({"doubling_gain": 0.002}) == 0.002 and converged_by_doubling({"doubling_gain": 0.002})
    old = {"converged": True, "doubled_schedule": {"gain": 0.0239}}   # written before doubling_gain existed
    assert doubling_gain(old) == 0.0239 and converged_by_doubling(old) is False
    assert doubling_gain({"converged": False}) is None and converged_by_doubling({"converged": True}) is None
    from benchmarks import render

    for name, j in render.load_results().items():   # every committed result states what the test found
        md = render_markdown(j)
        g = doubling_gain(j["reference"])
        assert ("not measured" in md) == (g is None), name
        if g is not None:
            assert f"{100 * g:+.2f} point" in md, name


def test_selection_x_compression_rows_for_every_method_and_ratio(smoke):
    """Each selection (SCORE, SCORE with beta = 0, random) at raw labels and at the library default's
    ratios: a row per (method, ratio) with its seeds' top-1 or the budget's n/a, in the JSON and the tables."""

    cfg, rows, base = smoke
    sel = [r for r in rows if r["experiment"] == "selection"]
    want = {(m, float(x)) for m in cfg.select_methods for x in (1,) + tuple(cfg.select_ratios)}
    assert {(r["method"], float(r["target_ratio"])) for r in sel} == want
    for r in sel:
        assert r["top1"] or str(r.get("note", "")).startswith("n/a"), r
        if float(r["target_ratio"]) > 1 and r["top1"]:
            assert r["keep_epochs"] >= 1 and r["inner_ratio"] > 0
    with open(os.path.join(base / "results", f"{cfg.name}.json")) as fh:
        j = json.load(fh)
    for e in j["selection"]:
        assert {"target_ratio", "top1_mean", "top1_std", "seeds"} <= set(e)
        assert e["seeds"] == len(e["top1"])
    md = open(os.path.join(base / "results", f"{cfg.name}.md")).read()
    assert "## Selection x compression" in md and "library default 10x" in md


def test_targets_pick_the_selection_rows_and_the_sweeps_row_is_the_library_row(smoke, tmp_path):
    """``targets`` trains the selection rows at those ratios only (raw labels are ratio 1).  The sweep's
    selection encoded by the library at a storage-table ratio is that table's library row (the same store
    and schedule): one set of students, the same top-1."""
    from benchmarks.storage_vs_accuracy import run

    cfg, _, base = smoke
    cache = tmp_path / "cache"
    _linked_cache(base, cache)
    x = 1.2   # a ratio the smoke's tiny stores can hold (10x cannot)
    other = dataclasses.replace(cfg, lr=cfg.lr / 2, double_check=False, hard_labels=False, seeds=(0,), ratios=(x,),
                                select_ratios=(x,))   # new student keys
    rows = run(other, cache_dir=str(cache), out_dir=str(tmp_path / "a"), targets=(x,))
    sel = [r for r in rows if r["experiment"] == "selection"]
    assert {(r["method"], float(r["target_ratio"])) for r in sel} == \
        {(m, t) for m in cfg.select_methods for t in (1.0, x)}
    for r in sel:
        if r["method"] != cfg.sweep_method:
            assert bool(r.get("top1")) == (float(r["target_ratio"]) == x), r
    lib = [r for r in _storage(rows) if r["family"] == "library" and float(r["target"]) == x]
    mine = [r for r in sel if r["method"] == cfg.sweep_method and float(r["target_ratio"]) == x]
    assert len(lib) == 1 and len(mine) == 1 and lib[0]["top1"] and mine[0]["top1"] == lib[0]["top1"]
    done = [json.loads(line)["key"] for line in open(cache / "students.jsonl")]
    assert not [k for k in done if k.startswith(f"select|{cfg.sweep_method}|") and "library@" in k]   # not trained twice


def test_a_selection_with_every_student_cached_is_reported_without_its_relabel(smoke, tmp_path):
    """Artifacts keep each library encode's allocation (``encodes_<selection>.json``): a fresh cache seeded
    from them reports a finished selection's rows (top-1 and allocation) without relabelling it."""
    from benchmarks.storage_vs_accuracy import run

    cfg, _, base = smoke
    cache, art = tmp_path / "cache", tmp_path / "art"
    _linked_cache(base, cache)
    x = 1.2   # a ratio the smoke's tiny stores can hold
    other = dataclasses.replace(cfg, lr=cfg.lr / 2, double_check=False, hard_labels=False, seeds=(0,), ratios=(x,),
                                select_ratios=(x,))
    first = run(other, cache_dir=str(cache), out_dir=str(tmp_path / "a"), artifacts=str(art), save_artifacts=True)
    others = [m for m in cfg.select_methods if m != cfg.sweep_method]
    for m in others:
        saved = json.load(open(art / f"encodes_{m}_ipc{cfg.sweep_ipc}.json"))
        assert saved and all(v["keep_epochs"] >= 1 for v in saved.values())
    fresh = tmp_path / "fresh"
    again = run(other, cache_dir=str(fresh), out_dir=str(tmp_path / "b"), artifacts=str(art))
    for m in others:
        assert not (fresh / "relabel" / f"{m}_ipc{cfg.sweep_ipc}_K{cfg.label_epochs}").exists()
    pick = lambda rows: {(r["method"], float(r["target_ratio"])): (r["top1"], r.get("keep_epochs"), r.get("inner_ratio"))
                         for r in rows if r["experiment"] == "selection"}
    assert pick(again) == pick(first)
    assert all(v[0] for v in pick(again).values())
    assert (fresh / "students.jsonl").read_text().splitlines() == (art / "students.jsonl").read_text().splitlines()


def test_a_run_sees_the_students_another_run_sharing_its_cache_finished(tmp_path):
    """Two resumable runs may share a step cache (e.g. split by --select-methods): each re-reads
    students.jsonl before it trains, so neither trains what the other finished; a line still being
    written is read once complete, and the first line of a key wins (as in the committed artifacts)."""
    from benchmarks.storage_vs_accuracy.pipeline import Pipeline

    path = tmp_path / "students.jsonl"
    pipe = Pipeline.__new__(Pipeline)   # only the student bookkeeping: no images, no teacher
    pipe.results_path, pipe.done, pipe._read_to = str(path), {}, 0
    pipe._read_done()
    assert pipe.done == {}
    path.write_text(json.dumps({"key": "a", "top1": 0.5}) + "\n" + '{"key": "b", "to')
    pipe._read_done()
    assert set(pipe.done) == {"a"}
    with open(path, "a") as fh:
        fh.write('p1": 0.6}\n' + json.dumps({"key": "a", "top1": 0.9}) + "\n")
    pipe._read_done()
    assert pipe.done["b"]["top1"] == 0.6 and pipe.done["a"]["top1"] == 0.5


def test_extra_seeds_go_to_our_rows_then_the_best_peer_first():
    """Per target, a seed round trains our best rows, then the peers from the best first seed down (a time
    limit cuts the least needed students); within a family only the best row is picked."""
    from benchmarks.storage_vs_accuracy.presets import PRESETS
    from benchmarks.storage_vs_accuracy.runner import _best_rows

    def row(family, target, top1):
        return dict(experiment="storage", family=family, target=target, top1=[top1], name=f"{family}@{target}")

    rows = [row("library", 300, 0.90), row("LPLD", 100, 0.84), row("library", 100, 0.92), row("library", 100, 0.91),
            row("MR-k", 100, 0.90), row("LPQLD", 100, 0.87), row("LPQLD", 100, 0.78), row("FKD", 100, 0.11),
            row("raw", 1, 0.93)]
    cfg = dataclasses.replace(PRESETS["glyphs-ipc1"], best_seed_families=("library", "LPLD", "LPQLD", "MR-k"))
    got = [(r["family"], r["target"], r["top1"][0]) for r in _best_rows(rows, cfg)]
    assert got == [("library", 100, 0.92), ("MR-k", 100, 0.90), ("LPQLD", 100, 0.87), ("LPLD", 100, 0.84),
                   ("library", 300, 0.90)]


@pytest.mark.parametrize("kind", ["mr", "fkd"])
def test_topk_source_taken_in_chunks_equals_the_whole_dump(kind, monkeypatch):
    """TopKSource takes the top k image by image in chunks (bounded memory on a 1M-row dump); the stored
    values and classes are those of one top-k over the whole dump."""
    from benchmarks.storage_vs_accuracy.label_sources import TopKSource

    Y = torch.randn(7, 3, 50, generator=torch.Generator().manual_seed(0)) * 4
    whole = TopKSource(Y, 5, kind, T=20.0)
    monkeypatch.setattr(TopKSource, "chunk_values", 2 * 3 * 50)   # two images per chunk: four chunks
    chunked = TopKSource(Y, 5, kind, T=20.0)
    src = Y if kind == "mr" else torch.softmax(Y / 20.0, dim=-1)
    vals, idx = torch.topk(src, 5, dim=-1)
    for s in (whole, chunked):
        assert torch.equal(s.idx.long(), idx) and torch.allclose(s.vals.float(), vals.half().float())
        assert s.label_bytes == 7 * 3 * 4 * 5


def test_compare_states_the_side_of_alpha_a_p_value_is_on():
    from benchmarks.storage_vs_accuracy.report import compare
    from scipy.stats import ttest_ind_from_stats

    def row(mean, std, seeds=5):
        return {"top1_mean": mean, "top1_std": std, "seeds": seeds}

    lib, lpld = row(0.929186, 0.002459), row(0.925007, 0.003155)   # Welch p = 0.0496
    p = ttest_ind_from_stats(0.929186, 0.002459, 5, 0.925007, 0.003155, 5, equal_var=False).pvalue
    assert 0.0495 < p < 0.05
    assert compare(lib, lpld) == "ahead (p = 0.0496)" and compare(lpld, lib) == "behind (p = 0.0496)"
    assert compare(row(0.93, 0.002), row(0.92, 0.002)) == "ahead (p < 0.001)"
    assert compare(row(0.93, 0.01), row(0.92, 0.01)).startswith("within noise (p = 0.")
    assert compare(row(0.93, 0.01, 1), row(0.92, 0.01)) == "one seed"


def test_runs_saving_artifacts_at_once_take_turns(tmp_path):
    """Two runs sharing a cache save after each student: concurrent saves neither fail nor lose the folder."""
    import threading

    from benchmarks.storage_vs_accuracy.artifact_cache import save_artifacts, variants_dir

    cache, art = tmp_path / "cache", tmp_path / "art"
    cache.mkdir()
    (cache / "teacher.safetensors").write_bytes(b"w" * 4096)
    (cache / "teacher.json").write_text('{"test_top1": 0.5}')
    (cache / "select_score_ipc1.pt").write_bytes(b"i" * 64)
    students = "".join(json.dumps({"key": f"k{i}", "top1": i / 100}) + "\n" for i in range(200))
    (cache / "students.jsonl").write_text(students)
    os.makedirs(variants_dir(str(cache), "score_ipc1"))
    with open(os.path.join(variants_dir(str(cache), "score_ipc1"), "metrics.json"), "w") as fh:
        json.dump({"raw": {"label_bytes": 1}}, fh)
    hashes = {"train": "a" * 64, "test": "b" * 64}
    errors = []

    def saver():
        try:
            for _ in range(30):
                save_artifacts(str(cache), str(art), hashes)
        except Exception as exc:   # recorded: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=saver) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert (art / "students.jsonl").read_text() == students
    assert json.load(open(art / "metrics_score_ipc1.json")) == {"raw": {"label_bytes": 1}}
    assert json.load(open(art / "data.json")) == hashes
    assert not (tmp_path / "art.tmp").exists() and not (tmp_path / "art.save.lock").exists()
