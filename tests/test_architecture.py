"""The package layout is the architecture: lower layers never import upper ones, and nothing imports in a circle."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: layer of each sub-package; a module may import only from layers at or below its own (peers excluded)
LAYERS = {"errors": 0, "_compat": 0, "codecs": 1, "store": 2, "formats": 3, "training": 3, "cli": 4}


def _modules():
    for pkg in ("score_codec", "score_select"):
        for d, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(d, f)
                    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    yield (rel[: -len(".__init__")] if rel.endswith(".__init__") else rel), path


def _imports(name: str, path: str, is_pkg: bool):
    """Absolute names of every score_* module that ``name`` imports, at any nesting level (lazy ones too)."""
    tree = ast.parse(open(path).read())
    pkg = name if is_pkg else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("score_"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("score_"):
                continue
            out.add(mod)
            for a in node.names:  # "from . import x" names a module
                out.add(f"{mod}.{a.name}")
    return out


def _graph():
    mods = dict(_modules())
    g = {}
    for name, path in mods.items():
        deps = {d for d in _imports(name, path, path.endswith("__init__.py")) if d in mods and d != name}
        g[name] = deps
    return g


def _layer(mod: str):
    parts = mod.split(".")
    if parts[0] != "score_codec" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


def test_lower_layers_never_import_upper_ones():
    bad = []
    for mod, deps in _graph().items():
        lm = _layer(mod)
        if lm is None:
            continue
        for d in deps:
            ld = _layer(d)
            same_pkg = d.split(".")[:2] == mod.split(".")[:2]
            if ld is not None and not same_pkg and ld >= lm and ld > 0:
                bad.append(f"{mod} (layer {lm}) imports {d} (layer {ld})")
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    g = _graph()
    # the package __init__ files re-export their children; a child importing its own package's
    # __init__ would close a loop, so every edge is kept
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(g.get(n, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)
    # the top-level packages are lazy re-exporters: a module importing "score_codec" for a name is not a cycle
    cycles = [c for c in cycles if not any(m in ("score_codec", "score_select") for m in c)]
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("old,new,name", [
    ("score_codec.dataset", "score_codec.training.dataset", "CompressedSoftLabelDataset"),
    ("score_codec.reader", "score_codec.store.reader", "LabelStore"),
    ("score_codec.meta", "score_codec.store.meta", "AugMeta"),
    ("score_codec.data", "score_codec.training.images", "load_images"),
])
def test_old_module_paths_are_deprecated_aliases(old, new, name):
    import importlib

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        mod = importlib.import_module(old)
    assert any(issubclass(x.category, DeprecationWarning) and new in str(x.message) for x in w)
    assert getattr(mod, name) is getattr(importlib.import_module(new), name)


def test_public_api_at_the_top_level():
    import score_codec

    for name in score_codec.__all__:
        assert getattr(score_codec, name) is not None, name
    from score_codec import CompressedSoftLabelDataset, LabelDecoder, ReplayBatchSampler  # noqa: F401


def test_importing_the_package_and_the_cli_does_not_import_torch():
    code = "import sys, score_codec, score_codec.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
