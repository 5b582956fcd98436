"""The functional API and the Triton kernel.

Without a GPU the kernel runs in Triton's interpreter, on small shapes because it is slow. Triton
chooses the interpreter when it is first imported, so on a machine without CUDA this module sets
``TRITON_INTERPRET=1`` at collection, before anything imports Triton (in the full suite it is
collected before the modules that do). On a CUDA machine the interpreter tests are skipped and the
``cuda`` tests check the compiled kernel on the same cases.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastresize import functional
from fastresize.functional import check_value_range, resize, resize_masks, scale_boxes, scale_keypoints
from tests.conftest import DEVICES

ROOT = Path(__file__).resolve().parents[1]

HAS_TRITON = importlib.util.find_spec("triton") is not None
if HAS_TRITON and not torch.cuda.is_available() and "triton" not in sys.modules:
    # Left set: Triton reads it again later (lazy imports). Without CUDA nothing else runs Triton.
    os.environ["TRITON_INTERPRET"] = "1"
INTERPRETED = HAS_TRITON and importlib.import_module("fastresize._kernel").INTERPRETED
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNEL_DTYPES = [torch.uint8, *FLOAT_DTYPES]
MODES = ["bicubic", "bilinear"]
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


@pytest.fixture
def interpret() -> None:
    if not HAS_TRITON:
        pytest.skip("Triton is not installed")
    if not INTERPRETED:
        pytest.skip(
            "Triton was imported without TRITON_INTERPRET=1 (a CUDA machine, or another module imported it "
            "first): the cuda tests check the compiled kernel"
        )


def _images(shape, dtype, device="cpu", seed=0, layout="NCHW"):
    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    else:
        x = torch.rand((n, c, h, w), generator=g).to(dtype)
    if layout == "NHWC":
        x = x.permute(0, 2, 3, 1).contiguous()
    return x.to(device)


def _reference(x, size, mode, value_range, out_dtype):
    """F.interpolate in float32 (the contract), then the value-range map in float64, in the documented order."""
    y = F.interpolate(x.float(), size=size, mode=mode, align_corners=False).double()
    if x.dtype == torch.uint8 and out_dtype != torch.uint8:
        low, high = value_range
        return (y * (high - low) / 255 + low).clamp(low, high)
    if out_dtype == torch.uint8:
        if value_range is not None:
            low, high = value_range
            y = (y - low) * 255 / (high - low)
        return y.clamp(0, 255).round()
    return y if value_range is None else y.clamp(*value_range)


def _assert_close(out, expected, out_dtype, width=1.0):
    """float32 within 1e-5 of the range's width; uint8 within one level; half types within one unit in
    the last place (Triton's interpreter truncates float32 to bfloat16 where the GPU rounds)."""
    assert out.dtype == out_dtype and out.is_contiguous()
    error = (out.double() - expected).abs()
    if out_dtype == torch.uint8:
        assert error.max() <= 1.0
    elif out_dtype == torch.float32:
        assert error.max() <= 1e-5 * width
    else:
        relative = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[out_dtype]
        assert (error <= expected.abs() * relative + 1e-5 * width).all()


# ------------------------------------------------------------------------------ the Triton kernel
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_kernel_float32_equals_interpolate(interpret, shape, mode, layout):
    x = _images(shape[:4], torch.float32, layout=layout)
    size = shape[4:]
    out = resize(x, size, interpolation=mode, layout=layout, backend="triton")
    nchw = x.permute(0, 3, 1, 2) if layout == "NHWC" else x
    _assert_close(out, _reference(nchw, size, mode, None, torch.float32), torch.float32)


@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_kernel_uint8_to_float32_maps_the_range(interpret, shape, value_range):
    x = _images(shape[:4], torch.uint8)
    out = resize(x, shape[4:], value_range=value_range, dtype=torch.float32, backend="triton")
    expected = _reference(x, shape[4:], "bicubic", value_range, torch.float32)
    _assert_close(out, expected, torch.float32, width=value_range[1] - value_range[0])


@pytest.mark.parametrize("in_dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("out_dtype", KERNEL_DTYPES)
def test_kernel_every_dtype_pair(interpret, in_dtype, out_dtype):
    shape, size = (2, 3, 21, 26), (30, 17)
    x = _images(shape, in_dtype, layout="NHWC")
    converts = (in_dtype == torch.uint8) != (out_dtype == torch.uint8)
    value_range = (0.0, 1.0) if converts or out_dtype.is_floating_point else None
    out = resize(x, size, value_range=value_range, dtype=out_dtype, layout="NHWC", backend="triton")
    expected = _reference(x.permute(0, 3, 1, 2), size, "bicubic", value_range, out_dtype)
    _assert_close(out, expected, out_dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_nearest_is_exact(interpret, shape):
    x = _images(shape[:4], torch.uint8)
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
    x = _images((2, 3, 24, 20), in_dtype, layout=layout)
    kwargs = {"value_range": value_range, "dtype": out_dtype, "layout": layout}
    by_torch = resize(x, size, backend="torch", **kwargs)
    by_triton = resize(x, size, backend="triton", **kwargs)
    assert by_torch.shape == by_triton.shape == (2, 3, *size)
    _assert_close(by_triton, by_torch.double(), out_dtype)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_uint8_output_rounds_halves_up_on_both_backends(request, backend):
    if backend == "triton":
        request.getfixturevalue("interpret")
    # Bilinear 2x between 2 and 4 lands exactly on 2.5 and 3.5: half to even would give 2 and 4.
    x = torch.tensor([2, 4, 2, 4], dtype=torch.uint8).view(1, 1, 1, 4)
    out = resize(x, (1, 8), interpolation="bilinear", backend=backend)
    exact = F.interpolate(x.float(), size=(1, 8), mode="bilinear", align_corners=False)
    assert torch.equal(out, (exact + 0.5).floor().to(torch.uint8))
    assert out.flatten().tolist() == [2, 3, 4, 4, 3, 3, 4, 4]  # half to even: [2, 2, 4, 4, 2, 2, 4, 4]


def test_kernel_reads_strided_views(interpret):
    x = _images((2, 3, 30, 40), torch.float32)[:, :, 3:27:2, 5:]  # not contiguous
    out = resize(x, (20, 20), backend="triton")
    _assert_close(out, _reference(x, (20, 20), "bicubic", None, torch.float32), torch.float32)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 0, 8, 8)], ids=["no-images", "no-channels"])
def test_empty_batches_give_empty_outputs(request, backend, shape):
    if backend == "triton":
        request.getfixturevalue("interpret")
    out = resize(
        torch.zeros(shape, dtype=torch.uint8), (5, 6), value_range=(0, 1), dtype=torch.float32, backend=backend
    )
    assert out.shape == (*shape[:2], 5, 6) and out.dtype == torch.float32


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_images_without_pixels_are_refused(backend):
    with pytest.raises(ValueError, match=r"images must be at least 1 pixel high and wide, got shape \(1, 3, 0, 8\)"):
        resize(torch.zeros(1, 3, 0, 8), 4, backend=backend)
    if backend == "triton":  # an empty batch is refused what a full one is refused
        with pytest.raises(ValueError, match=r"backend='triton' cannot run this call: antialias=True"):
            resize(torch.zeros(0, 3, 8, 8), 4, antialias=True, backend="triton")


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


def test_auto_runs_torch_on_the_cpu():
    x = _images((2, 3, 24, 20), torch.uint8)
    kwargs = {"value_range": (0, 1), "dtype": torch.float32}
    assert torch.equal(resize(x, 16, **kwargs), resize(x, 16, backend="torch", **kwargs))


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


# ---------------------------------------------------------------------------------- the torch path
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_torch_path_equals_interpolate(device, mode):
    x = _images((2, 3, 24, 40), torch.float32, device)
    expected = F.interpolate(x, size=(17, 50), mode=mode, align_corners=False)
    assert torch.equal(resize(x, (17, 50), interpolation=mode, backend="torch"), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_nhwc_input_gives_contiguous_nchw(device):
    x = _images((2, 3, 24, 40), torch.uint8, device, layout="NHWC")
    for size in [(12, 20), (24, 40)]:
        out = resize(x, size, layout="NHWC")
        assert out.shape == (2, 3, *size) and out.is_contiguous()
        assert torch.equal(out, resize(x.permute(0, 3, 1, 2).contiguous(), size))


@pytest.mark.parametrize("device", DEVICES)
def test_nothing_to_do_returns_the_input_detached(device):
    x = _images((2, 3, 24, 40), torch.float32, device).requires_grad_()
    out = resize(x, (24, 40))
    assert out.data_ptr() == x.data_ptr() and not out.requires_grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(24, 40), (12, 20), (30, 50)], ids=["unchanged", "down", "up"])
@pytest.mark.parametrize(
    ("in_dtype", "out_dtype", "value_range"),
    [
        (torch.float32, torch.float32, (0.0, 1.0)),
        (torch.uint8, torch.float32, (0.0, 1.0)),
        (torch.float32, torch.uint8, (0.0, 1.0)),
        (torch.float32, torch.float32, None),
    ],
)
def test_the_input_is_never_written(device, size, in_dtype, out_dtype, value_range):
    x = _images((2, 3, 24, 40), in_dtype, device) * (2 if in_dtype == torch.float32 else 1)
    before = x.clone()
    resize(x, size, value_range=value_range, dtype=out_dtype, backend="torch")
    assert torch.equal(x, before)


@pytest.mark.parametrize("device", DEVICES)
def test_float_output_is_clamped_resized_or_not(device):
    x = torch.zeros(1, 1, 8, 8, device=device)
    x[..., 4:] = 1.0
    raw = resize(x, 32)
    assert raw.min() < -0.05 and raw.max() > 1.05
    assert torch.equal(resize(x, 32, value_range=(0, 1)), raw.clamp(0, 1))
    assert torch.equal(resize(raw, 32, value_range=(0, 1)), raw.clamp(0, 1))  # unchanged size: clamped too


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_uint8_round_trips_through_float(device, value_range):
    x = _images((2, 3, 24, 40), torch.uint8, device)
    as_float = resize(x, (24, 40), value_range=value_range, dtype=torch.float32)
    low, high = value_range
    assert torch.allclose(as_float, x.float() / 255 * (high - low) + low, atol=1e-6)
    assert torch.equal(resize(as_float, (24, 40), value_range=value_range, dtype=torch.uint8), x)


def test_antialias_is_pytorch_native():
    x = _images((2, 3, 64, 64), torch.float32)
    expected = F.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    assert torch.equal(resize(x, 16, antialias=True), expected)


# ---------------------------------------------------------------------------------- value range
@pytest.mark.parametrize(
    ("scale", "shift", "value_range", "match"),
    [
        (
            255.0,
            0.0,
            (0, 1),
            r"min 0 and max 255; they look like 0..255 data: divide the images by 255, or pass value_range=\(0, 255\)",
        ),
        (2.0, -1.0, (0, 1), r"min -1 and max 1; they look like \[-1, 1\] data"),
        (1000.0, 0.0, (0, 1), r"min 0 and max 1000; pass the range the data lies in as value_range"),
    ],
)
def test_value_range_check_names_the_fix(scale, shift, value_range, match):
    images = torch.linspace(0, 1, 192).view(1, 3, 8, 8) * scale + shift
    with pytest.raises(ValueError, match=r"value_range=\(0, 1\) does not match the images: observed " + match):
        check_value_range(images, value_range)


def test_value_range_check_passes_good_data():
    check_value_range(torch.rand(2, 3, 8, 8) * 1.05, (0.0, 1.0))  # a small overshoot is tolerated
    check_value_range(torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8), (0.0, 1.0))  # uint8: not checked
    with pytest.raises(ValueError, match=r"observed min nan"):
        check_value_range(torch.full((1, 1, 2, 2), float("nan")), (0.0, 1.0))


# ------------------------------------------------------------------------------------- targets
@pytest.mark.parametrize("device", DEVICES)
def test_masks_use_nearest_and_keep_labels(device):
    labels = torch.randint(0, 5, (2, 24, 40), device=device)
    out = resize_masks(labels, (48, 32))
    expected = F.interpolate(labels[:, None].float(), size=(48, 32), mode="nearest-exact")[:, 0].long()
    assert out.dtype == torch.int64 and torch.equal(out, expected)
    assert resize_masks(labels[:, None] > 2, (48, 32)).dtype == torch.bool


@pytest.mark.parametrize(("h_in", "h_out"), [(512, 384), (512, 496), (300, 512), (37, 91)])
def test_nearest_indices_match_pytorch(h_in, h_out):
    x = torch.arange(h_in, dtype=torch.float32).view(1, 1, h_in, 1).expand(1, 1, h_in, 3)
    assert torch.equal(resize_masks(x, (h_out, 16)), F.interpolate(x, size=(h_out, 16), mode="nearest-exact"))


def test_boxes_and_keypoints_scale_with_the_pixel_edges():
    boxes = torch.tensor([[[8.0, 4.0, 20.0, 10.0]]])
    assert torch.equal(scale_boxes(boxes, (20, 40), (40, 60)), torch.tensor([[[12.0, 8.0, 30.0, 20.0]]]))
    assert torch.equal(scale_keypoints(torch.tensor([[8.0, 4.0]]), (20, 40), (40, 60)), torch.tensor([[12.0, 8.0]]))
    per_image = scale_boxes([torch.tensor([[0, 0, 10, 10]]), torch.zeros(0, 4, dtype=torch.int64)], 10, (20, 40))
    assert isinstance(per_image, list) and per_image[0].dtype == torch.float32
    assert torch.equal(per_image[0], torch.tensor([[0.0, 0.0, 40.0, 20.0]])) and per_image[1].shape == (0, 4)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("images", "kwargs", "error", "match"),
    [
        ([[1.0]], {}, TypeError, r"images must be a torch.Tensor, got list"),
        (torch.rand(3, 16, 16), {}, ValueError, r"images must be a 4-D batch \(B, C, H, W\), got a 3-D shape"),
        (torch.rand(2, 4, 3, 8, 8), {}, ValueError, r"got a 5-D shape .* fold the extra dimension into the batch"),
        (torch.rand(8, 64, 48, 3), {}, ValueError, r"look like NHWC .* Pass layout='NHWC'"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int32), {}, TypeError, r"images must have a dtype in .* torch.int32"),
        (torch.rand(1, 3, 8, 8), {"size": (8, 8, 8)}, ValueError, r"size must be an int or a \(height, width\) pair"),
        (torch.rand(1, 3, 8, 8), {"size": 0}, ValueError, r"size must be an int >= 1, got 0"),
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
        (torch.rand(1, 3, 8, 8), {"value_range": (1, 0)}, ValueError, r"value_range must have low < high"),
        (torch.rand(1, 3, 8, 8), {"value_range": 1}, ValueError, r"value_range must be a \(low, high\) pair"),
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
    ],
)
def test_bad_input(images, kwargs, error, match):
    kwargs = {"size": 16, **kwargs}
    with pytest.raises(error, match=match):
        resize(images, **kwargs)


def test_latents_and_single_channel_pass():
    assert resize(torch.rand(8, 4, 64, 64), 32).shape == (8, 4, 32, 32)
    assert resize(torch.rand(2, 1, 20, 20), 32).shape == (2, 1, 32, 32)
    assert resize(torch.rand(8, 64, 48, 3), 32, layout="NCHW").shape == (8, 64, 32, 32)


def test_bad_targets():
    with pytest.raises(ValueError, match=r"masks must be \(B, H, W\) or \(B, C, H, W\), got shape \(16, 16\)"):
        resize_masks(torch.zeros(16, 16), 8)
    with pytest.raises(TypeError, match=r"masks must be a torch.Tensor, got list"):
        resize_masks([[0]], 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"boxes must have a last dimension of 4, got shape \(2, 1, 2\)"):
        scale_boxes(torch.zeros(2, 1, 2), 8, 16)
    with pytest.raises(ValueError, match=r"keypoints\[1\] must have a last dimension of 2"):
        scale_keypoints([torch.zeros(1, 2), torch.zeros(1, 3)], 8, 16)
    with pytest.raises(TypeError, match=r"boxes must be a tensor or a list of tensors, got str"):
        scale_boxes("0 0 1 1", 8, 16)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"in_size must be an int >= 1, got 0"):
        scale_boxes(torch.zeros(1, 4), (0, 8), 16)


# ------------------------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("out_dtype", KERNEL_DTYPES)
def test_cuda_kernel_matches_interpolate(mode, layout, out_dtype):
    x = _images((4, 3, 160, 120), torch.uint8, "cuda", layout=layout)
    value_range = (0.0, 1.0) if out_dtype != torch.uint8 else None
    for size in [(96, 144), (200, 77), (160, 120)]:
        out = resize(x, size, interpolation=mode, value_range=value_range, dtype=out_dtype, layout=layout)
        nchw = x.permute(0, 3, 1, 2) if layout == "NHWC" else x
        _assert_close(out, _reference(nchw, size, mode, value_range, out_dtype), out_dtype)
        by_torch = resize(x, size, interpolation=mode, value_range=value_range, dtype=out_dtype, layout=layout,
                          backend="torch")  # fmt: skip
        _assert_close(out, by_torch.double(), out_dtype)


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("in_dtype", FLOAT_DTYPES)
def test_cuda_kernel_float_input(in_dtype):
    x = _images((2, 4, 64, 80), in_dtype, "cuda")
    out = resize(x, (48, 112), dtype=torch.float32, backend="triton")
    _assert_close(out, _reference(x, (48, 112), "bicubic", None, torch.float32), torch.float32)
    assert functional._triton_refusal(x, "bicubic", False, torch.float32) is None


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", [*MODES, "nearest"])
def test_cuda_kernel_on_the_interpreter_shapes(shape, mode):
    """The compiled kernel on the shapes the interpreter checks (rows skipped, inputs narrower than the
    taps): what Triton compiles can differ from what it interprets."""
    x = _images(shape[:4], torch.float32, "cuda")
    out = resize(x, shape[4:], interpolation=mode, backend="triton")
    if mode == "nearest":
        assert torch.equal(out, F.interpolate(x, size=shape[4:], mode="nearest-exact"))
    else:
        _assert_close(out, _reference(x, shape[4:], mode, None, torch.float32), torch.float32)
