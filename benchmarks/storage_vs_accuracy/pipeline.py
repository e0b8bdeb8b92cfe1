"""The cached steps of the storage-versus-accuracy benchmark: images, teacher, selection, relabel, students.

Each step writes its output under the cache folder and reads it back when present, so a run resumes where it
stopped (per student); :mod:`benchmarks.storage_vs_accuracy.artifact_cache` seeds an empty cache with a committed teacher, selection
and finished students.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from benchmarks.storage_vs_accuracy.artifact_cache import image_hashes, seed_cache, selection_name
from benchmarks.storage_vs_accuracy.claims import StudentClaims, exclusive
from benchmarks.storage_vs_accuracy.label_sources import BatchTable, LabelSource
from benchmarks.storage_vs_accuracy.presets import Config
from benchmarks.storage_vs_accuracy.students import evaluate_fast, train_one

__all__ = ["Pipeline", "read_sre2l", "selection_method"]

log = logging.getLogger("benchmarks.storage_vs_accuracy")


def _atomic_save(obj: Any, path: str) -> None:
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def selection_method(name: str, beta: float) -> Tuple[str, Dict[str, Any]]:
    """(score_select method, its keyword arguments) of a benchmark selection name: ``"score"`` is SCORE with
    the paper's label term (``label_rate="image"``), ``"score-residual"`` SCORE with the store-basis residual
    rate (``label_rate="residual"``, the library's default), ``"score-beta0"`` SCORE with beta = 0
    (``"score-beta<v>"``: the paper's term at beta = v); any other name is that method at the preset's
    ``beta``.  The names are spelled out so that cached selections keep their meaning."""
    if name == "score-residual":
        return "score", dict(beta=beta, label_rate="residual")
    if name.startswith("score-beta"):
        name, beta = "score", float(name[len("score-beta"):])
    return name, dict(beta=beta, label_rate="image") if name == "score" else dict(beta=beta)


def _images(spec: str, size: Optional[int], limit: Optional[int] = None):
    """A TensorImages of ``spec`` (whole images resized to ``size`` when given); classes from the source."""
    from score_codec.training.augment import resized_crop
    from score_codec.training.images import TensorImages, load_images

    ds = load_images(spec)
    if isinstance(ds, TensorImages) and size in (None, ds.images.shape[-1]):
        if limit is not None and limit < len(ds):
            return TensorImages(ds.images[:limit], ds.targets[:limit], ds.classes)
        return ds
    n = len(ds) if limit is None else min(limit, len(ds))
    xs = []
    for i in range(n):
        img = ds[i][0]
        xs.append(resized_crop(img, (0, 0, img.shape[-2], img.shape[-1]), size) if size else img)
    return TensorImages(torch.stack(xs), ds.targets[:n], ds.classes)


class Pipeline:
    """The benchmark's steps over one config; every step reads its cached output when present."""

    def __init__(self, cfg: Config, cache_dir: str, deadline: Optional[float] = None,
                 artifacts: Optional[str] = None) -> None:
        self.cfg, self.dir, self.deadline = cfg, cache_dir, deadline
        self.skipped = 0
        os.makedirs(cache_dir, exist_ok=True)
        self.train = _images(cfg.data, cfg.image_size)
        self.test = _images(cfg.test, cfg.image_size or int(self.train.images.shape[-1]), cfg.test_limit)
        self.C = len(self.train.classes)
        self._hashes: Optional[Dict[str, str]] = None
        if artifacts and os.path.isfile(os.path.join(artifacts, "data.json")) and \
                not os.path.isfile(os.path.join(cache_dir, "teacher.safetensors")):
            seed_cache(cache_dir, artifacts, self.hashes)
        self.after_student: Optional[Callable[[], None]] = None   # called after each trained student
        self.claims = StudentClaims(cache_dir)
        self.elsewhere = 0   # students left to another run that holds their claim
        self.results_path = os.path.join(cache_dir, "students.jsonl")
        self.done: Dict[str, Dict[str, Any]] = {}
        self._read_to = 0
        self._read_done()

    def _read_done(self) -> None:
        """Add the students finished since the last call (another run sharing the cache appends to the same
        file, so a run re-reads it before it trains a student)."""
        if not os.path.isfile(self.results_path):
            return
        with open(self.results_path, "rb") as fh:
            fh.seek(self._read_to)
            data = fh.read()
        end = data.rfind(b"\n") + 1   # a line still being written is read next time
        for line in data[:end].splitlines():
            if line.strip():
                r = json.loads(line)
                self.done.setdefault(r["key"], r)
        self._read_to += end

    @property
    def hashes(self) -> Dict[str, str]:
        """sha256 of the train and test images (computed on first use: only artifacts need it)."""
        if self._hashes is None:
            self._hashes = image_hashes(self.train, self.test)
        return self._hashes

    # -- 2. teacher -----------------------------------------------------------------------------------
    def teacher(self) -> torch.nn.Module:
        from score_codec.training.images import TensorImages
        from score_codec.training.models import ConvNet, ResNet, load_model, save_model
        from score_codec.training.student import train_teacher

        c = self.cfg
        path = os.path.join(self.dir, "teacher.safetensors")
        # a second run sharing the cache waits for the first's teacher: two teachers would label its selections
        # and its dump differently
        with exclusive(path + ".build"):
            if not os.path.isfile(path):
                n = c.teacher_images or len(self.train)
                sub = TensorImages(self.train.images[:n], self.train.targets[:n], self.train.classes)
                ch = int(sub.images.shape[1])
                net = (ConvNet(ch, self.C, width=c.teacher_width, depth=c.teacher_depth, norm=c.teacher_norm)
                       if c.teacher_arch == "convnet" else
                       ResNet(ch, self.C, width=c.teacher_width, blocks=c.teacher_blocks))
                model = train_teacher(sub, net, epochs=c.teacher_epochs, lr=c.teacher_lr, scale=tuple(c.crop_scale))
                save_model(model, path + ".tmp.safetensors")
                os.replace(path + ".tmp.safetensors", path)
        model = load_model(path).eval()
        info = os.path.join(self.dir, "teacher.json")
        if not os.path.isfile(info):
            json.dump({"test_top1": evaluate_fast(model, self.test, int(self.test.images.shape[-1]))}, open(info, "w"))
        self.teacher_top1 = json.load(open(info))["test_top1"]
        log.info("teacher test top-1 %.4f", self.teacher_top1)
        return model

    # -- 3. selection ---------------------------------------------------------------------------------
    def selections(self, teacher) -> Dict[Tuple[str, int], np.ndarray]:
        import score_select
        from score_codec.training.images import TensorImages
        from score_select.features import extract

        path = os.path.join(self.dir, "features.pt")
        wanted = {(m, ipc): os.path.join(self.dir, f"select_{selection_name(m, ipc)}.pt")
                  for m in self.cfg.select_methods for ipc in self.cfg.ipcs}
        if all(os.path.isfile(p) for p in wanted.values()):   # e.g. seeded from artifacts: no features needed
            return {k: torch.load(p).numpy() for k, p in wanted.items()}
        with exclusive(path + ".build"):   # one run at a time extracts the features and selects
            if not os.path.isfile(path):
                g = torch.Generator().manual_seed(0)
                pool = torch.randperm(len(self.train), generator=g)[:self.cfg.pool].sort().values
                sub = TensorImages(self.train.images[pool], self.train.targets[pool.numpy()], self.train.classes)
                feats = extract(teacher, sub, batch_size=256, num_views=self.cfg.select_views, progress=True)
                feats["pool"] = pool
                _atomic_save(feats, path)
            f = torch.load(path)
            for (method, ipc), p in wanted.items():
                if not os.path.isfile(p):
                    soft = f["soft_labels"].float() if method != "rded" else f["logits"]
                    base, kw = selection_method(method, self.cfg.beta)
                    idx, _ = score_select.select(f["features"], f["labels"], ipc, method=base,
                                                 soft_labels=soft, alpha=self.cfg.alpha, seed=0, **kw)
                    _atomic_save(f["pool"][idx].sort().values, p)
        return {k: torch.load(p).numpy() for k, p in wanted.items()}

    # -- 4. relabel -----------------------------------------------------------------------------------
    def past_deadline(self) -> bool:
        """True once the time limit (if any) has passed."""
        return self.deadline is not None and time.time() > self.deadline

    def relabelled(self, key: str, epochs: int) -> bool:
        """Whether :meth:`relabel` of ``key`` at K = ``epochs`` is cached."""
        return os.path.isfile(os.path.join(self.dir, "relabel", f"{key}_K{epochs}", "Y.pt"))

    def relabel(self, teacher, key: str, idx: np.ndarray, epochs: int) -> Tuple[str, torch.Tensor, BatchTable]:
        """(reference store path, Y (N, K, C) float32 from the SRe2L dump, batch table); K = ``epochs``."""
        from score_codec import LabelStore
        from score_codec.training.images import TensorImages
        from score_codec.training.relabel import relabel

        d = os.path.join(self.dir, "relabel", f"{key}_K{epochs}")
        ypath = os.path.join(d, "Y.pt")
        store = os.path.join(d, "meta.store")
        if not self.relabelled(key, epochs):
            # another run sharing the cache may be relabelling the same selection: wait for it, then reuse
            # its dump instead of deleting it half-written
            with exclusive(d + ".build"):
                if not self.relabelled(key, epochs):
                    shutil.rmtree(d, ignore_errors=True)
                    os.makedirs(d)
                    ds = TensorImages(self.train.images[idx], self.train.targets[idx], self.train.classes)
                    relabel(ds, teacher, store, epochs, batch_size=self.cfg.batch_size, method="svd", rank=1,
                            seed=0, scale=tuple(self.cfg.crop_scale), raw_dump=os.path.join(d, "sre2l"),
                            progress=True)
                    _atomic_save(read_sre2l(os.path.join(d, "sre2l"), LabelStore(store)).half(), ypath)
        meta = LabelStore(store).aug
        return store, torch.load(ypath).float(), BatchTable(meta.batches, meta.rows)

    # -- 6. students ----------------------------------------------------------------------------------
    def _key(self, key: str, seed: int, c: Config, label_epochs: int, curve: bool) -> str:
        """The cache key of one student.  It names the schedule that runs: no epochs or steps given means
        one pass per label epoch, the same student as train_epochs = K (so presets that differ only in how
        they say it share students); keys written before that spelled it "eNone" and are still read."""
        epochs = c.train_epochs or (None if c.train_steps else label_epochs)
        spelled = [(f"{key}|T{c.T:g}|lr{c.lr:g}|w{c.student_width}d{c.student_depth}{c.student_norm[0]}|e{e}"
                    f"|s{c.train_steps}|bf{int(c.bf16)}|seed{seed}" + ("|curve" if curve else ""))
                   for e in dict.fromkeys((epochs, c.train_epochs))]
        return next((s for s in spelled if s in self.done), spelled[0])

    def missing(self, key: str, table: BatchTable, seeds, cfg: Optional[Config] = None, curve: bool = False) -> List[int]:
        """The seeds of ``key`` with no finished student in the cache."""
        c = cfg or self.cfg
        self._read_done()
        return [s for s in seeds if self._key(key, s, c, table.epochs, curve) not in self.done]

    def wait_for(self, key: str, table: BatchTable, seeds, cfg: Optional[Config] = None, poll: float = 10.0) -> None:
        """Wait until no other run sharing the cache is training a student of ``key`` for ``seeds``."""
        c = cfg or self.cfg
        for seed in seeds:
            k = self._key(key, seed, c, table.epochs, False)
            if k in self.done:
                continue
            self.claims.wait(k, poll)
        self._read_done()

    def students(self, key: str, source: Union[LabelSource, Callable[[], LabelSource]], views, table: BatchTable,
                 seeds, curve: bool = False, cfg: Optional[Config] = None, optional: bool = False,
                 train: bool = True) -> Dict[str, Any]:
        """Top-1 per seed (cached per student) and, with ``curve``, the first seed's convergence curve.

        ``source`` may be a callable that builds it (called only when a student trains).  ``cfg`` overrides
        the pipeline's config (another schedule); ``optional`` students are not started after the
        pipeline's deadline (their seeds are left out of the result and counted in ``skipped``); with
        ``train=False`` only cached students are reported."""
        c = cfg or self.cfg
        accs, curves = [], []
        for seed in seeds:
            k = self._key(key, seed, c, table.epochs, curve)
            if k not in self.done:
                self._read_done()
                k = self._key(key, seed, c, table.epochs, curve)
            if k not in self.done and (not train or (optional and self.past_deadline())):
                self.skipped += train
                continue
            if k not in self.done:
                if not self.claims.claim(k):   # another run sharing the cache trains it now
                    log.info("%s seed %d: trained by %s; left to it", key, seed, self.claims.holder(k))
                    self.elsewhere += 1
                    continue
                try:
                    self._read_done()   # it may have finished between our look and our claim
                    if k in self.done:
                        accs.append(self.done[k]["top1"])
                        curves.append(self.done[k].get("curve") or [])
                        continue
                    if callable(source) and not isinstance(source, LabelSource):
                        source = source()
                        if source is None:   # cached metrics said buildable, the build says n/a: report, do not train
                            log.warning("%s: no label source (the variant is n/a now): student not trained", key)
                            break
                    t0 = time.time()
                    res = train_one(source, table, views, c, seed, self.test, self.C,
                                    eval_fractions=c.curve if curve else ())
                    res.update(key=k, seconds=round(time.time() - t0, 1))
                    with open(self.results_path, "a") as fh:
                        fh.write(json.dumps(res) + "\n")
                    self.done[k] = res
                finally:
                    self.claims.release(k)
                if self.after_student is not None:
                    try:
                        self.after_student()
                    except Exception as exc:   # the student is in students.jsonl already: keep going
                        log.warning("after-student hook failed: %s: %s", type(exc).__name__, exc)
            accs.append(self.done[k]["top1"])
            curves.append(self.done[k].get("curve") or [])
        return dict(top1=accs, curve=curves[0] if curves else [])


def read_sre2l(raw_dir: str, store) -> torch.Tensor:
    """Logits (N, K, C) float32 from an SRe2L dump written by relabel (its fp16 values), placed by the
    store's row metadata (image ids of each stored batch position)."""
    meta = store.aug
    n, k = len(store), int(meta.rows["epoch"].max()) + 1
    Y = None
    for rec in meta.batches:
        e, b, s, m = int(rec["epoch"]), int(rec["batch"]), int(rec["row_start"]), int(rec["size"])
        logits = torch.load(os.path.join(raw_dir, f"epoch_{e}", f"batch_{b}.tar"), weights_only=False)[5]
        if Y is None:
            Y = torch.empty(n, k, logits.shape[1])
        Y[torch.as_tensor(meta.rows["image"][s:s + m].astype(np.int64)), e] = logits.float()
    return Y
