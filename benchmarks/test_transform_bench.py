"""Throughput of BatchResize against bare PyTorch, Kornia and torchvision, same input and size.

Groups are ``device-dtype-target``; within a group, compare each implementation's median to
``interpolate``'s. Input: a 32x3x512x512 batch; targets 384 and 256 (resizes) and 512 (unchanged).
"""

from __future__ import annotations

import importlib.util

import kornia
import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import DEVICES, synchronised
from fastresize import BatchResize

TARGETS = [384, 256, 512]
DTYPES = [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.float16, id="float16"),
    pytest.param(torch.uint8, id="uint8"),
]
IMPLEMENTATIONS = ["fastresize", "interpolate", "kornia", "torchvision"]


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _implementation(name: str, target: int, dtype: torch.dtype):
    """Each implementation gives the same output dtype as its input (uint8 rounded and clamped)."""
    size = (target, target)
    if name == "fastresize":
        return BatchResize(size)
    if name == "interpolate":
        if dtype == torch.uint8:  # the same math BatchResize does: bicubic in float32, then round
            return lambda x: _to_uint8(F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False))
        return lambda x: F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    if name == "kornia":
        resize = kornia.geometry.transform.resize
        if dtype == torch.uint8:
            return lambda x: _to_uint8(resize(x.float(), size, interpolation="bicubic", align_corners=False))
        return lambda x: resize(x, size, interpolation="bicubic", align_corners=False)
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    from torchvision.transforms import InterpolationMode, v2

    return v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=False)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_resize(benchmark, name, device, dtype, target):
    if dtype == torch.float16 and device == "cpu":
        pytest.skip("float16 is benchmarked on CUDA only")
    benchmark.group = f"{device}-{str(dtype).split('.')[-1]}-{target}"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 512, 512), generator=g, dtype=torch.uint8).to(device)
    if dtype != torch.uint8:
        x = (x.float() / 255).to(dtype)
    resize = _implementation(name, target, dtype)
    out = benchmark(synchronised(lambda: resize(x), device))
    assert out.shape == (32, 3, target, target) and out.dtype == dtype


@pytest.mark.parametrize("device", DEVICES)
def test_uint8_native_interpolate(benchmark, device):
    """PyTorch's native uint8 bicubic: a different kernel (it differs from the float path by up to
    about 30 levels), listed for reference beside the ``uint8-384`` group."""
    benchmark.group = f"{device}-uint8-384"
    x = torch.randint(0, 256, (32, 3, 512, 512), dtype=torch.uint8).to(device)
    out = benchmark(
        synchronised(lambda: F.interpolate(x, size=(384, 384), mode="bicubic", align_corners=False), device)
    )
    assert out.dtype == torch.uint8
