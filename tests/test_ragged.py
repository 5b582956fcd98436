"""Ragged batches: the RaggedImages container, and resized_crop over ragged and dense batches.

The kernel runs in Triton's interpreter without a GPU (tests/conftest.py turns it on), on small
shapes because it is slow; on a CUDA machine the ``cuda`` cases check the compiled kernel instead.
Whole-pixel boxes are checked against ``F.interpolate`` of the crop, fractional ones against the
documented geometry computed pixel by pixel.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastresize.functional import KERNEL_TOLERANCES, resize
from fastresize.ragged import RaggedImages, resized_crop
from tests.conftest import DEVICES, make_images, needs_triton, reference_value_map

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------ the container
DTYPES = [torch.uint8, torch.float32, torch.bfloat16]


def _random_images(sizes, channels, dtype, layout="NCHW", device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    images = []
    for h, w in sizes:
        x = torch.randint(0, 256, (channels, h, w), generator=g).to(dtype)
        images.append((x.permute(1, 2, 0).contiguous() if layout == "NHWC" else x).to(device))
    return images


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_pack_round_trips_every_image(device, dtype, layout, channels):
    sizes = [(5, 7), (1, 1), (12, 3), (4, 9)]
    images = _random_images(sizes, channels, dtype, layout, device)
    batch = RaggedImages.pack(images, layout=layout)
    assert len(batch) == 4 and batch.sizes == sizes and batch.channels == channels and batch.layout == layout
    assert batch.dtype == dtype and batch.device == images[0].device
    assert batch.data.shape == (RaggedImages.numel_of(images),) and batch.data.device == images[0].device
    assert batch.table.dtype == torch.int64 and batch.table.device.type == "cpu"
    offsets = [0]
    for h, w in sizes[:-1]:
        offsets.append(offsets[-1] + channels * h * w)
    assert batch.table.tolist() == [[o, h, w] for o, (h, w) in zip(offsets, sizes, strict=True)]
    for i, image in enumerate(images):
        chw = image.permute(2, 0, 1) if layout == "NHWC" else image
        view = batch.image(i)
        assert view.shape == chw.shape and torch.equal(view, chw)
        assert view.data_ptr() == batch.data[offsets[i] :].data_ptr()  # a view, not a copy
    assert torch.equal(batch.image(-1), batch.image(3))


def test_pack_reads_strided_images():
    base = torch.arange(2 * 3 * 10 * 8, dtype=torch.float32).view(2, 3, 10, 8)
    images = [base[0, :, ::2, 1:], base[1].permute(1, 2, 0)[2:, :5]]  # NCHW view; HWC view
    nchw = RaggedImages.pack(images[:1])
    assert torch.equal(nchw.image(0), images[0])
    nhwc = RaggedImages.pack(images[1:], layout="NHWC")
    assert torch.equal(nhwc.image(0), images[1].permute(2, 0, 1))
    assert torch.equal(nhwc.data, images[1].reshape(-1))  # stored in HWC order


def test_pack_into_out_uses_its_front():
    images = _random_images([(3, 4), (2, 6)], 3, torch.uint8)
    out = torch.full((100,), 7, dtype=torch.uint8)
    batch = RaggedImages.pack(images, out=out)
    total = RaggedImages.numel_of(images)
    assert total == 3 * 12 + 3 * 12
    assert batch.data.data_ptr() == out.data_ptr() and batch.data.numel() == total
    assert torch.equal(out[:total], torch.cat([x.reshape(-1) for x in images]))
    assert (out[total:] == 7).all()  # the rest of the slot is untouched
    assert torch.equal(batch.image(1), images[1])


def test_constructor_accepts_a_hand_made_table():
    data = torch.arange(40, dtype=torch.float32)
    table = torch.tensor([[10, 2, 3], [0, 1, 5]])  # any order, gaps allowed
    batch = RaggedImages(data, table, channels=2)
    assert batch.sizes == [(2, 3), (1, 5)]
    assert torch.equal(batch.image(0), data[10:22].view(2, 2, 3))
    nhwc = RaggedImages(data, table, channels=2, layout="NHWC")
    assert torch.equal(nhwc.image(1), data[:10].view(1, 5, 2).permute(2, 0, 1))


def test_pickles_and_copies_keep_the_images():
    batch = RaggedImages.pack(_random_images([(3, 5), (6, 2)], 3, torch.uint8, "NHWC"), layout="NHWC")
    copy = pickle.loads(pickle.dumps(batch))
    assert copy.sizes == batch.sizes and copy.layout == "NHWC" and copy.channels == 3 and copy.dtype == batch.dtype
    assert torch.equal(copy.table, batch.table) and copy.data.data_ptr() != batch.data.data_ptr()
    for i in range(len(batch)):
        assert torch.equal(copy.image(i), batch.image(i))
    assert batch.to("cpu", non_blocking=True) is batch  # nothing to move


@pytest.mark.cuda
def test_to_cuda_and_pin_memory_keep_the_table_on_the_cpu():
    batch = RaggedImages.pack(_random_images([(3, 5), (6, 2)], 3, torch.uint8))
    pinned = batch.pin_memory()
    assert pinned.data.is_pinned() and pinned.table.device.type == "cpu"
    moved = pinned.to("cuda", non_blocking=True)
    assert moved.device.type == "cuda" and moved.table.device.type == "cpu"
    assert torch.equal(moved.image(1).cpu(), batch.image(1))


def test_repr_is_short():
    batch = RaggedImages.pack(_random_images([(3, 5)] * 6, 3, torch.uint8))
    text = repr(batch)
    assert text == (
        "RaggedImages(6 images [3x5, 3x5, 3x5, 3x5, ...], channels=3, torch.uint8, layout='NCHW', device=cpu)"
    )


def test_pack_refuses_bad_images():
    good = torch.zeros(3, 4, 4, dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"images must be a list or tuple of image tensors, got Tensor"):
        RaggedImages.pack(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"images must hold at least one image"):
        RaggedImages.pack([])
    with pytest.raises(TypeError, match=r"images\[1\] must be a torch.Tensor, got ndarray"):
        RaggedImages.pack([good, good.numpy()])
    with pytest.raises(ValueError, match=r"images\[1\] must be a 3-D image \(C, H, W\) .* got shape \(4, 4\)"):
        RaggedImages.pack([good, good[0]])
    with pytest.raises(ValueError, match=r"images\[2\] must be a 3-D image \(H, W, C\) in layout='NHWC'"):
        RaggedImages.pack([good, good, good[None]], layout="NHWC")
    with pytest.raises(ValueError, match=r"images\[1\] has 1 channels, torch.uint8 on cpu, but images\[0\] has 3"):
        RaggedImages.pack([good, good[:1]])
    with pytest.raises(ValueError, match=r"images\[1\] has 3 channels, torch.float32 on cpu, .* shares its"):
        RaggedImages.pack([good, good.float()])
    with pytest.raises(ValueError, match=r"images\[1\] must have at least one pixel and channel, got shape \(3, 0, 4"):
        RaggedImages.pack([good, good[:, :0]])
    with pytest.raises(ValueError, match=r"layout must be one of 'NCHW', 'NHWC'; got 'CHW'"):
        RaggedImages.pack([good], layout="CHW")


def test_pack_refuses_a_bad_out():
    images = [torch.zeros(3, 4, 4, dtype=torch.uint8)] * 2
    with pytest.raises(TypeError, match=r"out must be a 1-D torch.Tensor or None, got list"):
        RaggedImages.pack(images, out=[0] * 96)
    with pytest.raises(ValueError, match=r"out must be a contiguous 1-D tensor of torch.uint8 on cpu.*torch.float32"):
        RaggedImages.pack(images, out=torch.zeros(96))
    with pytest.raises(ValueError, match=r"out must be a contiguous 1-D tensor .* got shape \(2, 48\)"):
        RaggedImages.pack(images, out=torch.zeros(2, 48, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"out holds 95 elements, but the images need 96"):
        RaggedImages.pack(images, out=torch.zeros(95, dtype=torch.uint8))


def test_numel_of_refuses_non_tensors():
    with pytest.raises(TypeError, match=r"images must be a list or tuple of image tensors, got Tensor"):
        RaggedImages.numel_of(torch.zeros(2, 3, 4, 4))
    with pytest.raises(TypeError, match=r"images\[0\] must be a torch.Tensor, got int"):
        RaggedImages.numel_of([3])


def test_constructor_refuses_bad_arguments():
    data, table = torch.zeros(40), torch.tensor([[0, 2, 3]])
    with pytest.raises(TypeError, match=r"data must be a 1-D torch.Tensor, got list"):
        RaggedImages([0.0] * 40, table, 2)
    with pytest.raises(ValueError, match=r"data must be a contiguous 1-D tensor, got shape \(4, 10\)"):
        RaggedImages(data.view(4, 10), table, 2)
    with pytest.raises(ValueError, match=r"data must be a contiguous 1-D .* shape \(20,\) with strides \(2,\)"):
        RaggedImages(data[::2], table, 2)
    with pytest.raises(TypeError, match=r"table must be a \(B, 3\) int64 torch.Tensor, got list"):
        RaggedImages(data, [[0, 2, 3]], 2)
    with pytest.raises(TypeError, match=r"table must be int64, got torch.int32; pass table.long\(\)"):
        RaggedImages(data, table.int(), 2)
    with pytest.raises(ValueError, match=r"table must be \(B, 3\) with B >= 1 rows .* got shape \(0, 3\)"):
        RaggedImages(data, table[:0], 2)
    with pytest.raises(ValueError, match=r"table must be \(B, 3\) .* got shape \(3,\)"):
        RaggedImages(data, table[0], 2)
    with pytest.raises(TypeError, match=r"channels must be an int, got 2.0"):
        RaggedImages(data, table, 2.0)
    with pytest.raises(ValueError, match=r"channels must be an int >= 1, got 0"):
        RaggedImages(data, table, 0)
    with pytest.raises(ValueError, match=r"layout must be one of 'NCHW', 'NHWC'; got 'HWC'"):
        RaggedImages(data, table, 2, layout="HWC")
    bad_rows = {
        "past the end": [[30, 2, 3]],
        "negative offset": [[-1, 2, 3]],
        "no rows": [[0, 0, 3]],
        "no columns": [[0, 2, 0]],
    }
    for rows in bad_rows.values():
        with pytest.raises(ValueError, match=r"table\[0\] = \[offset=.*\] is not an image of 2 channels inside data"):
            RaggedImages(data, torch.tensor(rows), 2)
    with pytest.raises(ValueError, match=r"table\[1\] = \[offset=35, height=1, width=3\]"):
        RaggedImages(data, torch.tensor([[0, 2, 3], [35, 1, 3]]), 2)


@pytest.mark.cuda
def test_constructor_refuses_a_table_on_the_device():
    with pytest.raises(ValueError, match=r"table must stay on the CPU, got it on cuda:0; pass table.cpu\(\)"):
        RaggedImages(torch.zeros(40), torch.tensor([[0, 2, 3]], device="cuda"), 2)


def test_image_refuses_bad_indices():
    batch = RaggedImages.pack([torch.zeros(1, 2, 2)] * 3)
    with pytest.raises(IndexError, match=r"index 3 is out of range for 3 images"):
        batch.image(3)
    with pytest.raises(IndexError, match=r"index -4 is out of range for 3 images"):
        batch.image(-4)
    with pytest.raises(TypeError, match=r"index must be an int, got 1.0"):
        batch.image(1.0)


# ------------------------------------------------------------------------------ resized_crop
KERNEL_DTYPES = [torch.uint8, torch.float32, torch.float16, torch.bfloat16]
MODES = ["bicubic", "bilinear", "nearest"]


@pytest.fixture(params=[pytest.param("cpu", id="interpreter"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)])
def kernel_device(request: pytest.FixtureRequest) -> torch.device:
    """Where the kernel runs: CPU tensors in Triton's interpreter, or the compiled kernel on CUDA."""
    if request.param == "cpu":
        request.getfixturevalue("interpret")
    return torch.device(request.param)


def _ragged(channels, dtype, layout="NCHW", device="cpu", seed=0, count=3, sides=(3, 20)):
    """A packed batch of ``count`` random images with sides in ``[sides[0], sides[1])``."""
    g = torch.Generator().manual_seed(seed)
    sizes = [tuple(torch.randint(*sides, (2,), generator=g).tolist()) for _ in range(count)]
    images = []
    for h, w in sizes:
        x = torch.randint(0, 256, (channels, h, w), generator=g, dtype=torch.uint8)
        x = x if dtype == torch.uint8 else (torch.rand((channels, h, w), generator=g)).to(dtype)
        images.append(x.permute(1, 2, 0).contiguous() if layout == "NHWC" else x)
    return RaggedImages.pack([x.to(device) for x in images], layout=layout)


def _boxes(sizes, seed=0, whole=True):
    """One random box inside each image: whole pixels, or fractional corners."""
    g = torch.Generator().manual_seed(seed)
    boxes = []
    for h, w in sizes:
        box = []
        for side in (w, h):
            if whole:
                start = int(torch.randint(0, side, (1,), generator=g))
                end = int(torch.randint(start + 1, side + 1, (1,), generator=g))
            else:
                start = float(torch.rand(1, generator=g)) * (side - 0.5)
                end = start + 0.25 + float(torch.rand(1, generator=g)) * (side - start - 0.25)
            box.append((start, end))
        boxes.append([box[0][0], box[1][0], box[0][1], box[1][1]])
    return torch.tensor(boxes, dtype=torch.int64 if whole else torch.float64)


def _crop_reference(image, box, size, mode, antialias=False):
    """The contract for a box of whole pixels: F.interpolate of the crop, in float32."""
    x0, y0, x1, y1 = (int(v) for v in box)
    crop = image[:, y0:y1, x0:x1][None].float()
    if mode == "nearest":
        return F.interpolate(crop, size=size, mode="nearest-exact")[0].double()
    return F.interpolate(crop, size=size, mode=mode, align_corners=False, antialias=antialias)[0].double()


def _taps(start, length, covered, size, mode):
    """Per output index, the (pixel, weight) taps of the documented geometry, one pixel at a time."""

    def cubic(d, a=-0.75):
        d = abs(d)
        return ((a + 2) * d - (a + 3)) * d * d + 1 if d < 1 else ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    rows = []
    for o in range(size):
        if mode == "nearest":
            taps = [(math.floor(start + (o + 0.5) * length / size), 1.0)]
        else:
            p = start + (o + 0.5) * length / size - 0.5
            f, t = math.floor(p), p - math.floor(p)
            if mode == "bilinear":
                taps = [(f, 1 - t), (f + 1, t)]
            else:
                taps = [(f + k, cubic(t - k)) for k in (-1, 0, 1, 2)]
        rows.append([(min(max(i, 0), covered - 1), w) for i, w in taps])
    return rows


def _fractional_reference(image, box, size, mode):
    """The documented geometry for any box, pixel by pixel in float64 (small images only)."""
    x0, y0, x1, y1 = box
    top, left = math.floor(y0), math.floor(x0)
    crop = image[:, top : math.ceil(y1), left : math.ceil(x1)].double()
    ys = _taps(y0 - top, y1 - y0, crop.shape[1], size[0], mode)
    xs = _taps(x0 - left, x1 - x0, crop.shape[2], size[1], mode)
    out = torch.zeros(crop.shape[0], *size, dtype=torch.float64)
    for i, row_taps in enumerate(ys):
        for j, column_taps in enumerate(xs):
            for r, wr in row_taps:
                for q, wq in column_taps:
                    out[:, i, j] += wr * wq * crop[:, r, q]
    return out


def _assert_close(out, expected, out_dtype, width=1.0):
    """The kernel's tolerances (KERNEL_TOLERANCES): float atol per unit of the range's width, uint8 in levels."""
    assert out.dtype == out_dtype and out.is_contiguous()
    atol, rtol = KERNEL_TOLERANCES[out_dtype]
    atol *= width if out_dtype.is_floating_point else 1.0
    torch.testing.assert_close(out.double(), expected.double(), atol=atol, rtol=rtol)


def _expected(batch, boxes, size, mode, out_dtype, value_range, whole=True, antialias=False):
    crops = []
    for i, box in enumerate(boxes.tolist()):
        image = batch.image(i).cpu()
        y = (
            _crop_reference(image, box, size, mode, antialias)
            if whole
            else _fractional_reference(image, box, size, mode)
        )
        crops.append(reference_value_map(y, batch.dtype, out_dtype, value_range))
    return torch.stack(crops)


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(17, 13), (4, 6)], ids=["up", "down"])
def test_kernel_whole_boxes_equal_interpolate_of_the_crop(kernel_device, channels, layout, mode, size):
    batch = _ragged(channels, torch.float32, layout, kernel_device, seed=channels)
    boxes = _boxes(batch.sizes, seed=channels)
    out = resized_crop(batch, boxes, size, interpolation=mode, backend="triton")
    assert out.shape == (3, channels, *size) and out.device.type == kernel_device.type
    _assert_close(out.cpu(), _expected(batch, boxes, size, mode, torch.float32, None), torch.float32)


@pytest.mark.parametrize("in_dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("out_dtype", KERNEL_DTYPES)
def test_kernel_every_dtype_pair(kernel_device, in_dtype, out_dtype):
    batch = _ragged(3, in_dtype, "NHWC", kernel_device, seed=5)
    boxes = _boxes(batch.sizes, seed=5)
    converts = (in_dtype == torch.uint8) != (out_dtype == torch.uint8)
    value_range = (0.0, 1.0) if converts or out_dtype.is_floating_point else None
    out = resized_crop(batch, boxes, (9, 7), value_range=value_range, dtype=out_dtype, backend="triton")
    _assert_close(out.cpu(), _expected(batch, boxes, (9, 7), "bicubic", out_dtype, value_range), out_dtype)


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_kernel_uint8_to_float_maps_the_range(kernel_device, value_range, layout):
    batch = _ragged(3, torch.uint8, layout, kernel_device, seed=2, count=4)
    boxes = _boxes(batch.sizes, seed=2)
    out = resized_crop(batch, boxes, (11, 8), value_range=value_range, dtype=torch.float32, backend="triton")
    expected = _expected(batch, boxes, (11, 8), "bicubic", torch.float32, value_range)
    _assert_close(out.cpu(), expected, torch.float32, width=value_range[1] - value_range[0])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(13, 11), (3, 4)], ids=["up", "down"])
def test_kernel_fractional_boxes_follow_the_geometry(kernel_device, layout, mode, size):
    batch = _ragged(3, torch.float32, layout, kernel_device, seed=7, sides=(4, 14))
    boxes = _boxes(batch.sizes, seed=7, whole=False)
    assert not any(float(v).is_integer() for v in boxes.flatten().tolist())
    out = resized_crop(batch, boxes, size, interpolation=mode, backend="triton")
    _assert_close(out.cpu(), _expected(batch, boxes, size, mode, torch.float32, None, whole=False), torch.float32)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_kernel_reads_dense_batches_and_strided_views(kernel_device, layout):
    g = torch.Generator().manual_seed(3)
    dense = torch.rand(3, 3, 20, 30, generator=g)[:, :, 2:19, 5:]  # not contiguous
    images = dense.permute(0, 2, 3, 1) if layout == "NHWC" else dense
    boxes = _boxes([(17, 25)] * 3, seed=3)
    out = resized_crop(images.to(kernel_device), boxes, (9, 10), layout=layout, backend="triton")
    packed = RaggedImages.pack(list(dense))
    _assert_close(out.cpu(), _expected(packed, boxes, (9, 10), "bicubic", torch.float32, None), torch.float32)


def test_kernel_addresses_wide_images_in_int64(interpret, monkeypatch):
    from fastresize import _kernel

    batch = _ragged(3, torch.uint8, "NCHW", seed=4)
    boxes = _boxes(batch.sizes, seed=4)
    narrow = resized_crop(batch, boxes, (7, 9), backend="triton")
    launches = []
    launch = _kernel._crop_kernel.__getitem__
    monkeypatch.setattr(_kernel, "INT32_LIMIT", 1)
    monkeypatch.setattr(
        type(_kernel._crop_kernel),
        "__getitem__",
        lambda self, grid: lambda *args, **kwargs: launches.append(kwargs["WIDE"]) or launch(grid)(*args, **kwargs),
    )
    wide = resized_crop(batch, boxes, (7, 9), backend="triton")
    assert launches == [True] and torch.equal(wide, narrow)


def test_kernel_copies_boxes_of_the_output_size(kernel_device):
    batch = _ragged(3, torch.uint8, "NHWC", kernel_device, seed=9, sides=(8, 12))
    boxes = torch.tensor([[1, 2, 7, 7]] * 3)  # 5 rows, 6 columns
    out = resized_crop(batch, boxes, (5, 6), backend="triton")
    assert torch.equal(out.cpu(), torch.stack([batch.image(i)[:, 2:7, 1:7].cpu() for i in range(3)]))


# ------------------------------------------------------------------------------ the torch path
@pytest.mark.parametrize(
    ("mode", "antialias"),
    [("bicubic", False), ("bilinear", False), ("nearest", False), ("bicubic", True), ("bilinear", True)],
)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_torch_path_is_interpolate_of_the_crop(device, mode, antialias, layout):
    batch = _ragged(3, torch.float32, layout, device, seed=11, count=4, sides=(10, 40))
    boxes = _boxes(batch.sizes, seed=11)
    for size in [(6, 5), (23, 31)]:
        out = resized_crop(batch, boxes, size, interpolation=mode, antialias=antialias, backend="torch")
        for i, box in enumerate(boxes.tolist()):
            expected = _crop_reference(batch.image(i), box, size, mode, antialias).float()
            assert torch.equal(out[i], expected.to(device)), (size, i)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(13, 11), (3, 4)], ids=["up", "down"])
def test_torch_path_fractional_boxes_follow_the_geometry(device, mode, size):
    batch = _ragged(3, torch.float32, "NHWC", device, seed=8, sides=(4, 14))
    boxes = _boxes(batch.sizes, seed=8, whole=False)
    out = resized_crop(batch, boxes, size, interpolation=mode, backend="torch")
    expected = _expected(batch, boxes, size, mode, torch.float32, None, whole=False)
    _assert_close(out.cpu(), expected, torch.float32)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize(("side", "size"), [(40, 9), (40, 19), (9, 40)], ids=["4x down", "2x down", "up"])
def test_antialias_weights_of_fractional_boxes_are_pytorchs_for_whole_ones(mode, side, size):
    """Fractional boxes with antialias use explicit weights; on whole boxes those give F.interpolate's result."""
    from fastresize.ragged import _weights

    x = torch.rand(1, 2, side, side, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = _weights(0.0, float(side), side, size, mode, antialias=True)
    expected = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
    torch.testing.assert_close(w @ x @ w.T, expected, atol=1e-12, rtol=0)


def test_antialias_on_fractional_boxes_sits_between_its_whole_neighbours():
    """A box moved by a fraction of a pixel gives a result between the two whole-pixel boxes around it."""
    x = torch.linspace(0, 1, 40).repeat(2, 40, 1)  # a horizontal ramp: the result moves monotonically
    batch = RaggedImages.pack([x])
    out = {
        shift: resized_crop(batch, torch.tensor([[shift, 0.0, 32 + shift, 40.0]]), (10, 8), antialias=True)
        for shift in (2.0, 2.25, 3.0)
    }
    assert (out[2.0] < out[2.25]).all() and (out[2.25] < out[3.0]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_whole_image_boxes_equal_resize(device):
    images = make_images((2, 3, 24, 20), torch.uint8, device, layout="NHWC")
    boxes = torch.tensor([[0, 0, 20, 24]] * 2)
    for kwargs in ({}, {"value_range": (0, 1), "dtype": torch.float32}, {"antialias": True}):
        expected = resize(images, (12, 9), layout="NHWC", backend="torch", **kwargs)
        assert torch.equal(resized_crop(images, boxes, (12, 9), layout="NHWC", backend="torch", **kwargs), expected)


@pytest.mark.parametrize("in_dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("whole", [True, False], ids=["whole", "fractional"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_torch_and_triton_agree(kernel_device, in_dtype, whole, layout):
    batch = _ragged(3, in_dtype, layout, kernel_device, seed=13, count=4, sides=(5, 24))
    boxes = _boxes(batch.sizes, seed=13, whole=whole)
    for out_dtype, value_range in [(torch.uint8, None if in_dtype == torch.uint8 else (0, 1)), (torch.float32, (0, 1))]:
        kwargs = {"value_range": value_range, "dtype": out_dtype}
        by_torch = resized_crop(batch, boxes, (10, 12), backend="torch", **kwargs)
        by_triton = resized_crop(batch, boxes, (10, 12), backend="triton", **kwargs)
        _assert_close(by_triton.cpu(), by_torch.cpu(), out_dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_output_is_new_detached_and_the_input_untouched(device):
    images = make_images((2, 3, 10, 12), torch.float32, device).requires_grad_()
    before = images.detach().clone()
    out = resized_crop(images, torch.tensor([[0, 0, 12, 10], [1, 1, 5, 5]]), (10, 12), value_range=(0, 1))
    assert not out.requires_grad and out.is_contiguous() and out.data_ptr() != images.data_ptr()
    assert torch.equal(out[0], before[0]) and torch.equal(images.detach(), before)


def test_auto_runs_torch_on_the_cpu_and_empty_batches_give_empty_outputs():
    batch = _ragged(3, torch.uint8, seed=1)
    boxes = _boxes(batch.sizes, seed=1)
    assert torch.equal(resized_crop(batch, boxes, 8), resized_crop(batch, boxes, 8, backend="torch"))
    empty = resized_crop(torch.zeros(0, 3, 8, 8), torch.zeros(0, 4), (5, 6))
    assert empty.shape == (0, 3, 5, 6)


def test_resized_crop_refuses_bad_boxes():
    batch = RaggedImages.pack([torch.zeros(3, 10, 20), torch.zeros(3, 30, 5)])
    with pytest.raises(TypeError, match=r"boxes must be a \(B, 4\) tensor of xyxy pixel boxes, got list"):
        resized_crop(batch, [[0, 0, 5, 5]] * 2, 8)
    with pytest.raises(TypeError, match=r"boxes must hold integer or float pixel coordinates, got torch.bool"):
        resized_crop(batch, torch.ones(2, 4, dtype=torch.bool), 8)
    with pytest.raises(ValueError, match=r"boxes must be \(2, 4\), one xyxy box per image, got shape \(1, 4\)"):
        resized_crop(batch, torch.tensor([[0, 0, 5, 5]]), 8)
    bad = {
        "past the right edge": [0, 0, 6, 5],
        "past the bottom": [0, 0, 5, 31],
        "negative": [-0.5, 0, 5, 5],
        "empty": [2, 3, 2, 8],
        "upside down": [0, 8, 5, 3],
        "nan": [0, 0, float("nan"), 5],
    }
    for box in bad.values():
        boxes = torch.tensor([[0, 0, 20, 10], box], dtype=torch.float64)
        with pytest.raises(ValueError, match=r"boxes\[1\] = \[.*\] must lie inside image 1 \(30x5\) with a positive"):
            resized_crop(batch, boxes, 8)


def test_resized_crop_refuses_bad_settings():
    batch = RaggedImages.pack([torch.zeros(3, 10, 20, dtype=torch.uint8)])
    boxes = torch.tensor([[0, 0, 20, 10]])
    with pytest.raises(ValueError, match=r"layout='NCHW' does not match the RaggedImages, which are 'NHWC'"):
        resized_crop(RaggedImages.pack([torch.zeros(10, 20, 3)], layout="NHWC"), boxes, 8, layout="NCHW")
    with pytest.raises(TypeError, match=r"images must have a dtype in .* got torch.int32"):
        resized_crop(RaggedImages.pack([torch.zeros(3, 10, 20, dtype=torch.int32)]), boxes, 8)
    with pytest.raises(ValueError, match=r"images must be at least 1 pixel high and wide, got shape \(1, 3, 0, 8\)"):
        resized_crop(torch.zeros(1, 3, 0, 8), boxes, 8)
    with pytest.raises(ValueError, match=r"size must be an int >= 1, got 0"):
        resized_crop(batch, boxes, 0)
    with pytest.raises(ValueError, match=r"converting torch.uint8 to torch.float32 needs value_range"):
        resized_crop(batch, boxes, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"antialias=True needs interpolation='bicubic' or 'bilinear'"):
        resized_crop(batch, boxes, 8, antialias=True, interpolation="nearest")
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'cuda'"):
        resized_crop(batch, boxes, 8, backend="cuda")


@needs_triton
def test_triton_refuses_what_it_cannot_run(interpret):
    batch = RaggedImages.pack([torch.zeros(3, 10, 20)])
    boxes = torch.tensor([[0, 0, 20, 10]])
    with pytest.raises(ValueError, match=r"backend='triton' cannot run this call: antialias=True runs on PyTorch"):
        resized_crop(batch, boxes, 8, antialias=True, backend="triton")
    with pytest.raises(ValueError, match=r"backend='triton' cannot run this call: the kernel reads and writes"):
        resized_crop(batch, boxes, 8, dtype=torch.float64, backend="triton")


@needs_triton
def test_crop_kernel_compiles_for_an_h100_close_to_the_dense_kernel():
    """Compiles both kernels ahead of time for sm_90 (CPU-only CI included): the crop kernel carries its
    window rows through the compiled loop, spills nothing, and issues at most 10% more instructions per
    value than the dense kernel on the same case."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    counts = {}
    for flags in ([], ["--crop"]):
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.kernel_instructions", *flags],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        counts[bool(flags)] = {line[:30].strip(): line[30:].split() for line in done.stdout.splitlines()[2:]}
    assert counts[True].keys() == counts[False].keys() and len(counts[True]) == 6
    taps = {"bicubic": 4, "bilinear": 2, "nearest": 1}
    for name, (registers, spilled, window, *per_value) in counts[True].items():
        assert int(spilled) == 0 and int(registers) <= 64, f"{name}: {registers} registers, {spilled} bytes spilled"
        assert int(window) == taps[name.split()[0]], f"{name}: the compiled loop carries {window} window rows"
        if per_value[-1] != "-":
            assert float(per_value[-1]) <= 1.1 * float(counts[False][name][-1]), (name, per_value, counts[False][name])
