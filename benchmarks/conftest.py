"""Shared pieces of the benchmark suite: devices (CUDA skipped visibly) and a synchronising timer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA is not available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def synchronised(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """Return ``fn`` followed by a device synchronisation, so the timer sees the GPU's work too."""
    if device != "cuda":
        return fn

    def timed() -> Any:
        out = fn()
        torch.cuda.synchronize()
        return out

    return timed
