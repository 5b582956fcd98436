"""The functional API: resize's contract on both backends, the torch path, targets, bad input.

The Triton kernel's own tests are in tests/test_kernel.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from fastresize import functional
from fastresize.functional import resize, resize_masks, scale_boxes, scale_keypoints
from tests.conftest import BAD_INPUT, DEVICES, make_images, needs_triton

MODES = ["bicubic", "bilinear"]


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


def test_auto_runs_torch_on_the_cpu():
    x = make_images((2, 3, 24, 20), torch.uint8)
    kwargs = {"value_range": (0, 1), "dtype": torch.float32}
    assert torch.equal(resize(x, 16, **kwargs), resize(x, 16, backend="torch", **kwargs))


# ---------------------------------------------------------------------------------- the torch path
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_torch_path_equals_interpolate(device, mode):
    x = make_images((2, 3, 24, 40), torch.float32, device)
    expected = F.interpolate(x, size=(17, 50), mode=mode, align_corners=False)
    assert torch.equal(resize(x, (17, 50), interpolation=mode, backend="torch"), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_nhwc_input_gives_contiguous_nchw(device):
    x = make_images((2, 3, 24, 40), torch.uint8, device, layout="NHWC")
    for size in [(12, 20), (24, 40)]:
        out = resize(x, size, layout="NHWC")
        assert out.shape == (2, 3, *size) and out.is_contiguous()
        assert torch.equal(out, resize(x.permute(0, 3, 1, 2).contiguous(), size))


@pytest.mark.parametrize("device", DEVICES)
def test_nothing_to_do_returns_the_input_detached(device):
    x = make_images((2, 3, 24, 40), torch.float32, device).requires_grad_()
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
    x = make_images((2, 3, 24, 40), in_dtype, device) * (2 if in_dtype == torch.float32 else 1)
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
    x = make_images((2, 3, 24, 40), torch.uint8, device)
    as_float = resize(x, (24, 40), value_range=value_range, dtype=torch.float32)
    low, high = value_range
    assert torch.allclose(as_float, x.float() / 255 * (high - low) + low, atol=1e-6)
    assert torch.equal(resize(as_float, (24, 40), value_range=value_range, dtype=torch.uint8), x)


def test_antialias_is_pytorch_native():
    x = make_images((2, 3, 64, 64), torch.float32)
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
    with pytest.raises(ValueError, match=r"value_range=\(0.0, 1.0\) does not match the images: observed " + match):
        resize(images, 4, value_range=value_range, validate=True)


def test_value_range_check_passes_good_data():
    resize(torch.rand(2, 3, 8, 8) * 1.05, 4, value_range=(0.0, 1.0), validate=True)  # a small overshoot is tolerated
    uint8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    resize(uint8, 4, value_range=(0.0, 1.0), dtype=torch.float32, validate=True)  # uint8: not checked
    with pytest.raises(ValueError, match=r"observed min nan"):
        resize(torch.full((1, 1, 2, 2), float("nan")), 4, value_range=(0.0, 1.0), validate=True)


def test_resize_does_not_check_the_range_unless_asked():
    """The documented choice: a stateless call cannot defer the check, so by default it does not check."""
    x = torch.rand(2, 3, 16, 16) * 255  # 0..255 data declared as [0, 1]
    out = resize(x, 32, value_range=(0, 1))
    assert (out == 1.0).float().mean() > 0.95  # clamped to almost all ones, silently
    with pytest.raises(ValueError, match=r"observed min .* and max .*; they look like 0..255 data"):
        resize(x, 32, value_range=(0, 1), validate=True)


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("check_size", (3,), (3, 3)),
        ("check_range", ([0, 1],), (0.0, 1.0)),
        ("check_dtype", (torch.float16,), torch.float16),
        ("check_value_range", (torch.rand(1, 1, 2, 2), (0, 1)), None),
    ],
)
def test_old_public_checks_still_work_with_a_deprecation_warning(name, args, expected):
    with pytest.warns(DeprecationWarning, match=rf"fastresize.functional.{name} is deprecated"):
        check = getattr(functional, name)
    assert check(*args) == expected
    with pytest.warns(DeprecationWarning):
        exec(f"from fastresize.functional import {name}", {})
    with pytest.raises(AttributeError, match=r"module 'fastresize.functional' has no attribute 'check_shape'"):
        functional.check_shape  # noqa: B018


def test_old_check_value_range_still_raises():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ValueError, match=r"divide the images by 255"):
            functional.check_value_range(torch.rand(1, 1, 4, 4) * 255, (0, 1))
        with pytest.raises(ValueError, match=r"in_size must be an int >= 1"):
            functional.check_size(0, "in_size")


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
@pytest.mark.parametrize(("images", "kwargs", "error", "match"), BAD_INPUT)
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
