"""benchmarks/ is a package: one sub-package per benchmark, each run as ``python -m benchmarks.<name>``."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "benchmarks")
NAMES = ["storage_vs_accuracy", "codec", "label_path", "selection", "faults"]
#: each benchmark's command-line module (what ``python -m benchmarks.<name>`` runs)
ENTRY = {"storage_vs_accuracy": "runner", "codec": "bench", "label_path": "bench", "selection": "bench",
         "faults": "report"}


def _modules():
    for d, _, files in os.walk(BENCH):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                yield os.path.relpath(path, ROOT), ast.parse(open(path).read(), path)


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_no_path_edits_no_test_imports_and_no_entry_script_imported_by_another_benchmark():
    for rel, tree in _modules():
        src = ast.unparse(tree)
        assert "sys.path" not in src, rel
        mods = set(_imports(tree))
        assert not any(m == "tests" or m.startswith("tests.") for m in mods), (rel, mods)
        owner = rel.split(os.sep)[1]
        for name, entry in ENTRY.items():
            if name != owner:
                assert f"benchmarks.{name}.{entry}" not in mods and f"benchmarks.{name}" not in mods, (rel, name)


def test_no_copy_of_the_training_loop_or_kd_loss():
    for rel, tree in _modules():
        defs = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert not defs & {"soft_kd_loss", "kd_loss"}, rel
        src = ast.unparse(tree)
        assert "OneCycleLR(" not in src and "F.cross_entropy(" not in src, rel   # the teacher loop is the library's


@pytest.mark.parametrize("name", NAMES + ["label_path.device_paths", "label_path.throughput", "render"])
def test_every_benchmark_runs_as_a_module_with_help(name):
    if "." not in name and name != "render":
        assert os.path.isfile(os.path.join(BENCH, name, "__main__.py"))
        assert os.path.isfile(os.path.join(BENCH, name, "PROTOCOL.md"))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m benchmarks.{name}")
