"""Shared pieces of the benchmark suite: the test suite's devices and CUDA skip, and a synchronising timer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tests.conftest import DEVICES, pytest_collection_modifyitems

__all__ = ["DEVICES", "pytest_collection_modifyitems", "synchronised"]


def synchronised(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """Return ``fn`` followed by a device synchronisation, so the timer sees the GPU's work too."""
    if device != "cuda":
        return fn

    def timed() -> Any:
        out = fn()
        torch.cuda.synchronize()
        return out

    return timed
