"""fastresize: multi-scale training for PyTorch, with max-size-first and a GPU batch resize."""

from fastresize.counter import StepCounter
from fastresize.loader import ResizeCollate, ResizeLoader, wrap
from fastresize.memory import MemoryProfiler
from fastresize.policy import MultiScalePolicy
from fastresize.scheduler import CosineAnnealingWarmbootingLR
from fastresize.transform import BatchResize, ResizedBatch

__all__ = [
    "BatchResize",
    "CosineAnnealingWarmbootingLR",
    "MemoryProfiler",
    "MultiScalePolicy",
    "ResizeCollate",
    "ResizeLoader",
    "ResizedBatch",
    "StepCounter",
    "wrap",
]
__version__ = "0.1.0"
