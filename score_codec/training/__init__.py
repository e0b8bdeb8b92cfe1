"""Training side: image sources, augmentation and its replay, relabelling, the drop-in dataset, models."""
from .dataset import CompressedSoftLabelDataset, LabelDecoder
from .replay import ReplayBatchSampler
from .relabel import relabel
from .images import load_images

__all__ = ["CompressedSoftLabelDataset", "LabelDecoder", "ReplayBatchSampler", "relabel",
           "load_images"]
