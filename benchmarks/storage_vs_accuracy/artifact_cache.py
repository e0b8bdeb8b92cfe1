"""Committed artifacts of a long benchmark preset, so that another machine resumes it instead of starting over.

``benchmarks/storage_vs_accuracy/artifacts/<cache>/`` holds what is small and expensive to recompute (the
teacher, the selections, the finished students; together a few MB):

- ``data.json``: sha256 of the training and test images the teacher saw (uint8 bytes, as loaded);
- ``teacher.safetensors``, ``teacher.json`` (its test top-1), ``select_<method>_ipc<N>.pt`` (image ids);
- ``students.jsonl``: one finished student per line, keyed like the step cache;
- ``metrics_<selection>.json``: each label variant's storage and fidelity metrics
  (:mod:`benchmarks.storage_vs_accuracy.variant_metrics`), so finished variants are reported without encoding them again;
- ``encodes_<selection>.json``: the library default's allocation at each ratio (its ``<store>.encode.json``
  files, keyed by store name), so a selection whose students are all finished is reported without its relabel.

A cache without a teacher is seeded from these when both image hashes match; otherwise a warning names the
expected and found hashes and nothing is copied.  The relabel dump and the label variants are recomputed from
the teacher (the same views and logits up to float rounding), and students already listed are not trained
again.  ``--save-artifacts`` writes the folder at the end of a run.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
from typing import Dict, List

import numpy as np

from benchmarks.storage_vs_accuracy.claims import exclusive

__all__ = ["ENCODE_INFO", "image_hashes", "seed_cache", "save_artifacts", "selection_name", "variants_dir"]

log = logging.getLogger(__name__)
_FILES = ("teacher.safetensors", "teacher.json")
_STUDENTS = "students.jsonl"
ENCODE_INFO = ".encode.json"   # suffix of the library default's allocation file beside its store


def selection_name(method: str, ipc: int) -> str:
    """The name of one selection in the step cache and the artifacts: ``<method>_ipc<N>`` (its relabel, its
    variants folder, its ``select_<name>.pt``, ``metrics_<name>.json`` and ``encodes_<name>.json``)."""
    return f"{method}_ipc{ipc}"


def variants_dir(cache_dir: str, selection: str) -> str:
    """The step cache's folder of one selection's label variants (``selection``: :func:`selection_name`)."""
    return os.path.join(cache_dir, "variants", selection)


def image_hashes(train, test) -> Dict[str, str]:
    """sha256 (hex) of the train and test images' bytes (TensorImages: ``.images`` tensors)."""
    return {name: hashlib.sha256(np.ascontiguousarray(ds.images.numpy()).tobytes()).hexdigest()
            for name, ds in (("train", train), ("test", test))}


def _students(path: str) -> List[str]:
    """Lines of a students.jsonl, the first of each key kept."""
    out, seen = [], set()
    if os.path.isfile(path):
        for line in open(path):
            if line.strip() and (k := json.loads(line)["key"]) not in seen:
                seen.add(k)
                out.append(line if line.endswith("\n") else line + "\n")
    return out


def _merged_students(first: str, second: str) -> List[str]:
    """Lines of students.jsonl ``first``, then those of ``second`` whose key ``first`` lacks."""
    lines = _students(first)
    keys = {json.loads(line)["key"] for line in lines}
    return lines + [line for line in _students(second) if json.loads(line)["key"] not in keys]


def _copy_models(src: str, dst: str) -> None:
    """Copy the teacher files and every stored selection from folder ``src`` to folder ``dst``."""
    for path in [os.path.join(src, f) for f in _FILES] + sorted(glob.glob(os.path.join(src, "select_*.pt"))):
        shutil.copyfile(path, os.path.join(dst, os.path.basename(path)))


def _merge_metrics(src: str, dst: str, prefer_src: bool = False) -> None:
    """Add ``src``'s variant metrics (JSON dicts keyed by variant id) to ``dst``'s; where both have a variant,
    ``dst``'s entry is kept (``prefer_src``: ``src``'s)."""
    with open(src) as fh:
        _merge_dict(json.load(fh), dst, prefer_src)


def _merge_dict(add: Dict, dst: str, prefer_src: bool = False) -> None:
    """Add the entries of ``add`` to JSON dict file ``dst`` (created if missing); where both have a key,
    ``dst``'s entry is kept (``prefer_src``: ``add``'s)."""
    have = {}
    if os.path.isfile(dst):
        with open(dst) as fh:
            have = json.load(fh)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "w") as fh:
        json.dump({**have, **add} if prefer_src else {**add, **have}, fh, indent=1, sort_keys=True)


def seed_cache(cache_dir: str, art_dir: str, hashes: Dict[str, str]) -> bool:
    """Copy ``art_dir``'s teacher, selections and students into ``cache_dir`` (which has no teacher yet).

    Returns True when seeded; False (with a warning) when the artifacts were made from other images."""
    with open(os.path.join(art_dir, "data.json")) as fh:
        want = json.load(fh)
    if want != hashes:
        log.warning("artifacts %s were made from other images (expected sha256 %s, found %s): not used; "
                    "the teacher and selection are computed again", art_dir, want, hashes)
        return False
    os.makedirs(cache_dir, exist_ok=True)
    _copy_models(art_dir, cache_dir)
    lines = _merged_students(os.path.join(art_dir, _STUDENTS), os.path.join(cache_dir, _STUDENTS))
    with open(os.path.join(cache_dir, _STUDENTS), "w") as fh:
        fh.writelines(lines)
    for path in glob.glob(os.path.join(art_dir, "metrics_*.json")):
        sel = os.path.basename(path)[len("metrics_"):-len(".json")]
        _merge_metrics(path, os.path.join(variants_dir(cache_dir, sel), "metrics.json"))
    for path in glob.glob(os.path.join(art_dir, "encodes_*.json")):
        sel = os.path.basename(path)[len("encodes_"):-len(".json")]
        with open(path) as fh:
            for store, stats in json.load(fh).items():
                info = os.path.join(variants_dir(cache_dir, sel), store + ENCODE_INFO)
                if not os.path.isfile(info):
                    os.makedirs(os.path.dirname(info), exist_ok=True)
                    with open(info, "w") as out:
                        json.dump(stats, out)
    log.info("cache %s seeded from %s: teacher, selections; %d finished students", cache_dir, art_dir, len(lines))
    return True


def save_artifacts(cache_dir: str, art_dir: str, hashes: Dict[str, str]) -> None:
    """Write ``cache_dir``'s teacher and selections to ``art_dir``, and its finished students, variant
    metrics and library encodes' allocations merged with those already there.  Runs saving to the same
    ``art_dir`` at once take turns (``<art_dir>.save.lock``)."""
    # runs sharing a cache save after each of their students: one at a time, or one's rmtree of the
    # shared temporary folder (or of the artifacts) lands in the middle of another's write
    base = art_dir.rstrip("/")
    with exclusive(base + ".save"):
        tmp = base + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        _copy_models(cache_dir, tmp)
        # merged with what is committed, never replacing it: a cache that was not seeded from these artifacts
        # (it had a teacher already) must not drop the students and metrics other machines saved
        lines = _merged_students(os.path.join(cache_dir, _STUDENTS), os.path.join(art_dir, _STUDENTS))
        with open(os.path.join(tmp, _STUDENTS), "w") as fh:
            fh.writelines(lines)
        for path in glob.glob(os.path.join(art_dir, "metrics_*.json")):
            _merge_metrics(path, os.path.join(tmp, os.path.basename(path)))
        for path in glob.glob(os.path.join(variants_dir(cache_dir, "*"), "metrics.json")):
            sel = os.path.basename(os.path.dirname(path))
            _merge_metrics(path, os.path.join(tmp, f"metrics_{sel}.json"), prefer_src=True)
        for path in glob.glob(os.path.join(art_dir, "encodes_*.json")):
            _merge_metrics(path, os.path.join(tmp, os.path.basename(path)))
        for sel_dir in sorted(glob.glob(variants_dir(cache_dir, "*"))):
            found = {}
            for info in sorted(glob.glob(os.path.join(sel_dir, "*" + ENCODE_INFO))):
                with open(info) as fh:
                    found[os.path.basename(info)[:-len(ENCODE_INFO)]] = json.load(fh)
            if found:
                _merge_dict(found, os.path.join(tmp, f"encodes_{os.path.basename(sel_dir)}.json"), prefer_src=True)
        with open(os.path.join(tmp, "data.json"), "w") as fh:
            json.dump(hashes, fh, indent=1)
        shutil.rmtree(art_dir, ignore_errors=True)
        os.replace(tmp, art_dir)
    log.info("artifacts written to %s", art_dir)
