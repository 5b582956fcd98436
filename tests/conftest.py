"""Shared fixtures and tables: devices, the CUDA skip, Triton's interpreter, bad inputs, the state round trip.

Without CUDA, the kernel runs in Triton's interpreter on CPU tensors. Triton picks the interpreter
once, when it is first imported, so ``pytest_configure`` sets ``TRITON_INTERPRET=1`` before any test
module can import it, whatever the collection order. There it also sets
``FASTRESIZE_KERNEL_CHECK=0``: the kernel's self-check costs about half a second per configuration
in the interpreter, and the tests of the check turn it back on.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")


def pytest_configure(config: pytest.Config) -> None:
    if HAS_TRITON and not torch.cuda.is_available() and "triton" not in sys.modules:
        # Left set: Triton reads it again later (lazy imports). Without CUDA nothing else runs Triton.
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ.setdefault("FASTRESIZE_KERNEL_CHECK", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA is not available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def interpret() -> None:
    """Skip unless the kernel runs in Triton's interpreter (on a CUDA machine the cuda tests check it)."""
    if not HAS_TRITON:
        pytest.skip("Triton is not installed")
    if not importlib.import_module("fastresize._kernel").INTERPRETED:
        pytest.skip("Triton was imported without TRITON_INTERPRET=1 (a CUDA machine): the cuda tests check the kernel")


def make_images(shape: tuple[int, ...], dtype: torch.dtype, device: Any = "cpu", seed: int = 0, layout: str = "NCHW"):
    """A seeded NCHW-shaped batch: uint8 in 0..255 or float in [0, 1); ``layout="NHWC"`` gives it channels last."""
    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    else:
        x = torch.rand((n, c, h, w), generator=g).to(dtype)
    if layout == "NHWC":
        x = x.permute(0, 2, 3, 1).contiguous()
    return x.to(device)


# Bad images and settings, and the error each raises: the same for functional.resize(images, **kwargs)
# and for BatchResize(**kwargs)(images); size defaults to 16.
BAD_INPUT = [
    ([[1.0]], {}, TypeError, r"images must be a torch.Tensor, got list"),
    (torch.rand(3, 16, 16), {}, ValueError, r"images must be a 4-D batch \(B, C, H, W\), got a 3-D shape"),
    (torch.rand(2, 4, 3, 8, 8), {}, ValueError, r"got a 5-D shape .* fold the extra dimension into the batch"),
    (torch.rand(8, 64, 48, 3), {}, ValueError, r"look like NHWC .* Pass layout='NHWC'"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.int32), {}, TypeError, r"images must have a dtype in .* torch.int32"),
    (torch.rand(1, 3, 0, 8), {}, ValueError, r"images must be at least 1 pixel high and wide, got shape \(1, 3, 0"),
    (torch.rand(1, 3, 8, 8), {"size": (8, 8, 8)}, ValueError, r"size must be an int or a \(height, width\) pair"),
    (torch.rand(1, 3, 8, 8), {"size": 0}, ValueError, r"size must be an int >= 1, got 0"),
    (torch.rand(1, 3, 8, 8), {"size": 32.0}, TypeError, r"size must be an int, got 32.0"),
    (torch.rand(1, 3, 8, 8), {"interpolation": "area"}, ValueError, r"interpolation must be one of .* got 'area'"),
    (torch.rand(1, 3, 8, 8), {"backend": "cuda"}, ValueError, r"backend must be one of .* got 'cuda'"),
    (torch.rand(1, 3, 8, 8), {"antialias": 1}, TypeError, r"antialias must be a bool, got 1"),
    (
        torch.rand(1, 3, 8, 8),
        {"antialias": True, "interpolation": "nearest"},
        ValueError,
        r"antialias=True needs interpolation='bicubic' or 'bilinear'",
    ),
    (torch.rand(1, 3, 8, 8), {"dtype": torch.int32}, TypeError, r"dtype must be one of .* got torch.int32"),
    (torch.rand(1, 3, 8, 8), {"value_range": (1, 0)}, ValueError, r"value_range must have low < high, got \(1, 0\)"),
    (torch.rand(1, 3, 8, 8), {"value_range": 1}, ValueError, r"value_range must be a \(low, high\) pair"),
    (torch.rand(1, 3, 8, 8), {"value_range": (0, None)}, TypeError, r"value_range\[1\] must be a number, got None"),
    (torch.rand(1, 3, 8, 8), {"validate": 1}, TypeError, r"validate must be True.* got 1"),
    (
        torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
        {"dtype": torch.float32},
        ValueError,
        r"converting torch.uint8 to torch.float32 needs value_range=\(low, high\)",
    ),
    (
        torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
        {"value_range": (0, 1)},
        ValueError,
        r"value_range=\(0.0, 1.0\) is given, but uint8 images stay uint8: .* pass dtype= as well",
    ),
    (torch.rand(1, 3, 8, 8) * 255, {"value_range": (0, 1), "validate": True}, ValueError, r"divide the images by 255"),
]


def assert_round_trip(make: Callable[[], Any], run: Callable[[Any, int], list[Any]], before: int, after: int) -> None:
    """Save a component after ``before`` steps, load it into a fresh one, and compare the next ``after``.

    The state must be plain Python (JSON-serialisable) and the restored component must continue
    exactly as the original does.
    """
    original = make()
    run(original, before)
    state = original.state_dict()
    json.dumps(state)  # plain Python scalars only
    saved = copy.deepcopy(state)
    expected = run(original, after)
    restored = make()
    restored.load_state_dict(saved)
    assert run(restored, after) == expected


def reference_value_map(
    y: torch.Tensor, in_dtype: torch.dtype, out_dtype: torch.dtype, value_range: Any
) -> torch.Tensor:
    """The resize's documented value semantics, in float64, on float resampled values ``y``: uint8 to
    float maps [0, 255] onto ``value_range``, float output is clamped to it, uint8 output is mapped
    back, clamped and rounded half up."""
    if in_dtype == torch.uint8 and out_dtype != torch.uint8:
        low, high = value_range
        return (y * (high - low) / 255 + low).clamp(low, high)
    if out_dtype == torch.uint8:
        if value_range is not None:
            low, high = value_range
            y = (y - low) * 255 / (high - low)
        return (y.clamp(0, 255) + 0.5).floor()
    return y if value_range is None else y.clamp(*value_range)
