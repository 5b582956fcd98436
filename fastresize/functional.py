"""Resizing as pure functions: images, masks, boxes and keypoints.

:func:`resize` is the one place where fastresize resizes images. It reads uint8 or float batches in
NCHW or NHWC and returns a contiguous NCHW batch in the requested dtype, detached from autograd.
On CUDA it runs one fused Triton kernel (one read, one write) when Triton is installed; elsewhere
it runs PyTorch's ``F.interpolate`` followed by the value-range map on the output.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from fastresize._batch import check_layout, to_nchw
from fastresize._checks import check_choice, check_float, check_int

IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The image dtypes :func:`resize` reads and writes."""
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
BACKENDS = ("auto", "triton", "torch")
RANGE_TOLERANCE = 0.1
"""How far, as a share of its width, data may stray outside ``value_range`` before
:func:`check_value_range` raises (an earlier bicubic resize overshoots by up to about 0.15 on
``[0, 1]`` edges, clamped away here; data in 0..255 declared as ``(0, 1)`` is far outside)."""

Points = torch.Tensor | Sequence[torch.Tensor]
"""Boxes or keypoints: one tensor for the batch, or one tensor per image (detection style)."""


def check_size(size: Any, name: str = "size") -> tuple[int, int]:
    """Return ``size`` as ``(height, width)``: an int ``s`` means ``(s, s)``.

    Raises:
        TypeError: a side is not an int.
        ValueError: not an int or a pair, or a side below 1.
    """
    if type(size) is tuple and len(size) == 2 and type(size[0]) is int and type(size[1]) is int and min(size) > 0:
        return size  # the hot path: sizes from a policy or an earlier check
    pair = tuple(size) if isinstance(size, (tuple, list, torch.Size)) else (size, size)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {size!r}")
    return (check_int(name, pair[0], minimum=1), check_int(name, pair[1], minimum=1))


def check_range(value_range: Any) -> tuple[float, float] | None:
    """Return ``value_range`` as a ``(low, high)`` pair of floats with ``low < high``, or ``None``.

    Raises:
        ValueError: not a pair, not finite, or ``low >= high``.
    """
    if value_range is None:
        return None
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
        raise ValueError(f"value_range must be a (low, high) pair such as (0, 1), got {value_range!r}")
    low = check_float("value_range[0]", value_range[0])
    high = check_float("value_range[1]", value_range[1])
    if low >= high:
        raise ValueError(f"value_range must have low < high, got {value_range!r}")
    return (low, high)


def check_dtype(dtype: Any, name: str = "dtype") -> torch.dtype | None:
    """Return ``dtype`` if it is one of :data:`IMAGE_DTYPES` or ``None``.

    Raises:
        TypeError: any other value.
    """
    if dtype is not None and dtype not in IMAGE_DTYPES:
        raise TypeError(f"{name} must be one of {IMAGE_DTYPES} or None, got {dtype!r}")
    return dtype  # type: ignore[no-any-return]


def check_value_range(images: torch.Tensor, value_range: tuple[float, float] | None) -> None:
    """Check that float ``images`` lie in ``value_range``; uint8 images and ``None`` pass.

    One ``aminmax`` and one device synchronisation: call it on the first batches of a run, not on
    every batch. Values may stray outside the range by :data:`RANGE_TOLERANCE` of its width.

    Raises:
        ValueError: the images lie outside ``value_range`` (NaN included); the message shows the
            observed minimum and maximum and the likely fix.
    """
    if value_range is None or not images.is_floating_point() or images.numel() == 0:
        return
    low, high = value_range
    lowest, highest = torch.stack(torch.aminmax(images.detach())).tolist()  # one device sync
    margin = RANGE_TOLERANCE * (high - low)
    if low - margin <= lowest and highest <= high + margin:
        return
    if highest > high and highest <= 255 + margin and lowest >= -margin:
        fix = "they look like 0..255 data: divide the images by 255, or pass value_range=(0, 255)"
    elif lowest < low and lowest >= -1 - margin and highest <= 1 + margin:
        fix = "they look like [-1, 1] data: pass value_range=(-1, 1)"
    else:
        fix = "pass the range the data lies in as value_range=(low, high)"
    raise ValueError(
        f"value_range={value_range} does not match the images: observed min {lowest:.4g} and max {highest:.4g}; {fix}"
    )


@functools.cache
def _triton() -> ModuleType | None:
    """The kernel module, or ``None`` where Triton is not installed."""
    try:
        from fastresize import _kernel
    except ImportError:
        return None
    return _kernel


def _triton_refusal(images: torch.Tensor, interpolation: str, antialias: bool, out_dtype: torch.dtype) -> str | None:
    """Why the Triton kernel cannot run this call, or ``None`` if it can."""
    kernel = _triton()
    if kernel is None:
        return "Triton is not installed (pip install triton)"
    if antialias:
        return "antialias=True runs on PyTorch's native path"
    if images.dtype not in kernel.INPUT_DTYPES or out_dtype not in kernel.OUTPUT_DTYPES:
        return f"the kernel reads and writes {kernel.INPUT_DTYPES}, got {images.dtype} -> {out_dtype}"
    if images.device.type == "cpu" and not kernel.INTERPRETED:
        return (
            "the images are on the CPU, which Triton runs only in its interpreter "
            "(set TRITON_INTERPRET=1 before Triton is first imported)"
        )
    if images.device.type not in ("cuda", "cpu"):
        return f"the images are on {images.device.type}, the kernel runs on CUDA"
    return None


def _value_map(
    in_dtype: torch.dtype, out_dtype: torch.dtype, value_range: tuple[float, float] | None
) -> tuple[float, float, tuple[float, float] | None]:
    """The affine map ``x * scale + offset`` and the clamp that take input values to output values."""
    from_uint8, to_uint8 = in_dtype == torch.uint8, out_dtype == torch.uint8
    if from_uint8 != to_uint8 and value_range is None:
        raise ValueError(
            f"converting {in_dtype} to {out_dtype} needs value_range=(low, high), "
            "the float range that [0, 255] maps to, e.g. (0, 1) or (-1, 1)"
        )
    if from_uint8 and to_uint8 and value_range is not None:
        raise ValueError(
            f"value_range={value_range} is given, but uint8 images stay uint8: value_range maps uint8 to float, "
            "so pass dtype= as well (e.g. dtype=torch.float32), or drop value_range"
        )
    if value_range is None:
        return 1.0, 0.0, (0.0, 255.0) if to_uint8 else None
    low, high = value_range
    if from_uint8 and not to_uint8:
        return (high - low) / 255.0, low, (low, high)
    if to_uint8:
        return 255.0 / (high - low), -low * 255.0 / (high - low), (0.0, 255.0)
    return 1.0, 0.0, (low, high)


def resize(
    images: torch.Tensor,
    size: int | tuple[int, int],
    *,
    interpolation: str = "bicubic",
    antialias: bool = False,
    value_range: tuple[float, float] | None = None,
    dtype: torch.dtype | None = None,
    layout: str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Resize a batch of images and convert it to ``dtype``, in one pass on CUDA.

    Interpolation follows ``F.interpolate(mode=..., align_corners=False)`` (``"nearest"`` is
    PyTorch's ``nearest-exact``, the same pixel geometry), computed in float32 by the kernel and by
    the torch path for uint8 input (a half-precision batch resized by the torch path on CUDA stays
    in its precision, as ``F.interpolate`` would), optionally with
    PyTorch's native ``antialias``. The result is a new contiguous NCHW tensor cut from autograd,
    except that a call with nothing to do (same size, same dtype, no clamp, NCHW) returns the
    input itself, detached. An NHWC input always gives an NCHW output, copied if need be.

    Values and dtypes:
        * uint8 to float maps ``[0, 255]`` onto ``value_range``; float to uint8 maps it back.
          Bicubic weights sum to 1, so the map runs on the output, after the interpolation.
        * float output is clamped to ``value_range`` when one is given, resized or not: bicubic
          overshoots, and ``[0, 1]`` data would otherwise come out in about ``[-0.19, 1.15]``.
        * uint8 output is rounded (halves up) and clamped to ``[0, 255]``.

    Backends:
        * ``"triton"``: a fused kernel that reads the input once (NHWC in place, no permute copy)
          and writes the output once. Bicubic, bilinear and nearest without antialias; reads and
          writes uint8, float16, bfloat16 and float32; CUDA, or CPU tensors under Triton's
          interpreter (``TRITON_INTERPRET=1``, for tests).
        * ``"torch"``: converts to float, ``F.interpolate``, then the map and the clamp on the output.
        * ``"auto"``: Triton for CUDA tensors where it is installed and supports the call, else torch.

    Args:
        images: ``(B, C, H, W)``, or ``(B, H, W, C)`` with ``layout="NHWC"``; uint8 or float.
        size: The output size: ``s`` for ``(s, s)``, or ``(height, width)``.
        interpolation: ``"bicubic"`` (``A = -0.75``, PyTorch's), ``"bilinear"`` or ``"nearest"``.
        antialias: Low-pass filter when downscaling (PyTorch's native antialias; not for nearest).
        value_range: The ``(low, high)`` range of float data, e.g. ``(0, 1)`` or ``(-1, 1)``.
        dtype: Output dtype; ``None`` keeps the input's.
        layout: ``"NCHW"``, ``"NHWC"`` or ``None`` (NCHW, refusing shapes that look like NHWC).
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        The resized ``(B, C, height, width)`` batch.

    Raises:
        TypeError: a non-tensor input, or an unsupported dtype.
        ValueError: a bad argument, a wrong rank or layout, images 0 pixels high or wide, a
            uint8/float conversion without ``value_range``, ``value_range`` on uint8 data that stays
            uint8, or
            ``backend="triton"`` where the kernel cannot run (the message says why).

    Example:
        >>> images = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8)
        >>> out = resize(images, (32, 32), value_range=(0, 1), dtype=torch.float32)
        >>> out.shape, out.dtype, bool(out.min() >= 0 and out.max() <= 1)
        (torch.Size([2, 3, 32, 32]), torch.float32, True)
    """
    nchw = to_nchw(images, check_layout(layout))
    if nchw.dtype not in IMAGE_DTYPES:
        raise TypeError(f"images must have a dtype in {IMAGE_DTYPES}, got {nchw.dtype}")
    if 0 in nchw.shape[-2:]:
        raise ValueError(f"images must be at least 1 pixel high and wide, got shape {tuple(images.shape)}")
    out_size = check_size(size)
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    check_choice("backend", backend, BACKENDS)
    if not isinstance(antialias, bool):
        raise TypeError(f"antialias must be a bool, got {antialias!r}")
    if antialias and interpolation == "nearest":
        raise ValueError("antialias=True needs interpolation='bicubic' or 'bilinear'; nearest has no antialias")
    out_dtype = check_dtype(dtype) or nchw.dtype
    scale, offset, clamp = _value_map(nchw.dtype, out_dtype, check_range(value_range))
    same_size = tuple(nchw.shape[-2:]) == out_size
    if same_size and out_dtype == nchw.dtype and (clamp is None or out_dtype == torch.uint8):
        return nchw.detach().contiguous()  # a copy only where the input is NHWC
    if backend != "torch":
        refusal = _triton_refusal(nchw, interpolation, antialias, out_dtype)
        if refusal is None and (backend == "triton" or nchw.device.type == "cuda"):
            mode = "nearest" if same_size else interpolation
            kernel = _triton()
            return kernel.resize(nchw.detach(), out_size, mode, out_dtype, (scale, offset), clamp)  # type: ignore[union-attr,no-any-return]
        if backend == "triton":
            raise ValueError(f"backend='triton' cannot run this call: {refusal}; use backend='auto' or 'torch'")
    with torch.no_grad():
        return _resize_torch(nchw, out_size, interpolation, antialias, out_dtype, scale, offset, clamp)


def _resize_torch(
    images: torch.Tensor,
    size: tuple[int, int],
    interpolation: str,
    antialias: bool,
    out_dtype: torch.dtype,
    scale: float,
    offset: float,
    clamp: tuple[float, float] | None,
) -> torch.Tensor:
    """The PyTorch path: convert to the working dtype, resize, then map and clamp the output."""
    if images.numel() == 0:  # no images or no channels: F.interpolate refuses the latter
        return torch.empty((*images.shape[:2], *size), dtype=out_dtype, device=images.device)
    resized = tuple(images.shape[-2:]) != size
    x = _gather(images, size) if resized and interpolation == "nearest" else images  # any dtype
    # uint8 data goes through float32: in a half type, resized 0..255 values and the map would round twice.
    work = out_dtype if out_dtype.is_floating_point and images.is_floating_point() else torch.float32
    if x.device.type == "cpu" and work in (torch.float16, torch.bfloat16):
        work = torch.float32  # CPU half kernels lack antialias and are slow
    x = x.to(work)
    if resized and interpolation != "nearest":
        x = F.interpolate(x, size=size, mode=interpolation, align_corners=False, antialias=antialias)
    # In place once x is a tensor of our own; the caller's input is never written.
    owned = x is not images
    if scale != 1.0:
        x, owned = (x.mul_(scale) if owned else x * scale), True
    if offset != 0.0:
        x, owned = (x.add_(offset) if owned else x + offset), True
    if clamp is not None:
        x = x.clamp_(*clamp) if owned else x.clamp(*clamp)
    if out_dtype == torch.uint8:
        # Half up, as the kernel rounds (torch.round goes half to even): both backends give one answer.
        x = x.add_(0.5).floor_() if owned or clamp is not None else (x + 0.5).floor_()
    return x.to(out_dtype, memory_format=torch.contiguous_format)


def _nearest_indices(size_in: int, size_out: int, device: torch.device) -> torch.Tensor:
    """Source rows (or columns) of PyTorch's ``nearest-exact`` mode."""
    # float32 reproduces F.interpolate's own index arithmetic, so both agree exactly.
    centres = torch.arange(size_out, device=device, dtype=torch.float32) + 0.5
    return (centres * (size_in / size_out)).floor_().long().clamp_(max=size_in - 1)


def _gather(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    rows = _nearest_indices(x.shape[-2], size[0], x.device)
    cols = _nearest_indices(x.shape[-1], size[1], x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def resize_masks(masks: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize masks with nearest-neighbour (``nearest-exact``), so that labels stay labels.

    Args:
        masks: ``(B, H, W)`` or ``(B, C, H, W)``, any dtype (labels, bools, soft masks).
        size: The output size: ``s`` or ``(height, width)``.

    Returns:
        The resized masks, same dtype, detached; the input itself (detached) if the size is unchanged.

    Raises:
        TypeError: ``masks`` is not a tensor.
        ValueError: a wrong rank.
    """
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if masks.ndim not in (3, 4):
        raise ValueError(f"masks must be (B, H, W) or (B, C, H, W), got shape {tuple(masks.shape)}")
    out_size = check_size(size)
    if tuple(masks.shape[-2:]) == out_size:
        return masks.detach()
    return _gather(masks.detach(), out_size)


def _scale_points(points: Points, scale: torch.Tensor, name: str) -> Points:
    """Multiply the trailing coordinate axis of ``points`` by ``scale`` (x, y, x, y...)."""
    if isinstance(points, torch.Tensor):
        if points.ndim < 1 or points.shape[-1] != scale.numel():
            raise ValueError(f"{name} must have a last dimension of {scale.numel()}, got shape {tuple(points.shape)}")
        dtype = points.dtype if points.is_floating_point() else torch.float32
        return points.detach().to(dtype) * scale.to(points.device, dtype)
    if isinstance(points, Sequence) and not isinstance(points, (str, bytes)):
        return [_scale_points(p, scale, f"{name}[{i}]") for i, p in enumerate(points)]  # type: ignore[misc]
    raise TypeError(f"{name} must be a tensor or a list of tensors, got {type(points).__name__}")


def _xy_scale(in_size: Any, out_size: Any) -> tuple[float, float]:
    (h_in, w_in), (h_out, w_out) = check_size(in_size, "in_size"), check_size(out_size, "out_size")
    return w_out / w_in, h_out / h_in


def scale_boxes(boxes: Points, in_size: int | tuple[int, int], out_size: int | tuple[int, int]) -> Points:
    """Scale ``xyxy`` pixel boxes from an image of ``in_size`` to one of ``out_size``.

    The image covers ``[0, W] x [0, H]`` and pixel ``(i, j)`` covers ``[j, j + 1] x [i, i + 1]``
    (torchvision's convention, the geometry of ``align_corners=False``), so coordinates are
    multiplied by ``W_out / W_in`` and ``H_out / H_in``: a box covering the whole image still does.

    Args:
        boxes: ``(..., 4)``, or a list of ``(N_i, 4)`` (one per image).
        in_size: The images' ``(height, width)`` before the resize.
        out_size: Their ``(height, width)`` after it.

    Returns:
        The scaled boxes in the same form; integer boxes become float32.

    Raises:
        TypeError: not a tensor or a list of tensors.
        ValueError: a last dimension other than 4.
    """
    sx, sy = _xy_scale(in_size, out_size)
    return _scale_points(boxes, torch.tensor([sx, sy, sx, sy]), "boxes")


def scale_keypoints(keypoints: Points, in_size: int | tuple[int, int], out_size: int | tuple[int, int]) -> Points:
    """Scale ``xy`` pixel keypoints from an image of ``in_size`` to one of ``out_size``.

    Same convention as :func:`scale_boxes`.

    Args:
        keypoints: ``(..., 2)``, or a list of ``(N_i, 2)`` (one per image).
        in_size: The images' ``(height, width)`` before the resize.
        out_size: Their ``(height, width)`` after it.

    Returns:
        The scaled keypoints in the same form; integer keypoints become float32.

    Raises:
        TypeError: not a tensor or a list of tensors.
        ValueError: a last dimension other than 2.
    """
    sx, sy = _xy_scale(in_size, out_size)
    return _scale_points(keypoints, torch.tensor([sx, sy]), "keypoints")
