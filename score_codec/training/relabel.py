"""``score-codec relabel``: run a teacher over augmented epochs and write a compressed label store.

The pipeline is SRe2L's relabel step in plain torch:
for each epoch, a seeded ``RandomSampler`` / ``BatchSampler(drop_last=False)`` order; per image a
RandomResizedCrop box (:func:`~score_codec.training.augment.sample_crop`) and a flip with p = 0.5; per batch one
CutMix (lam ~ Beta(1, 1)) or Mixup (lam ~ Beta(0.8, 0.8)); then the teacher's fp32 logits of the mixed
batch.  Every draw is seeded, so the same arguments give the same store.

Memory: the raw dump is never held.  Rows go to an fp16 ``np.memmap`` scratch file (N, K, C) next to
the destination, which is encoded in chunks of images through :class:`~score_codec.StoreWriter` and
then deleted.  The augmentation parameters go into the store's :class:`~score_codec.AugMeta`.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from ..progress import progress_bar

from .augment import MIX_NAMES, apply_mix, crop_coords, cutmix_box, hflip, mix_type_id, resized_crop, sample_crop
from .images import load_images
from .inference import fast_inference_model
from ..errors import InputError
from ..store.options import CodecOptions
from ..store.meta import BATCH_DTYPE, IMAGE_DTYPE, MIX_CUTMIX, MIX_MIXUP, ROW_DTYPE, AugMeta
from ..codecs.global_basis import FitSource
from ..store.allocate import KeptViews, allocate, finish, probe_from_matrices, prune_meta, record_sample, store_kl
from .normalize import check_channels, normalization_attrs, normalize_views, resolve_normalization
from .teachers import load_teacher
from ..store.distributed import encode_distributed, rank_and_world
from ..store.reader import LabelStore
from ..store.writer import StoreWriter

__all__ = ["relabel", "MIX_ALPHA"]

log = logging.getLogger(__name__)

#: Beta(alpha, alpha) of lam per mix type (SRe2L's generate_soft_label defaults).
MIX_ALPHA = {MIX_CUTMIX: 1.0, MIX_MIXUP: 0.8}
#: Scratch rows decoded per StoreWriter.add call (bytes of float32), bounding encode memory.
CHUNK_BYTES = 64 << 20


def _teacher_batch(ds, idx: Sequence[int], size: int, scale: Tuple[float, float], mix: int,
                   gen: torch.Generator, lam_rng: np.random.Generator):
    """Views and augmentation parameters of one batch: (mixed x (B,C,S,S), coords (B,4) f32,
    flip (B,) bool, perm (B,) int64 or None, lam float or None, bbox tuple or None, sizes (B,2), classes)."""
    views, coords, flips, sizes, classes = [], [], [], [], []
    for i in idx:
        img, cls = ds[int(i)]
        img = torch.as_tensor(img)
        H, W = img.shape[-2:]
        box = sample_crop(H, W, scale=scale, generator=gen)
        flip = bool(torch.rand(1, generator=gen).item() < 0.5)
        # replay from the float32 coords (not the int box) so training sees exactly this crop
        c = crop_coords(box, H, W)
        v = resized_crop(img, c, size)
        views.append(hflip(v) if flip else v)
        coords.append(c)
        flips.append(flip)
        sizes.append((H, W))
        classes.append(int(cls))
    x = torch.stack(views)
    perm = lam = bbox = None
    if mix in MIX_ALPHA:
        a = MIX_ALPHA[mix]
        lam = float(lam_rng.beta(a, a))
        perm = torch.randperm(len(idx), generator=gen)
        bbox = cutmix_box(size, lam, gen) if mix == MIX_CUTMIX else None
        x = apply_mix(x, mix, perm, lam, bbox)
    return x, torch.stack(coords), torch.tensor(flips), perm, lam, bbox, sizes, classes


def _save_raw(raw_dir: str, e: int, b: int, coords, flip, perm, lam, bbox, logits: torch.Tensor, fp16: bool) -> None:
    """One SRe2L ``epoch_{e}/batch_{b}.tar`` file (a torch.save'd 6-item list)."""
    d = os.path.join(raw_dir, f"epoch_{e}")
    os.makedirs(d, exist_ok=True)
    box = None if bbox is None else [np.int64(v) for v in bbox]
    torch.save([coords, flip, perm, lam, box, logits.half() if fp16 else logits.float()],
               os.path.join(d, f"batch_{b}.tar"))


class _ScratchImages:
    """The scratch (N, K, C) fp16 memmap as a sequence of float32 (K, C) tensors, read on access."""

    def __init__(self, scratch: np.ndarray) -> None:
        self.scratch = scratch

    def __len__(self) -> int:
        return self.scratch.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.scratch[i], dtype=np.float32))


def relabel(images: Union[str, Any], model: Union[str, torch.nn.Module], dst: str, epochs: int,
            options: Optional[CodecOptions] = None, *, mix: str = "cutmix", batch_size: int = 64, seed: int = 42,
            input_size: Optional[int] = None, scale: Tuple[float, float] = (0.08, 1.0),
            raw_dump: Optional[str] = None, raw_fp16: bool = True, overwrite: bool = False, progress: bool = True,
            head: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None, fast_teacher: bool = True,
            weights: Optional[str] = None, num_classes: Optional[int] = None, normalize: Any = None,
            mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
            **codec: Any) -> Dict[str, Any]:
    """Relabel ``images`` with ``model`` over ``epochs`` augmented epochs into the store ``dst``.

    Args:
        images: an image source spec (see :func:`score_codec.training.images.load_images`) or a dataset of
            (float CHW tensor in [0, 1], class).
        model: a teacher spec (``"torchvision:resnet18"``, ``"timm:NAME"``, a save_model file,
            ``"package.module:factory"``; see :func:`score_codec.training.teachers.load_teacher`) or module;
            run in eval mode, fp32, without gradients.
        epochs: label rows per image (K).
        mix: "cutmix", "mixup" or "none"; one mix per batch.
        batch_size: teacher batch size; mixing happens within a batch, so training replays this size.
        input_size: side of the square views (default: the first image's height).
        raw_dump: also write an SRe2L-format dump there (logits fp16 unless ``raw_fp16=False``).
        options: how the labels are coded (:class:`~score_codec.store.options.CodecOptions`); its fields may
            also be given as keywords (``method="global", ratio=30, quant="int8"``).  ``device`` is also where
            the teacher runs.
        seed: seed of the sampler (as SRe2L seeds it) and, plus one, of every augmentation draw.
        scale: area range of RandomResizedCrop.
        raw_fp16: store the raw dump's logits as fp16 (SRe2L's choice) rather than fp32.
        overwrite: replace an existing store at ``dst``.
        progress: a tqdm bar on stderr.
        head: ``(W, b)`` of a linear layer to use as the basis of ``method="global"`` (e.g.
            :func:`~score_codec.training.models.classifier_of` of the teacher); store-scope codecs otherwise
            fit their bases on all the relabelled rows before encoding.
        fast_teacher: run a :func:`~score_codec.training.inference.fast_inference_model` copy of the
            teacher (batch norm folded into its convolutions, channels-last; faster, the same logits
            up to float32 rounding, checked on the first image); False runs the module as given.
        weights: a state dict or checkpoint file loaded into the teacher
            (:func:`~score_codec.training.teachers.load_teacher`).
        num_classes: logits of a teacher named by spec (None: inferred from ``weights``, else the library's
            default).
        normalize, mean, std: per-channel input normalisation ``(view - mean) / std`` applied to every
            teacher input after crop, flip and mix: ``"imagenet"``, ``(mean, std)``, or ``mean=`` / ``std=``
            lists (see :func:`~score_codec.training.normalize.resolve_normalization`).  Recorded in the
            store's augmentation metadata (``attrs["normalize"]``) so that
            :class:`~score_codec.training.dataset.CompressedSoftLabelDataset` replays the same tensors.

    Pooling (``ratio`` with the global codec, or ``keep_epochs``; see :mod:`score_codec.store.allocate`): the
    teacher runs for every epoch (the scratch file holds them all) and the allocation, measured on those rows,
    decides which epochs the store keeps; the others are dropped at encode.  A distributed run never pools.

    Under ``torchrun`` (WORLD_SIZE > 1) the ranks split the teacher's batches round-robin, write their
    logits into one scratch file beside ``dst`` (a shared file system for several nodes) and encode
    through :func:`score_codec.store.distributed.encode_distributed`; the store equals a one-process run.
    Returns the store's ``stats()`` dict.
    """
    opts = CodecOptions.build(options, **codec)
    device = opts.device
    if opts.target_bytes is not None:
        raise InputError("relabel takes ratio=, not target_bytes= (the row count is epochs x images)")
    ds = load_images(images) if isinstance(images, (str, os.PathLike)) else images
    norm = resolve_normalization(normalize, mean, std)
    teacher = load_teacher(model, weights=weights, num_classes=num_classes, device=device)
    n = len(ds)
    if n == 0 or epochs < 1 or batch_size < 1:
        raise InputError(f"relabel needs images, epochs >= 1 and batch_size >= 1; found {n} images, "
                         f"epochs={epochs}, batch_size={batch_size}")
    kind = mix_type_id(mix)
    first = torch.as_tensor(ds[0][0])   # read once: the size, the fast-teacher probe, the class count
    size = int(input_size) if input_size else int(first.shape[-2])
    check_channels(norm, int(first.shape[0]), f"relabel of {images if isinstance(images, (str, os.PathLike)) else 'the images'}")
    probe = normalize_views(first[None, :, :size, :size].float(), norm).to(device)
    if fast_teacher:   # checked against the module on the first image; the module itself if they differ
        teacher = fast_inference_model(teacher, probe)
    parent = os.path.dirname(os.path.abspath(dst))
    if os.path.exists(dst) and not overwrite:
        raise InputError(f"{dst}: destination exists (pass overwrite=True to replace it)")
    if not os.path.isdir(parent):
        raise InputError(f"{dst}: parent directory {parent} does not exist")

    order_gen = torch.Generator().manual_seed(seed)     # the sampler, as SRe2L seeds it
    aug_gen = torch.Generator().manual_seed(seed + 1)   # crops, flips, permutations, boxes
    lam_rng = np.random.default_rng(seed)
    sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(range(n), generator=order_gen),
                                            batch_size, drop_last=False)
    nb = len(sampler)
    rank_id, world = rank_and_world()
    if world > 1 and opts.keep_epochs is not None:
        raise InputError("keep_epochs is not available under torchrun: a distributed relabel codes every epoch")
    if world > 1:
        # every rank draws every batch's augmentation (the RNG streams stay in step) but runs the teacher
        # only on its own batches, writing into one scratch file on the shared file system
        scratch_path = f"{dst}.relabel-scratch.f16"
        with torch.no_grad():
            c_out = int(teacher(probe).shape[1])
        if rank_id == 0:
            np.memmap(scratch_path, dtype=np.float16, mode="w+", shape=(n, epochs, c_out)).flush()
        torch.distributed.barrier()
        scratch = np.memmap(scratch_path, dtype=np.float16, mode="r+", shape=(n, epochs, c_out))
    else:
        fd, scratch_path = tempfile.mkstemp(prefix=".relabel-", suffix=".f16", dir=parent)
        os.close(fd)
        scratch = None
    rows: List[np.ndarray] = []
    batches = np.zeros(epochs * nb, BATCH_DTYPE)
    images = np.zeros(n, IMAGE_DTYPE)
    try:
        bar = progress_bar(total=epochs * nb, desc="relabel", unit="batch", enabled=progress)
        row_start = 0
        with torch.no_grad():
            for e in range(epochs):
                for b, idx in enumerate(sampler):
                    x, coords, flip, perm, lam, bbox, sizes, classes = _teacher_batch(
                        ds, idx, size, scale, kind, aug_gen, lam_rng)
                    mine = (e * nb + b) % world == rank_id
                    if mine:
                        logits = teacher(normalize_views(x.float(), norm).to(device)).float().cpu()
                        if scratch is None:
                            scratch = np.memmap(scratch_path, dtype=np.float16, mode="w+", shape=(n, epochs, logits.shape[1]))
                        scratch[np.asarray(idx), e] = logits.numpy().astype(np.float16)
                    r = np.zeros(len(idx), ROW_DTYPE)
                    r["image"], r["aug"], r["epoch"], r["batch"] = idx, e, e, b
                    r["pos"], r["coords"], r["flip"] = np.arange(len(idx)), coords.numpy(), flip.numpy()
                    r["mix_index"] = -1 if perm is None else perm.numpy()
                    rows.append(r)
                    batches[e * nb + b] = (e, b, row_start, len(idx), kind, np.nan if lam is None else lam,
                                           (-1, -1, -1, -1) if bbox is None else bbox)
                    row_start += len(idx)
                    images["height"][idx] = [s[0] for s in sizes]
                    images["width"][idx] = [s[1] for s in sizes]
                    images["label"][idx] = classes
                    if raw_dump and mine:
                        _save_raw(raw_dump, e, b, coords, flip, perm, lam, bbox, logits, raw_fp16)
                    bar.update(1)
        bar.close()
        scratch.flush()
        attrs = dict(input_size=size, mix=[k for k, v in MIX_NAMES.items() if v == kind][0], seed=int(seed),
                     batch_size=int(batch_size), epochs=int(epochs), scale=list(scale), torch=torch.__version__,
                     source="score-codec relabel", **normalization_attrs(norm))
        meta = AugMeta(rows=np.concatenate(rows), batches=batches, images=images, attrs=attrs)
        c = scratch.shape[2]
        chunk = max(1, CHUNK_BYTES // (epochs * c * 4))
        if world > 1:
            torch.distributed.barrier()  # every rank's logits are in the scratch file
            encode_distributed(_ScratchImages(scratch), dst, opts, labels=images["label"].tolist(), meta=meta,
                               overwrite=overwrite, chunk_images=chunk, head=head)
            return LabelStore(dst).stats()
        src = _ScratchImages(scratch)
        values = np.arange(epochs, dtype=np.int64)   # relabel's views are its epochs
        alloc = allocate(opts, num_classes=c, num_images=n, source_epochs=epochs,
                         fit_source=lambda: FitSource(src, images["label"].tolist(), [epochs] * n),
                         probe=lambda: probe_from_matrices(src), head=head, device=device,
                         records=lambda kept: record_sample(src, kept))
        kept = alloc.kept if alloc.pooled else None
        if kept is not None:
            meta = prune_meta(meta, kept, values)
            log.info("pooling: keeping %d of %d epochs at an inner ratio of %.1fx", len(kept), epochs, alloc.inner_ratio)
        inner = alloc.writer_options(opts)
        with StoreWriter(dst, c, inner, overwrite=overwrite) as w:
            if opts.ratio is not None or opts.keep_epochs is not None:
                w.set_pool(epochs, values[alloc.kept].tolist(), alloc.record())
            if w.codec.scope == "store":
                if alloc.bases is not None:
                    w.set_bases(alloc.bases)
                else:
                    w.fit(KeptViews(src, kept), images["label"].tolist(), ks=[len(alloc.kept)] * n, head=head)
            for s in range(0, n, chunk):
                block = np.asarray(scratch[s:s + chunk], dtype=np.float32)
                w.add(torch.from_numpy(block if kept is None else block[:, kept]),
                      labels=images["label"][s:s + chunk].tolist())
            w.set_meta(meta)
        kl = None
        if (opts.ratio is not None or opts.keep_epochs is not None) and alloc.kl_t1 is None:
            kl = store_kl(LabelStore(dst), src, kept)   # measured here: the scratch file goes next
    finally:
        del scratch
        if world == 1 or rank_id == 0:
            try:
                os.remove(scratch_path)
            except FileNotFoundError:
                pass
    stats = finish(LabelStore(dst).stats(), opts, alloc, None if kl is None else lambda: kl)
    r = float(stats.get("ratio", float("nan")))
    log.info("relabelled %d images x %d epochs into %s (%s fp16 logits)", n, epochs, dst,
             f"{r:.1f}x smaller than" if r >= 1 else f"{1 / r:.2f}x larger than")
    return stats
