"""The fused Triton kernel (fastresize/_kernel.py) against a float64 reference, and its self-check.

Without a GPU the kernel runs in Triton's interpreter (tests/conftest.py turns it on), on small
shapes because it is slow. On a CUDA machine the interpreter tests are skipped and the ``cuda``
tests check the compiled kernel on the same cases. Tolerances are ``(dtype, atol, rtol)`` per output
dtype, from :data:`fastresize.functional.KERNEL_TOLERANCES`, which the self-check uses too.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastresize import functional
from fastresize.functional import KERNEL_TOLERANCES, resize
from tests.conftest import make_images, needs_triton, reference_value_map

ROOT = Path(__file__).resolve().parents[1]
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNEL_DTYPES = [torch.uint8, *FLOAT_DTYPES]
MODES = ["bicubic", "bilinear"]
# (output dtype, atol, rtol): float atol per unit of the value range's width, uint8 atol in levels.
TOLERANCES = [pytest.param(d, *KERNEL_TOLERANCES[d], id=str(d).split(".")[1]) for d in KERNEL_DTYPES]
# (batch, channels, h_in, w_in, h_out, w_out): up, down, mixed, non-square, batch 1, 1/3/4
# channels, sides that are not multiples of 16, a one-pixel output, downscaling by more than the
# kernel's window (8x: rows it skips are not read), and inputs narrower than the taps (3 and 1 wide).
SHAPES = [
    (1, 3, 24, 40, 37, 19),
    (2, 1, 29, 17, 13, 30),
    (1, 4, 16, 16, 50, 45),
    (3, 3, 45, 33, 23, 11),
    (1, 3, 9, 7, 1, 1),
    (1, 2, 83, 61, 10, 7),
    (2, 3, 2, 3, 5, 4),
    (1, 1, 5, 1, 3, 4),
]


def _reference(x, size, mode, value_range, out_dtype):
    """F.interpolate in float32 (the contract), then the value-range map in float64, in the documented order."""
    y = F.interpolate(x.float(), size=size, mode=mode, align_corners=False).double()
    return reference_value_map(y, x.dtype, out_dtype, value_range)


def _assert_close(out, expected, out_dtype, width=1.0):
    """Within ``(atol, rtol)`` of the output dtype: half types within about one unit in the last place
    (Triton's interpreter truncates float32 to bfloat16 where the GPU rounds)."""
    assert out.dtype == out_dtype and out.is_contiguous()
    atol, rtol = KERNEL_TOLERANCES[out_dtype]
    atol *= width if out_dtype.is_floating_point else 1.0
    torch.testing.assert_close(out.double(), expected.double(), atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_kernel_float32_equals_interpolate(interpret, shape, mode, layout):
    x = make_images(shape[:4], torch.float32, layout=layout)
    size = shape[4:]
    out = resize(x, size, interpolation=mode, layout=layout, backend="triton")
    nchw = x.permute(0, 3, 1, 2) if layout == "NHWC" else x
    _assert_close(out, _reference(nchw, size, mode, None, torch.float32), torch.float32)


@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_kernel_uint8_to_float32_maps_the_range(interpret, shape, value_range):
    x = make_images(shape[:4], torch.uint8)
    out = resize(x, shape[4:], value_range=value_range, dtype=torch.float32, backend="triton")
    expected = _reference(x, shape[4:], "bicubic", value_range, torch.float32)
    _assert_close(out, expected, torch.float32, width=value_range[1] - value_range[0])


@pytest.mark.parametrize("in_dtype", KERNEL_DTYPES)
@pytest.mark.parametrize(("out_dtype", "atol", "rtol"), TOLERANCES)
def test_kernel_every_dtype_pair(interpret, in_dtype, out_dtype, atol, rtol):
    shape, size = (2, 3, 21, 26), (30, 17)
    x = make_images(shape, in_dtype, layout="NHWC")
    converts = (in_dtype == torch.uint8) != (out_dtype == torch.uint8)
    value_range = (0.0, 1.0) if converts or out_dtype.is_floating_point else None
    out = resize(x, size, value_range=value_range, dtype=out_dtype, layout="NHWC", backend="triton")
    expected = _reference(x.permute(0, 3, 1, 2), size, "bicubic", value_range, out_dtype)
    assert out.dtype == out_dtype and out.is_contiguous()
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_nearest_is_exact(interpret, shape):
    x = make_images(shape[:4], torch.uint8)
    out = resize(x, shape[4:], interpolation="nearest", backend="triton")
    assert torch.equal(out, F.interpolate(x, size=shape[4:], mode="nearest-exact"))


@pytest.mark.parametrize(
    ("in_dtype", "out_dtype", "value_range"),
    [
        (torch.uint8, torch.float32, (0.0, 1.0)),
        (torch.uint8, torch.bfloat16, (-1.0, 1.0)),
        (torch.float32, torch.uint8, (0.0, 1.0)),
        (torch.float32, torch.float32, (0.0, 1.0)),
        (torch.uint8, torch.uint8, None),
    ],
)
@pytest.mark.parametrize("size", [(19, 31), (24, 20)], ids=["resized", "unchanged"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_torch_and_triton_agree(interpret, in_dtype, out_dtype, value_range, size, layout):
    x = make_images((2, 3, 24, 20), in_dtype, layout=layout)
    kwargs = {"value_range": value_range, "dtype": out_dtype, "layout": layout}
    by_torch = resize(x, size, backend="torch", **kwargs)
    by_triton = resize(x, size, backend="triton", **kwargs)
    assert by_torch.shape == by_triton.shape == (2, 3, *size)
    _assert_close(by_triton, by_torch.double(), out_dtype)


def test_kernel_reads_strided_views(interpret):
    x = make_images((2, 3, 30, 40), torch.float32)[:, :, 3:27:2, 5:]  # not contiguous
    out = resize(x, (20, 20), backend="triton")
    _assert_close(out, _reference(x, (20, 20), "bicubic", None, torch.float32), torch.float32)


def test_kernel_reads_each_input_row_once_per_slide(interpret, monkeypatch):
    """Counts the input rows the interpreted kernel reads: each program reads the rows its output rows
    span once (the first output row's 4, then one per slide), not 4 per output row."""
    from fastresize import _kernel

    rows_read = []
    read = _kernel._row
    monkeypatch.setattr(_kernel, "_row", lambda *args: rows_read.append(1) or read(*args))
    h_in, h_out = 64, 37  # not a multiple of ROWS: the last program has 5 rows
    resize(torch.rand(1, 1, h_in, 20), (h_out, 20), backend="triton")

    def first_tap(o):  # bicubic, align_corners=False
        return math.floor((o + 0.5) * h_in / h_out - 0.5) - 1

    programs = [(o, min(o + _kernel.ROWS, h_out) - 1) for o in range(0, h_out, _kernel.ROWS)]
    # 75 rows with ROWS=8; reading 4 input rows per output row would be 148.
    assert len(rows_read) == sum(first_tap(last) - first_tap(first) + 4 for first, last in programs)


# --------------------------------------------------------------------------------- what it refuses
@needs_triton
def test_triton_refuses_what_it_cannot_run(interpret):
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"cannot run this call: antialias=True runs on PyTorch's native path"):
        resize(x, 4, antialias=True, backend="triton")
    with pytest.raises(ValueError, match=r"cannot run this call: the kernel reads and writes .* torch.float64"):
        resize(x.double(), 4, backend="triton")


@needs_triton
def test_triton_needs_the_interpreter_for_cpu_tensors():
    # A fresh process: Triton decides on its interpreter when first imported.
    code = (
        "import torch\n"
        "from fastresize.functional import resize\n"
        "try:\n"
        "    resize(torch.rand(1, 3, 8, 8), 16, backend='triton')\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "backend='triton' cannot run this call: the images are on the CPU" in result.stdout
    assert "set TRITON_INTERPRET=1 before Triton is first imported" in result.stdout


@needs_triton
def test_kernel_compiles_for_an_h100_without_spills():
    """Compiles the GPU kernel ahead of time for sm_90 (Triton bundles ptxas), so CPU-only CI catches
    what the interpreter accepts but the compiler refuses or compiles differently (a window row that
    the compiled loop does not carry), register spills, and loops that grow back towards the 131
    instructions per value of the kernel before the window."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.kernel_instructions"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line[:30].strip(): line[30:].split() for line in done.stdout.splitlines()[2:]}
    assert len(rows) == 6, done.stdout
    taps = {"bicubic": 4, "bilinear": 2, "nearest": 1}
    for name, (registers, spilled, window, *_) in rows.items():
        assert int(spilled) == 0 and int(registers) <= 64, f"{name}: {registers} registers, {spilled} bytes spilled"
        assert int(window) == taps[name.split()[0]], f"{name}: the compiled loop carries {window} window rows"
    assert float(rows["bicubic uint8->float32"][5]) < 100, done.stdout


# ------------------------------------------------------------------------------------ self-check
@pytest.fixture
def self_check(monkeypatch):
    """The self-check on, with no verdicts yet, and backend="auto" running the kernel on the interpreter's CPU."""
    monkeypatch.setenv("FASTRESIZE_KERNEL_CHECK", "1")
    monkeypatch.setattr(functional, "_KERNEL_CHECKS", {})
    monkeypatch.setattr(functional, "_AUTO_DEVICES", ("cuda", "cpu"))


def _wrong_cubic(monkeypatch):
    """Make the kernel's first bicubic weight 10% too large: wrong by a few percent near every edge."""
    from fastresize import _kernel

    cubic = _kernel._cubic
    monkeypatch.setattr(_kernel, "_cubic", lambda t, tap: cubic(t, tap) * (1.1 if tap == 0 else 1.0))


def test_self_check_passes_a_correct_kernel(interpret, self_check):
    x = make_images((2, 3, 24, 20), torch.uint8, layout="NHWC")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = resize(x, (13, 30), value_range=(0, 1), dtype=torch.float32, layout="NHWC")
    assert functional._KERNEL_CHECKS == {(x.device, torch.uint8, torch.float32, "bicubic", "NHWC"): None}
    by_triton = resize(x, (13, 30), value_range=(0, 1), dtype=torch.float32, layout="NHWC", backend="triton")
    assert torch.equal(out, by_triton)  # auto ran the kernel


def test_a_wrong_kernel_warns_once_and_gives_way_to_torch(interpret, self_check, monkeypatch):
    _wrong_cubic(monkeypatch)
    x = make_images((2, 3, 24, 20), torch.float32)
    expected = resize(x, (13, 30), backend="torch")
    match = r"the Triton resize kernel differs from PyTorch's resize by up to .* on cpu \(interpreter\) with Triton \d"
    with pytest.warns(
        RuntimeWarning,
        match=match
        + r".*, for torch.float32 -> torch.float32, bicubic, NCHW; fastresize resizes this configuration with PyTorch",
    ):
        assert torch.equal(resize(x, (13, 30)), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the verdict is remembered
        assert torch.equal(resize(x, (13, 30)), expected)
        assert resize(x, (13, 30), interpolation="nearest").shape == (2, 3, 13, 30)  # another configuration passes
    with pytest.raises(ValueError, match=r"backend='triton' cannot run this call: the Triton resize kernel differs"):
        resize(x, (13, 30), backend="triton")


def test_a_kernel_that_fails_to_launch_gives_way_to_torch(interpret, self_check, monkeypatch):
    from fastresize import _kernel

    def fail(*args):
        raise RuntimeError("PTX compilation failed")

    monkeypatch.setattr(_kernel, "resize", fail)
    x = make_images((1, 3, 16, 16), torch.uint8)
    with pytest.warns(RuntimeWarning, match=r"kernel failed to run \(RuntimeError: PTX compilation failed\)"):
        out = resize(x, 8, value_range=(0, 1), dtype=torch.bfloat16)
    assert torch.equal(out, resize(x, 8, value_range=(0, 1), dtype=torch.bfloat16, backend="torch"))


def test_the_self_check_can_be_turned_off(interpret, self_check, monkeypatch):
    _wrong_cubic(monkeypatch)
    monkeypatch.setenv("FASTRESIZE_KERNEL_CHECK", "0")
    x = make_images((1, 3, 24, 20), torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrong = resize(x, (13, 30))
    assert functional._KERNEL_CHECKS == {} and not torch.equal(wrong, resize(x, (13, 30), backend="torch"))


# ------------------------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize(("out_dtype", "atol", "rtol"), TOLERANCES)
def test_cuda_kernel_matches_interpolate(mode, layout, out_dtype, atol, rtol):
    x = make_images((4, 3, 160, 120), torch.uint8, "cuda", layout=layout)
    value_range = (0.0, 1.0) if out_dtype != torch.uint8 else None
    for size in [(96, 144), (200, 77), (160, 120)]:
        kwargs = {"interpolation": mode, "value_range": value_range, "dtype": out_dtype, "layout": layout}
        out = resize(x, size, **kwargs)  # auto: the kernel, after its self-check
        nchw = x.permute(0, 3, 1, 2) if layout == "NHWC" else x
        torch.testing.assert_close(
            out.double(), _reference(nchw, size, mode, value_range, out_dtype), atol=atol, rtol=rtol
        )
        torch.testing.assert_close(
            out.double(), resize(x, size, backend="torch", **kwargs).double(), atol=atol, rtol=rtol
        )


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("in_dtype", FLOAT_DTYPES)
def test_cuda_kernel_float_input(in_dtype):
    x = make_images((2, 4, 64, 80), in_dtype, "cuda")
    out = resize(x, (48, 112), dtype=torch.float32, backend="triton")
    _assert_close(out, _reference(x, (48, 112), "bicubic", None, torch.float32), torch.float32)
    assert functional._triton_refusal(x, False, torch.float32) is None


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", [*MODES, "nearest"])
def test_cuda_kernel_on_the_interpreter_shapes(shape, mode):
    """The compiled kernel on the shapes the interpreter checks (rows skipped, inputs narrower than the
    taps): what Triton compiles can differ from what it interprets."""
    x = make_images(shape[:4], torch.float32, "cuda")
    out = resize(x, shape[4:], interpolation=mode, backend="triton")
    if mode == "nearest":
        assert torch.equal(out, F.interpolate(x, size=shape[4:], mode="nearest-exact"))
    else:
        _assert_close(out, _reference(x, shape[4:], mode, None, torch.float32), torch.float32)


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("in_dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("out_dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_cuda_self_check_passes_the_compiled_kernel(monkeypatch, in_dtype, out_dtype, layout):
    """The compiled kernel passes its own check on this GPU, for every dtype pair and layout: no warning."""
    monkeypatch.setenv("FASTRESIZE_KERNEL_CHECK", "1")
    monkeypatch.setattr(functional, "_KERNEL_CHECKS", {})
    x = make_images((2, 3, 40, 36), in_dtype, "cuda", layout=layout)
    value_range = (0.0, 1.0) if (in_dtype == torch.uint8) != (out_dtype == torch.uint8) else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resize(x, (17, 50), value_range=value_range, dtype=out_dtype, layout=layout)
    assert list(functional._KERNEL_CHECKS.values()) == [None]
