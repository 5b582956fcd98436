"""fastresize: multi-scale training for PyTorch, with max-size-first and a GPU batch resize."""

from fastresize import functional
from fastresize._batch import BatchFormat
from fastresize.collate import ResizeCollate
from fastresize.counter import StepCounter
from fastresize.crop import CropPolicy
from fastresize.finder import MaxSize, find_max_size
from fastresize.folder import ImageFolder
from fastresize.loader import ResizeLoader, wrap
from fastresize.memory import MemoryProfiler
from fastresize.policy import MultiScalePolicy, SizePolicy
from fastresize.prefetch import DevicePrefetcher
from fastresize.ragged import RaggedImages
from fastresize.scheduler import CosineAnnealingWarmbootingLR
from fastresize.transform import BatchResize, ResizedBatch

__all__ = [
    "BatchFormat",
    "BatchResize",
    "CosineAnnealingWarmbootingLR",
    "CropPolicy",
    "DevicePrefetcher",
    "ImageFolder",
    "MaxSize",
    "MemoryProfiler",
    "MultiScalePolicy",
    "RaggedImages",
    "ResizeCollate",
    "ResizeLoader",
    "ResizedBatch",
    "SizePolicy",
    "StepCounter",
    "find_max_size",
    "functional",
    "wrap",
]
__version__ = "0.3.0"
