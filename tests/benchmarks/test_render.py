"""python -m benchmarks.render: the committed renderings are what the committed JSON renders."""
from __future__ import annotations

import json
import os

import pytest

from benchmarks import render
from benchmarks.storage_vs_accuracy.report import compare

README = "# score\n\nintro\n\n<!-- results-table:begin -->\nstale table\n<!-- results-table:end -->\n\nrest\n"


def test_committed_renderings_match_the_committed_json():
    out = render.render_all(readme=README)
    stale = []
    for rel, text in out.items():
        if rel == "README.md":
            continue
        with open(os.path.join(render.ROOT, rel)) as f:
            if f.read() != text:
                stale.append(rel)
    assert not stale, f"re-run `python -m benchmarks.render`: {stale} differ from what the committed JSON renders"
    assert "docs/benchmarks/results.md" in out
    assert {f"benchmarks/storage_vs_accuracy/results/{p}.md" for p in render.PRESET_ORDER} <= set(out)


def test_readme_table_sits_between_the_markers_and_carries_provenance():
    out = render.render_all(readme=README)["README.md"]
    before, rest = out.split("<!-- results-table:begin -->\n")
    table, after = rest.split("<!-- results-table:end -->\n")
    assert before == "# score\n\nintro\n\n" and after == "\nrest\n" and "stale table" not in table
    rendered = 0
    for preset, targets in render.HEADLINES:
        path = os.path.join(render.RESULTS_DIR, f"{preset}.json")
        if not os.path.isfile(path):
            continue
        rendered += 1
        j = json.load(open(path))
        part = table.split(f"--preset {preset}`")[0].rsplit("per class**", 1)[1]
        rows = [line for line in part.splitlines() if line.startswith("| ") and "---" not in line][1:]
        # every target with a student in the results, in order, after raw labels
        assert [r.split(" | ")[0] for r in rows] == ["| 1x"] + [
            f"| {t:g}x" for t in targets if any(float(x["target_ratio"]) == t and x.get("top1_mean") is not None
                                                for x in j["rows"])]
        assert f"{100 * j['reference']['top1_mean']:.2f}" in rows[0]
        prov = j["provenance"]
        assert prov["hardware"] in part
        assert prov["date"] not in part   # the README carries no dates; the results page gives each run's
    assert rendered == len(render.HEADLINES)
    # the README's own table of the real README, when it has the markers, is the rendered one
    with open(os.path.join(render.ROOT, "README.md")) as f:
        real = f.read()
    if render.BEGIN in real:
        assert render.render_all()["README.md"] == real, "re-run `python -m benchmarks.render`"


@pytest.mark.parametrize("readme", ["no markers\n", "<!-- results-table:end -->\n<!-- results-table:begin -->\n",
                                    "<!-- results-table:begin -->\n<!-- results-table:begin -->\n<!-- results-table:end -->\n"])
def test_render_refuses_a_readme_without_one_pair_of_markers(readme):
    with pytest.raises(SystemExit, match="README.md: expected one line '<!-- results-table:begin -->'"):
        render.replace_headline(readme, "table")


def test_welch_statements():
    a = dict(top1_mean=0.90, top1_std=0.001, seeds=3)
    assert compare(a, dict(top1_mean=0.80, top1_std=0.001, seeds=3)).startswith("ahead")
    assert compare(dict(a, top1_mean=0.70), dict(top1_mean=0.80, top1_std=0.001, seeds=3)).startswith("behind")
    assert compare(a, dict(top1_mean=0.899, top1_std=0.02, seeds=3)).startswith("within noise")
    assert compare(a, dict(top1_mean=0.80, top1_std=None, seeds=1)) == "one seed"


def test_a_provenance_note_is_rendered_under_the_run_line():
    from benchmarks.storage_vs_accuracy.report import render_markdown

    j = json.load(open(os.path.join(render.RESULTS_DIR, "glyphs-full.json")))
    plain = render_markdown(j)
    assert "**Note.**" not in plain
    j["provenance"] = dict(j["provenance"], note="Archived result: store format 4.")
    lines = render_markdown(j).splitlines()
    run = next(i for i, line in enumerate(lines) if line.startswith("Run on "))
    assert lines[run + 2] == "**Note.** Archived result: store format 4." and lines[run + 4].startswith("Data ")
