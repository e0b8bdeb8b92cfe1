"""Training side: image sources, augmentation and its replay, relabelling, the drop-in dataset, models."""
from .dataset import CompressedSoftLabelDataset, LabelDecoder
from .replay import ReplayBatchSampler
from .relabel import relabel
from .images import load_images
from .teachers import load_teacher

__all__ = ["CompressedSoftLabelDataset", "LabelDecoder", "ReplayBatchSampler", "relabel",
           "load_images", "load_teacher"]
