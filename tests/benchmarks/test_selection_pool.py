"""The selection benchmark's real-pool mode times every selector on a cached features.pt and reports it."""
from __future__ import annotations

import json

import torch

from benchmarks.selection import real_pool


def _pool(path, n_per_class=30, classes=8, d=16, views=3):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    centres = torch.randn(classes, d, generator=g) * 3
    X = centres[y] + torch.randn(len(y), d, generator=g)
    logits = torch.randn(len(y), classes, generator=g) + 5 * torch.nn.functional.one_hot(y, classes)
    soft = (logits[:, None] + 0.5 * torch.randn(len(y), views, classes, generator=g)).half()
    torch.save(dict(features=X, labels=y, logits=logits, soft_labels=soft, pool=torch.arange(len(y))), path)
    return y


def test_every_selector_is_timed_at_every_ipc_and_picks_ipc_images_per_class(tmp_path):
    y = _pool(tmp_path / "features.pt")
    out = tmp_path / "pool.md"
    real_pool.main(str(tmp_path / "features.pt"), [1, 3], str(out))
    res = json.loads((tmp_path / "pool.json").read_text())
    assert res["candidates"] == len(y) and res["classes"] == 8 and res["views"] == 3
    assert {(r["method"], r["ipc"]) for r in res["rows"]} == {(m[0], i) for m in real_pool.METHODS for i in (1, 3)}
    assert all(r["picked"] == 8 * r["ipc"] and r["seconds"] >= 0 for r in res["rows"])
    md = out.read_text()
    assert md == real_pool.render(res)   # the page is generated from the JSON beside it
    for name, *_ in real_pool.METHODS:
        assert f"| {name} |" in md
    assert "8 picks out of 240 in under 60 s" in md and "meets it" in md
