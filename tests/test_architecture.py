"""The package layout is the architecture: lower layers never import upper ones, and nothing imports in a circle."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: layer of each sub-package; a module may import only from layers at or below its own (peers excluded)
LAYERS = {"errors": 0, "_version": 0, "progress": 0, "codecs": 1, "store": 2, "formats": 3, "training": 3, "cli": 4}


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


def test_every_public_module_declares_all():
    missing = [name for name, path in _modules()
               if not any(part.startswith("_") for part in name.split(".")[1:])
               and "__all__" not in open(path).read()]
    assert not missing, missing


def test_top_level_all_lists_every_lazy_name_and_error_class_once():
    import inspect

    import score_codec
    import score_codec.errors as errors

    assert len(set(score_codec.__all__)) == len(score_codec.__all__)
    assert set(score_codec._LAZY) <= set(score_codec.__all__)
    classes = {n for n, v in vars(errors).items() if inspect.isclass(v) and issubclass(v, Exception)}
    assert classes <= set(score_codec.__all__)
    # command-line helpers are not library API
    assert "cli_message" not in score_codec.__all__ and not hasattr(score_codec, "cli_message")


def test_every_error_class_is_defined_in_errors():
    import inspect

    import score_codec.errors as errors

    stray = []
    for name, path in _modules():
        if name == "score_codec.errors":
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ClassDef) and (node.name.endswith("Error") or node.name.endswith("Exception")):
                stray.append(f"{name}.{node.name}")
    assert not stray, stray
    assert all(issubclass(v, errors.ScoreError) for v in vars(errors).values()
               if inspect.isclass(v) and issubclass(v, Exception))


def test_removed_module_paths_are_gone():
    import importlib

    for gone in ("score_codec/_compat.py", "score_codec/codecs/storewide.py"):
        assert not os.path.exists(os.path.join(ROOT, gone)), gone
    for old in ("score_codec.reader", "score_codec.dataset"):   # flat paths of the pre-layered package
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)


def test_public_api_at_the_top_level():
    import score_codec

    for name in score_codec.__all__:
        assert getattr(score_codec, name) is not None, name
    from score_codec import CompressedSoftLabelDataset, LabelDecoder, ReplayBatchSampler  # noqa: F401


def test_importing_the_package_and_the_cli_does_not_import_torch():
    code = "import sys, score_codec, score_codec.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
