"""Fenced code blocks of the README and the documentation pages, and running them as a reader would.

A page's blocks run in order in one working directory, so a block may use what an earlier block of the
same page wrote (a dump, a store). Python blocks are executed in this process; bash blocks run with
``bash -euo pipefail`` in a subprocess. Every block that runs is then checked by the test that asked for
it, on what it returned or wrote.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: a block containing one of these takes long enough (a relabel pass, a training loop, a teacher over
#: thousands of images) to be left out of the default run; later blocks of its page depend on its output
SLOW_MARKERS = ("relabel(", "DataLoader(", "train-student", "score-select fashion-mnist")


@dataclass
class Block:
    """One fenced code block: its page (relative to the repository), position on the page, language and code."""

    page: str
    index: int
    lang: str
    code: str
    slow: bool = False

    @property
    def id(self) -> str:
        return f"{self.page}:{self.index}"


def read_page(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def blocks(page: str, langs=("python", "bash")) -> List[Block]:
    """The page's fenced blocks in ``langs``, in order; a block after a slow one on the same page is slow too."""
    out: List[Block] = []
    slow = False
    for i, m in enumerate(re.finditer(r"^```(\w*)\n(.*?)^```", read_page(page), flags=re.S | re.M)):
        lang, code = m.group(1), m.group(2)
        if lang not in langs:
            continue
        slow = slow or any(s in code for s in SLOW_MARKERS)
        out.append(Block(page, i, lang, code, slow))
    return out


def block_with(page: str, marker: str, lang: Optional[str] = None) -> Block:
    """The one block of ``page`` that contains ``marker``."""
    found = [b for b in blocks(page) if marker in b.code and (lang is None or b.lang == lang)]
    assert len(found) == 1, f"expected one {page} block with {marker!r}, found {len(found)}"
    return found[0]


def _env() -> Dict[str, str]:
    """The environment of a bash block: this checkout first on the import path, one thread per process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    # the blocks call `python`; make it this interpreter even where a bare `python` is another one
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def run_block(block: Block, cwd: str) -> Any:
    """Run ``block`` in ``cwd``: a python block's global names afterwards, or a bash block's CompletedProcess.

    Codecs a python block registers are unregistered afterwards, so a page's example codec does not leak
    into other tests.
    """
    if block.lang == "python":
        from score_codec.codecs import base

        registered = dict(base._REGISTRY)
        old = os.getcwd()
        os.chdir(cwd)
        try:
            ns: Dict[str, Any] = {"__name__": "__docblock__"}
            exec(compile(block.code, f"{block.page} block {block.index}", "exec"), ns)
            return ns
        finally:
            os.chdir(old)
            base._REGISTRY.clear()
            base._REGISTRY.update(registered)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=cwd, env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, f"{block.id} exited {r.returncode}\n{block.code}\n{r.stdout}\n{r.stderr}"
    return r
