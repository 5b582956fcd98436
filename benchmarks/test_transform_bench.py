"""Throughput of fastresize's resize against the seed's inline code, Kornia and torchvision, side by side.

Groups are ``device-case-target``, a case being ``input-output`` dtypes: a 32x3x512x512 batch
resized to 384, or kept at 512 (an unchanged size). Within a group each implementation's median
is compared to ``seed``'s, the three lines the seed ran inline. Every benchmark records the bytes
it reads and writes in ``extra_info["bytes"]``; ``ratios.py`` divides them by the median and
compares that bandwidth with the device copy (``x.clone()``) measured in the same run.
"""

from __future__ import annotations

import importlib.util
import itertools
import statistics
import time
from collections.abc import Callable

import kornia
import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import DEVICES, synchronised
from fastresize import BatchResize, functional
from fastresize.functional import resize

SHAPE = (32, 3, 512, 512)
TARGETS = [384, 512]
# case: (input dtype, output dtype, value range)
CASES = {
    "uint8-float32": (torch.uint8, torch.float32, (0.0, 1.0)),
    "uint8-bfloat16": (torch.uint8, torch.bfloat16, (0.0, 1.0)),
    "float32-float32": (torch.float32, torch.float32, None),
    "float16-float16": (torch.float16, torch.float16, None),
    "uint8-uint8": (torch.uint8, torch.uint8, None),
}
IMPLEMENTATIONS = ["triton", "torch", "seed", "kornia", "torchvision"]
# The Triton kernel's (ROWS, NUM_WARPS): output rows per program, warps per 128 columns.
TILES = [(rows, warps) for rows in (1, 4, 8, 16) for warps in (1, 2, 4)]


def _input(dtype: torch.dtype, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, SHAPE, generator=g, dtype=torch.uint8)
    return (x if dtype == torch.uint8 else (x.float() / 255).to(dtype)).to(device)


def _converted(
    resize_float: Callable[[torch.Tensor], torch.Tensor], case: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a float resize in the seed's conversions, so every implementation returns the same dtype."""
    in_dtype, out_dtype, _ = CASES[case]
    if in_dtype != torch.uint8:
        return resize_float
    if out_dtype == torch.uint8:  # bicubic in float32, rounded and clamped: what fastresize computes
        return lambda x: resize_float(x.float()).round_().clamp_(0, 255).to(torch.uint8)
    return lambda x: resize_float(x.float() / 255).to(out_dtype)


def _implementation(name: str, case: str, target: int, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    _, out_dtype, value_range = CASES[case]
    size = (target, target)
    if name in ("triton", "torch"):
        if name == "triton" and device == "cpu":
            pytest.skip("Triton runs CPU tensors only in its interpreter, which is for tests")
        if name == "triton" and importlib.util.find_spec("triton") is None:
            pytest.skip("Triton is not installed")
        return lambda x: resize(x, size, value_range=value_range, dtype=out_dtype, backend=name)
    if name == "seed":  # the seed's inline code: resize only when the size changes
        return _converted(
            lambda x: x if x.shape[-1] == target else F.interpolate(x, size, mode="bicubic", align_corners=False), case
        )
    if name == "kornia":
        kornia_resize = kornia.geometry.transform.resize
        return _converted(lambda x: kornia_resize(x, size, interpolation="bicubic", align_corners=False), case)
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    from torchvision.transforms import InterpolationMode, v2

    return _converted(v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=False), case)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_resize(benchmark, name, device, case, target):
    in_dtype, out_dtype, _ = CASES[case]
    if device == "cpu" and torch.float16 in (in_dtype, out_dtype):
        pytest.skip("float16 is benchmarked on CUDA only")
    benchmark.group = f"{device}-{case}-{target}"
    run = _implementation(name, case, target, device)
    x = _input(in_dtype, device)
    timed = synchronised(lambda: run(x), device)
    timed()  # warm-up: Triton compiles, the allocator settles
    out = benchmark(timed)
    assert out.shape == (*SHAPE[:2], target, target) and out.dtype == out_dtype
    if out.data_ptr() != x.data_ptr():  # a returned input moves no bytes: no bandwidth to report
        benchmark.extra_info["bytes"] = x.numel() * x.element_size() + out.numel() * out.element_size()


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["uint8-float32", "float32-float32"])
@pytest.mark.parametrize("tile", TILES, ids=[f"rows{rows}_warps{warps}" for rows, warps in TILES])
def test_kernel_tiles(benchmark, monkeypatch, tile, case):
    """The Triton kernel's tile settings side by side, resizing to 384 on CUDA: the evidence for
    ``_kernel.ROWS`` and ``_kernel.NUM_WARPS``. ``rows1_warps4`` reads 4 input rows per output row,
    as the kernel did before it kept a window of rows."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    from fastresize import _kernel

    monkeypatch.setattr(_kernel, "ROWS", tile[0])
    monkeypatch.setattr(_kernel, "NUM_WARPS", tile[1])
    benchmark.group = f"cuda-tiles-{case}-384"
    in_dtype, out_dtype, value_range = CASES[case]
    x = _input(in_dtype, "cuda")
    timed = synchronised(lambda: resize(x, 384, value_range=value_range, dtype=out_dtype, backend="triton"), "cuda")
    expected = resize(x, 384, value_range=value_range, dtype=out_dtype, backend="torch")
    torch.testing.assert_close(timed(), expected, atol=1e-5, rtol=0)  # warm-up: Triton compiles this tile
    out = benchmark(timed)
    benchmark.extra_info["bytes"] = x.numel() * x.element_size() + out.numel() * out.element_size()


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["triton", "torch", "seed"])
def test_call_overhead(benchmark, name):
    """One call on a tiny batch (1x3x16x16 uint8 to 8x8 float32), where the GPU's work is negligible:
    the host's cost of a call (checks, allocation, the kernel launch) against the seed's three ops."""
    if name == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    benchmark.group = "cuda-overhead-uint8-float32-8"
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8, device="cuda")
    if name == "seed":
        run = lambda: F.interpolate(x.float() / 255, (8, 8), mode="bicubic", align_corners=False)  # noqa: E731
    else:
        run = lambda: resize(x, 8, value_range=(0, 1), dtype=torch.float32, backend=name)  # noqa: E731
    timed = synchronised(run, "cuda")
    timed()  # warm-up: Triton compiles
    assert benchmark(timed).shape == (1, 3, 8, 8)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32], ids=["uint8", "float32"])
@pytest.mark.parametrize("device", DEVICES)
def test_copy(benchmark, device, dtype):
    """The bandwidth reference: a device copy of the input, one read and one write."""
    benchmark.group = f"{device}-copy"
    x = _input(dtype, device)
    out = benchmark(synchronised(x.clone, device))
    assert torch.equal(out, x)
    benchmark.extra_info["bytes"] = 2 * x.numel() * x.element_size()


@pytest.mark.parametrize("device", DEVICES)
def test_uint8_native_interpolate(benchmark, device):
    """PyTorch's native uint8 bicubic: a different kernel (it differs from the float path by up to
    about 30 levels), listed for reference beside the ``uint8-uint8-384`` group."""
    if device == "cuda":
        pytest.skip("PyTorch has no uint8 bicubic kernel on CUDA")
    benchmark.group = f"{device}-uint8-uint8-384"
    x = _input(torch.uint8, device)
    out = benchmark(lambda: F.interpolate(x, size=(384, 384), mode="bicubic", align_corners=False))
    assert out.dtype == torch.uint8
    benchmark.extra_info["bytes"] = x.numel() + out.numel()


NAMES = ("baseline", "checked")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_range_check(benchmark, name, device):
    """The per-batch cost of ``BatchResize``'s value-range check one call later: float32 32x3x256x256
    in [0, 1] resized to 192, past the first steps, with ``validate=False`` (``baseline``) and the
    default check (``checked``). Each round of one runs the other untimed just before it, so both
    see the same caches; ``extra_info`` holds the paired ratio (this one over the other) of those
    rounds, median and quartiles. ``sqrt(checked's / baseline's)`` cancels which one ran second."""
    benchmark.group = f"{device}-rangecheck-float32-192"
    x = _input(torch.float32, device)[:, :, :256, :256].contiguous()
    steps = itertools.count(100)  # past max-size-first: every call is checked one call later
    transforms = {n: BatchResize(192, value_range=(0, 1), validate=None if n == "checked" else False) for n in NAMES}
    calls = {n: synchronised(lambda t=t: t(x, global_step=next(steps)), device) for n, t in transforms.items()}
    own: list[float] = []
    partner: list[float] = []

    def run(times: list[float], call: Callable[[], torch.Tensor]) -> torch.Tensor:
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
        return out

    for _ in range(3):  # warm-up: Triton compiles, the allocator settles
        calls["baseline"](), calls["checked"]()
    other = next(n for n in NAMES if n != name)

    def setup() -> None:  # untimed: the other transform's call, just before each timed one
        run(partner, calls[other])

    out = benchmark.pedantic(run, args=(own, calls[name]), setup=setup, rounds=40, warmup_rounds=2)
    assert out.shape == (32, 3, 192, 192) and len(own) == len(partner)
    ratios = [a / b for a, b in zip(own, partner, strict=True)]
    benchmark.extra_info["paired_ratio_median"] = statistics.median(ratios)
    if len(ratios) > 1:  # --benchmark-disable runs it once
        benchmark.extra_info["paired_ratio_quartiles"] = statistics.quantiles(ratios, n=4)


@pytest.mark.cuda
def test_kernel_self_check(benchmark, monkeypatch):
    """The kernel's self-check, run once per configuration (here uint8 -> float32, bicubic, NCHW):
    the probe through the kernel and the torch path, and the comparison, with the probe's kernel
    already compiled; ``extra_info["first_s"]`` is the first check of the process, compilation included."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    benchmark.group = "cuda-selfcheck-uint8-float32"
    monkeypatch.setenv("FASTRESIZE_KERNEL_CHECK", "1")
    x = _input(torch.uint8, "cuda")
    args = (x, "bicubic", torch.float32, (1 / 255, 0.0), (0.0, 1.0))
    functional._KERNEL_CHECKS.clear()
    start = time.perf_counter()
    assert functional._kernel_check(*args) is None
    benchmark.extra_info["first_s"] = time.perf_counter() - start
    benchmark.pedantic(functional._kernel_check, args=args, setup=functional._KERNEL_CHECKS.clear, rounds=20)
    assert functional._KERNEL_CHECKS[(x.device, torch.uint8, torch.float32, "bicubic", "NCHW")] is None


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["dense", "ragged"])
def test_ragged_kernel(benchmark, name):
    """The crop kernel over a ragged batch against the dense kernel, for the same output: 32 images
    of 3x512x512 resized to 384 (uint8 to float32 in [0, 1]), as one dense batch through
    ``functional.resize``, or as a ``RaggedImages`` with whole-image boxes through ``resized_crop``.
    Target: ``ragged`` within 1.2x of ``dense``."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    from fastresize.ragged import RaggedImages, resized_crop

    benchmark.group = "cuda-ragged-uint8-float32-384"
    x = _input(torch.uint8, "cuda")
    if name == "dense":
        run = lambda: resize(x, 384, value_range=(0, 1), dtype=torch.float32)  # noqa: E731
    else:
        ragged = RaggedImages.pack(list(x))
        boxes = torch.tensor([[0, 0, 512, 512]] * len(x))  # on the CPU: read on the host, no sync
        run = lambda: resized_crop(ragged, boxes, 384, value_range=(0, 1), dtype=torch.float32)  # noqa: E731
    timed = synchronised(run, "cuda")
    expected = resize(x, 384, value_range=(0, 1), dtype=torch.float32, backend="torch")
    torch.testing.assert_close(timed(), expected, atol=1e-5, rtol=0)  # warm-up: Triton compiles
    out = benchmark(timed)
    benchmark.extra_info["bytes"] = x.numel() + out.numel() * out.element_size()
