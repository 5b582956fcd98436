"""Resizing as pure functions: images, masks, boxes and keypoints.

:func:`resize` is the one place where fastresize resizes images. It reads uint8 or float batches in
NCHW or NHWC and returns a contiguous NCHW batch in the requested dtype, detached from autograd.
On CUDA it runs one fused Triton kernel (one read, one write) when Triton is installed; elsewhere
it runs PyTorch's ``F.interpolate`` followed by the value-range map on the output.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from fastresize import _checks
from fastresize._batch import check_layout, to_nchw

IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The image dtypes :func:`resize` reads and writes."""
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
BACKENDS = ("auto", "triton", "torch")
RANGE_TOLERANCE = 0.1
"""How far, as a share of its width, data may stray outside ``value_range`` before the range check
raises (an earlier bicubic resize overshoots by up to about 0.15 on ``[0, 1]`` edges, clamped away
here; data in 0..255 declared as ``(0, 1)`` is far outside)."""

Points = torch.Tensor | Sequence[torch.Tensor]
"""Boxes or keypoints: one tensor for the batch, or one tensor per image (detection style)."""


def _range_error(value_range: tuple[float, float], lowest: float, highest: float) -> str | None:
    """Why images whose values span ``[lowest, highest]`` do not fit ``value_range``, or ``None`` if they do."""
    low, high = value_range
    margin = RANGE_TOLERANCE * (high - low)
    if low - margin <= lowest and highest <= high + margin:
        return None
    # A bicubic resize (the workers' crop, an earlier pipeline's) overshoots 0..255 data by up to
    # 0.45 of its range on either side at worst: such data still reads as 0..255.
    if high + margin < highest <= 1.45 * 255 + margin and lowest >= -0.45 * 255 - margin:
        fix = "they look like 0..255 data: divide the images by 255, or pass value_range=(0, 255)"
    elif lowest < low and lowest >= -1 - margin and highest <= 1 + margin:
        fix = "they look like [-1, 1] data: pass value_range=(-1, 1)"
    else:
        fix = "pass the range the data lies in as value_range=(low, high)"
    observed = f"observed min {lowest:.4g} and max {highest:.4g}"
    return f"value_range={value_range} does not match the images: {observed}; {fix}"


def _check_value_range(images: torch.Tensor, value_range: tuple[float, float] | None) -> None:
    """Check that float ``images`` lie in ``value_range`` (within :data:`RANGE_TOLERANCE`), with one device sync.

    Raises:
        ValueError: they do not (NaN included); the message shows the observed minimum and maximum and the fix.
    """
    if value_range is None or not images.is_floating_point() or images.numel() == 0:
        return
    error = _range_error(value_range, *torch.stack(torch.aminmax(images.detach())).tolist())
    if error is not None:
        raise ValueError(error)


def _check_flags(interpolation: str, antialias: bool, value_range: Any, dtype: Any, backend: str) -> dict[str, Any]:
    """Check :func:`resize`'s settings; :class:`~fastresize.BatchResize` checks them once and keeps the result."""
    _checks.check_choice("interpolation", interpolation, INTERPOLATIONS)
    _checks.check_choice("backend", backend, BACKENDS)
    if not isinstance(antialias, bool):
        raise TypeError(f"antialias must be a bool, got {antialias!r}")
    if antialias and interpolation == "nearest":
        raise ValueError("antialias=True needs interpolation='bicubic' or 'bilinear'; nearest has no antialias")
    return {
        "interpolation": interpolation,
        "antialias": antialias,
        "value_range": _checks.check_range("value_range", value_range),
        "dtype": _checks.check_dtype("dtype", dtype, IMAGE_DTYPES),
        "backend": backend,
    }


# Public in fastresize 0.2: each still works, with a DeprecationWarning.
_DEPRECATED: dict[str, Callable[..., Any]] = {
    "check_size": lambda size, name="size": _checks.check_size(name, size),
    "check_range": lambda value_range: _checks.check_range("value_range", value_range),
    "check_dtype": lambda dtype, name="dtype": _checks.check_dtype(name, dtype, IMAGE_DTYPES),
    "check_value_range": _check_value_range,
}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        warnings.warn(
            f"fastresize.functional.{name} is deprecated and will be removed: resize and BatchResize check "
            "their arguments themselves",
            DeprecationWarning,
            stacklevel=2,
        )
        return _DEPRECATED[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _triton() -> ModuleType | None:
    """The kernel module, or ``None`` where Triton is not installed."""
    try:
        from fastresize import _kernel
    except ImportError:
        return None
    return _kernel


def _triton_refusal(images: torch.Tensor, antialias: bool, out_dtype: torch.dtype) -> str | None:
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


_AUTO_DEVICES = ("cuda",)
"""The device types on which ``backend="auto"`` runs the kernel (tests add the interpreter's CPU)."""
KERNEL_TOLERANCES = {
    torch.float32: (1e-5, 0.0),
    torch.float16: (1e-5, 2.0**-10),
    torch.bfloat16: (1e-5, 2.0**-7),
    torch.uint8: (1.0, 0.0),
}
"""``(atol, rtol)`` of the kernel's output against a float32 resize, per output dtype: float atol is a
share of the value range's width (1 without one), uint8 atol is in levels; rtol covers a half type's
last place. The kernel's tests and its self-check both use them."""
_KERNEL_CHECKS: dict[tuple[Any, ...], str | None] = {}
"""The self-check's verdict per configuration: ``None`` (the kernel agrees) or why it is not used."""


def _kernel_check(
    images: torch.Tensor, mode: str, out_dtype: torch.dtype, affine: tuple[float, float], clamp: Any
) -> str | None:
    """The kernel's self-check: ``None`` if the kernel may run this configuration, else why not.

    On the first call of each (device, input dtype, output dtype, mode, layout), run the kernel and
    the torch path on a small probe and compare them within :data:`KERNEL_TOLERANCES`. A mismatch or
    a kernel that fails to compile or launch warns once and is remembered. ``FASTRESIZE_KERNEL_CHECK=0``
    skips the check, and so does a call that ``torch.compile`` traces.
    """
    layout = "NCHW" if images.stride(-1) == 1 else "NHWC"
    key = (images.device, images.dtype, out_dtype, mode, layout)
    if key in _KERNEL_CHECKS or os.environ.get("FASTRESIZE_KERNEL_CHECK") == "0" or torch.compiler.is_compiling():
        return _KERNEL_CHECKS.get(key)
    kernel = _triton()
    # 45 rows to 5 skips rows (9x smaller), 7 columns to 11 reads every edge tap; not square.
    shape, size = (2, 3, 45, 7), (5, 11)
    g = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) if images.dtype == torch.uint8 else None
    probe = (torch.rand(shape, generator=g).to(images.dtype) if probe is None else probe).to(images.device)
    probe = probe.contiguous(memory_format=torch.channels_last if layout == "NHWC" else torch.contiguous_format)
    width = clamp[1] - clamp[0] if clamp is not None and out_dtype.is_floating_point else 1.0
    atol, rtol = KERNEL_TOLERANCES[out_dtype]
    try:
        out = kernel.resize(probe, size, mode, out_dtype, affine, clamp).double()  # type: ignore[union-attr]
        exact = _resize_torch(
            probe if probe.dtype in (torch.uint8, torch.float32) else probe.float(), size, mode, False,
            out_dtype if out_dtype == torch.uint8 else torch.float32, *affine, clamp,
        ).double()  # fmt: skip
        error = (out - exact).abs()
        fits = bool((error <= atol * width + rtol * exact.abs()).all())  # NaN does not fit
        failure = None if fits else f"differs from PyTorch's resize by up to {float(error.max()):.3g}"
    except Exception as exception:  # a compiler or driver error: the torch path still works
        failure = f"failed to run ({type(exception).__name__}: {exception})"
    if failure is not None:
        where = torch.cuda.get_device_name(images.device) if images.is_cuda else f"{images.device.type} (interpreter)"
        version = kernel.triton.__version__  # type: ignore[union-attr]
        failure = (
            f"the Triton resize kernel {failure} on {where} with Triton {version}, for {images.dtype} -> "
            f"{out_dtype}, {mode}, {layout}"
        )
        warnings.warn(
            f"{failure}; fastresize resizes this configuration with PyTorch from now on (please report it; "
            "FASTRESIZE_KERNEL_CHECK=0 turns the check off)",
            RuntimeWarning,
            stacklevel=4,
        )
    _KERNEL_CHECKS[key] = failure
    return failure


def _kernel_runs(
    images: torch.Tensor,
    probe_like: torch.Tensor,
    mode: str,
    antialias: bool,
    out_dtype: torch.dtype,
    affine: tuple[float, float],
    clamp: Any,
    backend: str,
) -> bool:
    """Whether a call with ``backend`` runs on the Triton kernel (both kernels share this rule).

    ``"auto"`` uses it on the devices of :data:`_AUTO_DEVICES` where it can run and its self-check
    (:func:`_kernel_check`, on a batch laid out as ``probe_like``) passed; ``"triton"`` insists.

    Raises:
        ValueError: ``backend="triton"`` where the kernel cannot run; the message says why.
    """
    if backend == "torch":
        return False
    refusal = _triton_refusal(images, antialias, out_dtype)
    if refusal is None and (backend == "triton" or images.device.type in _AUTO_DEVICES):
        refusal = _kernel_check(probe_like, mode, out_dtype, affine, clamp)
        if refusal is None:
            return True
    if backend == "triton":
        raise ValueError(f"backend='triton' cannot run this call: {refusal}; use backend='auto' or 'torch'")
    return False


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
    validate: bool = False,
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

        The kernel checks itself: the first call of each (device, input dtype, output dtype, mode,
        layout) also runs it and the torch path on a small probe. If they differ, or the kernel fails
        to compile or launch, a ``RuntimeWarning`` names the GPU and the Triton version, ``"auto"``
        resizes that configuration with PyTorch from then on, and ``"triton"`` raises. The
        environment variable ``FASTRESIZE_KERNEL_CHECK=0`` turns the check off.

    Warning:
        **By default this function does not check that float images lie in** ``value_range``: a
        stateless call cannot read the device's answer later, and reading it now costs a device
        sync. 0..255 data declared as ``(0, 1)`` comes out clamped to almost all ones, silently.
        Pass ``validate=True`` to check every call (one ``aminmax`` and a sync), or use
        :class:`~fastresize.BatchResize` or the loader, which check every batch without a sync.

    Args:
        images: ``(B, C, H, W)``, or ``(B, H, W, C)`` with ``layout="NHWC"``; uint8 or float.
        size: The output size: ``s`` for ``(s, s)``, or ``(height, width)``.
        interpolation: ``"bicubic"`` (``A = -0.75``, PyTorch's), ``"bilinear"`` or ``"nearest"``.
        antialias: Low-pass filter when downscaling (PyTorch's native antialias; not for nearest).
        value_range: The ``(low, high)`` range of float data, e.g. ``(0, 1)`` or ``(-1, 1)``.
        dtype: Output dtype; ``None`` keeps the input's.
        layout: ``"NCHW"``, ``"NHWC"`` or ``None`` (NCHW, refusing shapes that look like NHWC).
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.
        validate: Check that float images lie in ``value_range`` (see the warning above).

    Returns:
        The resized ``(B, C, height, width)`` batch.

    Raises:
        TypeError: a non-tensor input, or an unsupported dtype.
        ValueError: a bad argument, a wrong rank or layout, images 0 pixels high or wide, a
            uint8/float conversion without ``value_range``, ``value_range`` on uint8 data that stays
            uint8, float images outside ``value_range`` with ``validate=True``, or ``backend="triton"``
            where the kernel cannot run (the message says why).

    Example:
        >>> images = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8)
        >>> out = resize(images, (32, 32), value_range=(0, 1), dtype=torch.float32)
        >>> out.shape, out.dtype, bool(out.min() >= 0 and out.max() <= 1)
        (torch.Size([2, 3, 32, 32]), torch.float32, True)
    """
    nchw = to_nchw(images, check_layout(layout))
    flags = _check_flags(interpolation, antialias, value_range, dtype, backend)
    if not isinstance(validate, bool):
        raise TypeError(f"validate must be True or False, got {validate!r}")
    if validate:
        _check_value_range(nchw, flags["value_range"])
    return _resize(nchw, _checks.check_size("size", size), **flags)


def _resize(
    images: torch.Tensor,
    size: tuple[int, int],
    *,
    interpolation: str,
    antialias: bool,
    value_range: tuple[float, float] | None,
    dtype: torch.dtype | None,
    backend: str,
) -> torch.Tensor:
    """:func:`resize` of an NCHW view with checked settings (:func:`_check_flags`): the images are checked here."""
    if images.dtype not in IMAGE_DTYPES:
        raise TypeError(f"images must have a dtype in {IMAGE_DTYPES}, got {images.dtype}")
    if 0 in images.shape[-2:]:
        raise ValueError(f"images must be at least 1 pixel high and wide, got shape {tuple(images.shape)}")
    out_dtype = dtype or images.dtype
    scale, offset, clamp = _value_map(images.dtype, out_dtype, value_range)
    same_size = tuple(images.shape[-2:]) == size
    if same_size and out_dtype == images.dtype and (clamp is None or out_dtype == torch.uint8):
        return images.detach().contiguous()  # a copy only where the input is NHWC
    mode = "nearest" if same_size else interpolation
    if _kernel_runs(images, images, mode, antialias, out_dtype, (scale, offset), clamp, backend):
        kernel = _triton()
        return kernel.resize(images.detach(), size, mode, out_dtype, (scale, offset), clamp)  # type: ignore[union-attr,no-any-return]
    with torch.no_grad():
        return _resize_torch(images, size, interpolation, antialias, out_dtype, scale, offset, clamp)


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
    out_size = _checks.check_size("size", size)
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
    (h_in, w_in), (h_out, w_out) = _checks.check_size("in_size", in_size), _checks.check_size("out_size", out_size)
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
    """Scale ``xy`` pixel keypoints, ``(..., 2)`` or a list of ``(N_i, 2)``, as :func:`scale_boxes` scales boxes."""
    sx, sy = _xy_scale(in_size, out_size)
    return _scale_points(keypoints, torch.tensor([sx, sy]), "keypoints")


from fastresize.ragged import resized_crop as resized_crop  # noqa: E402  (last: ragged uses this module's helpers)
