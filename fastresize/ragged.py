"""Ragged batches: images of different heights and widths in one buffer, and one crop-and-resize over them.

:class:`RaggedImages` packs a batch of images that share their channel count and dtype but not
their size back to back in one 1-D tensor, with a small CPU table of where each image starts and
how large it is. A DataLoader worker packs a batch into one buffer (a shared-memory slot), the
buffer crosses to the device in one copy, and :func:`resized_crop` crops a box out of every image
and resizes it to one size: one Triton launch for the whole batch on CUDA, ``F.interpolate`` per
image elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from fastresize._batch import LAYOUTS, check_layout, to_nchw
from fastresize._checks import check_choice, check_int, check_size
from fastresize.functional import IMAGE_DTYPES, _check_flags, _kernel_runs, _resize_torch, _triton, _value_map


def _check_images(images: Any, layout: str) -> list[torch.Tensor]:
    """Check a sequence of images for :meth:`RaggedImages.pack` and return it as a list."""
    if isinstance(images, torch.Tensor) or not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise TypeError(
            f"images must be a list or tuple of image tensors, got {type(images).__name__}; "
            "a dense batch needs list(images)"
        )
    if len(images) == 0:
        raise ValueError("images must hold at least one image, got an empty sequence")
    form = "(H, W, C)" if layout == "NHWC" else "(C, H, W)"
    first = images[0]
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"images[{i}] must be a torch.Tensor, got {type(image).__name__}")
        if image.ndim != 3:
            raise ValueError(
                f"images[{i}] must be a 3-D image {form} in layout={layout!r}, got shape {tuple(image.shape)}"
            )
        channels = image.shape[-1] if layout == "NHWC" else image.shape[0]
        first_channels = first.shape[-1] if layout == "NHWC" else first.shape[0]
        if channels != first_channels or image.dtype != first.dtype or image.device != first.device:
            raise ValueError(
                f"images[{i}] has {channels} channels, {image.dtype} on {image.device}, but images[0] has "
                f"{first_channels} channels, {first.dtype} on {first.device}: every image of a ragged batch "
                "shares its channel count, dtype and device (convert them in the dataset)"
            )
        if 0 in image.shape:
            raise ValueError(f"images[{i}] must have at least one pixel and channel, got shape {tuple(image.shape)}")
    return list(images)


class RaggedImages:
    """Images of different heights and widths (same channels and dtype), packed back to back in one 1-D buffer.

    Image ``i`` occupies ``data[offset : offset + C * H * W]``, contiguous in ``layout``: CHW order
    for ``"NCHW"``, HWC order for ``"NHWC"`` (as images are decoded). ``table`` holds one row
    ``[offset, height, width]`` per image, in elements of ``data``, and stays on the CPU wherever
    ``data`` goes, so the sizes are known without a device synchronisation.

    Build one with :meth:`pack`. It pickles (DataLoader workers send it to the main process) and
    moves with :meth:`to` and :meth:`pin_memory` like a tensor.

    Args:
        data: The 1-D, contiguous buffer, of the images' dtype, on any device.
        table: ``(B, 3)`` int64 CPU tensor of ``[offset, height, width]`` per image; ``B >= 1``.
        channels: The images' channel count.
        layout: ``"NCHW"`` or ``"NHWC"``: the order of each image's elements in ``data``.

    Raises:
        TypeError: ``data`` or ``table`` is not a tensor, a wrong table dtype or a non-int ``channels``.
        ValueError: a wrong rank or shape, a table off the CPU, an empty table, an image of no
            pixels, or an image reaching outside ``data``.

    Example:
        >>> batch = RaggedImages.pack([torch.zeros(3, 4, 6), torch.ones(3, 5, 2)])
        >>> len(batch), batch.sizes, batch.table.tolist()
        (2, [(4, 6), (5, 2)], [[0, 4, 6], [72, 5, 2]])
        >>> tuple(batch.image(1).shape), bool(batch.image(1).eq(1).all())
        ((3, 5, 2), True)
    """

    def __init__(self, data: torch.Tensor, table: torch.Tensor, channels: int, layout: str = "NCHW") -> None:
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"data must be a 1-D torch.Tensor, got {type(data).__name__}")
        if data.ndim != 1 or not data.is_contiguous():
            raise ValueError(
                f"data must be a contiguous 1-D tensor, got shape {tuple(data.shape)} with strides "
                f"{data.stride()}; pass data.contiguous().view(-1)"
            )
        if not isinstance(table, torch.Tensor):
            raise TypeError(f"table must be a (B, 3) int64 torch.Tensor, got {type(table).__name__}")
        if table.dtype != torch.int64:
            raise TypeError(f"table must be int64, got {table.dtype}; pass table.long()")
        if table.device.type != "cpu":
            raise ValueError(f"table must stay on the CPU, got it on {table.device}; pass table.cpu()")
        if table.ndim != 2 or table.shape[1] != 3 or table.shape[0] == 0:
            raise ValueError(
                f"table must be (B, 3) with B >= 1 rows of [offset, height, width], got shape {tuple(table.shape)}"
            )
        channels = check_int("channels", channels, minimum=1)
        layout = check_choice("layout", layout, LAYOUTS)
        rows = table.tolist()
        for i, (offset, height, width) in enumerate(rows):
            if offset < 0 or height < 1 or width < 1 or offset + channels * height * width > data.numel():
                raise ValueError(
                    f"table[{i}] = [offset={offset}, height={height}, width={width}] is not an image of "
                    f"{channels} channels inside data of {data.numel()} elements: offsets must be >= 0, sides "
                    f">= 1 and offset + channels * height * width <= data.numel()"
                )
        self._set(data, table, channels, layout, rows)

    def _set(self, data: torch.Tensor, table: torch.Tensor, channels: int, layout: str, rows: list[list[int]]) -> None:
        self.data = data
        self.table = table
        self.channels = channels
        self.layout = layout
        self._rows = rows

    def _like(self, data: torch.Tensor) -> RaggedImages:
        """The same images over ``data`` (a copy of ``self.data``), without checking them again."""
        new = RaggedImages.__new__(RaggedImages)
        new._set(data, self.table, self.channels, self.layout, self._rows)
        return new

    @staticmethod
    def numel_of(images: Sequence[torch.Tensor]) -> int:
        """The number of elements :meth:`pack` needs for ``images``: the size of an ``out`` buffer.

        Raises:
            TypeError: ``images`` is not a sequence of tensors.
        """
        if isinstance(images, torch.Tensor) or not isinstance(images, Sequence):
            raise TypeError(f"images must be a list or tuple of image tensors, got {type(images).__name__}")
        total = 0
        for i, image in enumerate(images):
            if not isinstance(image, torch.Tensor):
                raise TypeError(f"images[{i}] must be a torch.Tensor, got {type(image).__name__}")
            total += image.numel()
        return total

    @classmethod
    def pack(
        cls, images: Sequence[torch.Tensor], layout: str = "NCHW", out: torch.Tensor | None = None
    ) -> RaggedImages:
        """Pack ``images`` back to back into one buffer, in one copy.

        Args:
            images: ``(C, H, W)`` images, or ``(H, W, C)`` with ``layout="NHWC"``; same channel
                count, dtype and device; any strides.
            layout: ``"NCHW"`` or ``"NHWC"``: how the images are given, and how they are stored.
            out: A 1-D contiguous buffer of the images' dtype and device with at least
                :meth:`numel_of` ``(images)`` elements (a preallocated shared-memory slot); the
                result's ``data`` is ``out[:total]``. ``None`` allocates a new buffer.

        Returns:
            The packed batch, the images in their order.

        Raises:
            TypeError: not a sequence of tensors, or ``out`` is not a tensor.
            ValueError: an image of another rank, channel count, dtype or device than ``images[0]``
                (the message names its index), an image of no pixels, or an ``out`` too small or
                of another dtype or device.
        """
        layout = check_choice("layout", layout, LAYOUTS)
        checked = _check_images(images, layout)
        first = checked[0]
        channels = first.shape[-1] if layout == "NHWC" else first.shape[0]
        sizes = [(x.shape[0], x.shape[1]) if layout == "NHWC" else (x.shape[1], x.shape[2]) for x in checked]
        numels = [x.numel() for x in checked]
        total = sum(numels)
        flat = [x.reshape(-1) for x in checked]  # a view for contiguous images
        if out is None:
            data = torch.cat(flat)
        else:
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"out must be a 1-D torch.Tensor or None, got {type(out).__name__}")
            if out.ndim != 1 or not out.is_contiguous() or out.dtype != first.dtype or out.device != first.device:
                raise ValueError(
                    f"out must be a contiguous 1-D tensor of {first.dtype} on {first.device}, like the images; got "
                    f"shape {tuple(out.shape)}, {out.dtype} on {out.device}"
                )
            if out.numel() < total:
                raise ValueError(
                    f"out holds {out.numel()} elements, but the images need {total} (RaggedImages.numel_of(images)); "
                    "pass a larger buffer, or out=None"
                )
            data = torch.cat(flat, out=out[:total])
        offsets, start = [], 0
        for n in numels:
            offsets.append(start)
            start += n
        rows = [[offset, h, w] for offset, (h, w) in zip(offsets, sizes, strict=True)]
        new = cls.__new__(cls)
        new._set(data, torch.tensor(rows, dtype=torch.int64), channels, layout, rows)
        return new

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def dtype(self) -> torch.dtype:
        """The images' dtype."""
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        """Where ``data`` is (the table is always on the CPU)."""
        return self.data.device

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Each image's ``(height, width)``, in order."""
        return [(h, w) for _, h, w in self._rows]

    def image(self, index: int) -> torch.Tensor:
        """The ``index``-th image as a ``(C, H, W)`` view of ``data`` (NHWC data: a permuted view, no copy).

        Raises:
            TypeError: ``index`` is not an int.
            IndexError: ``index`` is outside ``[-len(self), len(self))``.
        """
        i = check_int("index", index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is out of range for {len(self)} images")
        offset, h, w = self._rows[i]
        flat = self.data[offset : offset + self.channels * h * w]
        if self.layout == "NHWC":
            return flat.view(h, w, self.channels).permute(2, 0, 1)
        return flat.view(self.channels, h, w)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RaggedImages:
        """The same images with ``data`` on ``device`` (itself if it is there already); the table stays on the CPU."""
        data = self.data.to(device, non_blocking=non_blocking)
        return self if data is self.data else self._like(data)

    def pin_memory(self) -> RaggedImages:
        """The same images with ``data`` in page-locked memory (what a DataLoader with ``pin_memory=True`` calls)."""
        return self._like(self.data.pin_memory())

    def __repr__(self) -> str:
        sizes = ", ".join(f"{h}x{w}" for h, w in self.sizes[:4]) + (", ..." if len(self) > 4 else "")
        return (
            f"RaggedImages({len(self)} images [{sizes}], channels={self.channels}, {self.dtype}, "
            f"layout={self.layout!r}, device={self.device})"
        )


Box = tuple[float, float, float, float]


def _check_boxes(boxes: Any, sizes: Sequence[tuple[int, int]]) -> list[Box]:
    """Return ``boxes`` as a list of ``(x0, y0, x1, y1)`` floats, one per image, each inside its image."""
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a (B, 4) tensor of xyxy pixel boxes, got {type(boxes).__name__}")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"boxes must hold integer or float pixel coordinates, got {boxes.dtype}")
    if tuple(boxes.shape) != (len(sizes), 4):
        raise ValueError(f"boxes must be ({len(sizes)}, 4), one xyxy box per image, got shape {tuple(boxes.shape)}")
    checked: list[Box] = []
    for i, (box, (height, width)) in enumerate(zip(boxes.detach().cpu().double().tolist(), sizes, strict=True)):
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(
                f"boxes[{i}] = {box} must lie inside image {i} ({height}x{width}) with a positive width and "
                f"height: 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}"
            )
        checked.append((x0, y0, x1, y1))
    return checked


def _is_whole(box: Box) -> bool:
    return all(float(v).is_integer() for v in box)


def _cubic(x: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' cubic convolution at distances ``x``: PyTorch's bicubic (``a = -0.75``) or its antialias filter (-0.5)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _weights(start: float, length: float, covered: int, size: int, interpolation: str, antialias: bool) -> torch.Tensor:
    """The ``(size, covered)`` float64 matrix that resamples ``covered`` pixels to ``size``, for a box
    of ``length`` pixels starting ``start`` pixels into the first covered pixel.

    PyTorch's geometry for ``align_corners=False``, moved by ``start``: without antialias, output
    ``o`` samples position ``start + (o + 0.5) * scale - 0.5`` with taps clamped to the covered pixels
    (``nearest-exact``: pixel ``floor(start + (o + 0.5) * scale)``); with antialias, PyTorch's
    filter, widened by ``scale`` when shrinking and normalised over the covered pixels.
    """
    scale = length / size
    o = torch.arange(size, dtype=torch.float64)
    if interpolation == "nearest":
        first = (start + (o + 0.5) * scale).floor().long().clamp_(0, covered - 1)
        return torch.nn.functional.one_hot(first, covered).double()
    taps = 2 if interpolation == "bilinear" else 4
    if antialias:
        support = taps / 2 * max(scale, 1.0)
        centre = start + (o + 0.5) * scale
        low = (centre - support + 0.5).floor().clamp(min=0)
        high = (centre + support + 0.5).floor().clamp(max=covered)
        columns = low[:, None] + torch.arange(math.ceil(2 * support) + 2, dtype=torch.float64)
        x = (columns - centre[:, None] + 0.5) / max(scale, 1.0)
        w = (1 - x.abs()).clamp(min=0) if taps == 2 else _cubic(x, -0.5)
        w = w * (columns < high[:, None])
        w = w / w.sum(1, keepdim=True)
    else:
        position = start + (o + 0.5) * scale - 0.5
        t = (position - position.floor())[:, None]
        columns = position.floor()[:, None] + torch.arange(taps, dtype=torch.float64) - (taps // 2 - 1)
        w = torch.cat([1 - t, t], 1) if taps == 2 else _cubic(t - torch.arange(-1, 3, dtype=torch.float64), -0.75)
    matrix = torch.zeros(size, covered, dtype=torch.float64)
    # A tap past an edge weighs on the edge pixel, which is what clamping its index does.
    return matrix.scatter_add_(1, columns.clamp(0, covered - 1).long(), w)


def _crop_torch(
    image: torch.Tensor,
    box: Box,
    size: tuple[int, int],
    interpolation: str,
    antialias: bool,
    out_dtype: torch.dtype,
    value_map: tuple[float, float, tuple[float, float] | None],
) -> torch.Tensor:
    """One image's crop and resize by PyTorch: ``(C, H, W)`` in, ``(1, C, h, w)`` out."""
    x0, y0, x1, y1 = box
    top, left, bottom, right = math.floor(y0), math.floor(x0), math.ceil(y1), math.ceil(x1)
    crop = image[:, top:bottom, left:right]  # a view; channels-last stays so, F.interpolate is as fast on it
    if _is_whole(box):
        return _resize_torch(crop[None], size, interpolation, antialias, out_dtype, *value_map)
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    wy = _weights(y0 - top, y1 - y0, bottom - top, size[0], interpolation, antialias)
    wx = _weights(x0 - left, x1 - x0, right - left, size[1], interpolation, antialias)
    resampled = wy.to(crop.device, work) @ crop.to(work) @ wx.to(crop.device, work).T
    # Same size: only the value map, clamp and rounding remain, done in the working precision.
    mapped = out_dtype if out_dtype in (torch.uint8, work) else work
    return _resize_torch(resampled[None], size, interpolation, False, mapped, *value_map).to(out_dtype)


def resized_crop(
    images: torch.Tensor | RaggedImages,
    boxes: torch.Tensor,
    size: int | tuple[int, int],
    *,
    interpolation: str = "bicubic",
    antialias: bool = False,
    value_range: tuple[float, float] | None = None,
    dtype: torch.dtype | None = None,
    layout: str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Crop one box out of every image and resize it to ``size``: a dense NCHW batch out.

    Geometry: the image covers ``[0, W] x [0, H]`` and ``boxes`` are ``xyxy`` in its pixels. Output
    column ``o`` samples position ``x0 + (o + 0.5) * (x1 - x0) / w - 0.5`` (rows likewise), with taps
    clamped to the pixels the box covers (columns ``floor(x0)`` to ``ceil(x1) - 1``): for a box of
    whole pixels, the result is :func:`~fastresize.functional.resize` of
    ``image[:, y0:y1, x0:x1]``, that is ``F.interpolate(..., align_corners=False)`` of the crop.
    Values and dtypes follow :func:`~fastresize.functional.resize`: uint8 to float maps ``[0, 255]``
    onto ``value_range``, float output is clamped to ``value_range``, uint8 output is rounded
    (halves up) and clamped.

    Backends:
        * ``"triton"``: one kernel launch for the whole batch, reading a per-image table (start,
          strides, covered pixels, box). uint8, float16, bfloat16 and float32 in and out, NCHW or
          NHWC images read in place, no antialias. CUDA, or CPU tensors under ``TRITON_INTERPRET=1``.
        * ``"torch"``: per image, ``F.interpolate`` on the crop (boxes of whole pixels) or explicit
          resampling weights (fractional boxes); the reference. ``antialias=True`` always runs here,
          as ``F.interpolate(..., antialias=True)`` does it (torchvision's default when shrinking).
        * ``"auto"``: Triton for CUDA tensors where it is installed and supports the call, else torch.

    The two backends agree to float32 rounding; uint8 outputs differ by at most one level. uint8 is
    resized in float32 on the CPU too: PyTorch's native uint8 resize is about 7x faster there, but it
    rounds and clamps between its two passes, which moves sharp edges by up to tens of levels.

    Args:
        images: A dense ``(B, C, H, W)`` batch (``(B, H, W, C)`` with ``layout="NHWC"``) or
            :class:`RaggedImages`; uint8 or float.
        boxes: ``(B, 4)`` ``xyxy`` boxes in source pixels, integer or float, inside each image,
            with positive width and height. Keep them on the CPU: they are read on the host.
        size: The output size: ``s`` for ``(s, s)``, or ``(height, width)``.
        interpolation: ``"bicubic"`` (``A = -0.75``), ``"bilinear"`` or ``"nearest"`` (nearest-exact).
        antialias: Low-pass filter when shrinking, as PyTorch's (not for nearest).
        value_range: The ``(low, high)`` range of float data, e.g. ``(0, 1)``.
        dtype: Output dtype; ``None`` keeps the input's.
        layout: For a dense batch: ``"NCHW"``, ``"NHWC"`` or ``None`` (as
            :func:`~fastresize.functional.resize` reads it). For ``RaggedImages``: ``None`` or its own.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        The contiguous ``(B, C, height, width)`` batch in ``dtype``, detached.

    Raises:
        TypeError: an unsupported type or dtype.
        ValueError: a bad argument; a box outside its image or without area (the message names the
            image); a uint8/float conversion without ``value_range``; ``backend="triton"`` where the
            kernel cannot run (the message says why).

    Example:
        >>> black = torch.zeros(3, 50, 60, dtype=torch.uint8)
        >>> images = RaggedImages.pack([black[:, :40], black[:, :, :30]])  # 40x60 and 50x30
        >>> boxes = torch.tensor([[10, 0, 50, 40], [0, 10, 30, 40]])  # centre squares
        >>> out = resized_crop(images, boxes, 24, value_range=(0, 1), dtype=torch.float32)
        >>> out.shape, out.dtype
        (torch.Size([2, 3, 24, 24]), torch.float32)
    """
    if isinstance(images, RaggedImages):
        if layout is not None and check_layout(layout) != images.layout:
            raise ValueError(
                f"layout={layout!r} does not match the RaggedImages, which are {images.layout!r}; pass layout=None"
            )
        data, sizes, channels = images.data, images.sizes, images.channels
    else:
        data = to_nchw(images, check_layout(layout))
        sizes, channels = [(data.shape[2], data.shape[3])] * data.shape[0], data.shape[1]
    if data.dtype not in IMAGE_DTYPES:
        raise TypeError(f"images must have a dtype in {IMAGE_DTYPES}, got {data.dtype}")
    if isinstance(images, torch.Tensor) and 0 in data.shape[-2:]:
        raise ValueError(f"images must be at least 1 pixel high and wide, got shape {tuple(images.shape)}")
    checked = _check_boxes(boxes, sizes)
    out_size = check_size("size", size)
    flags = _check_flags(interpolation, antialias, value_range, dtype, backend)
    out_dtype = flags["dtype"] or data.dtype
    scale, offset, clamp = _value_map(data.dtype, out_dtype, flags["value_range"])
    if len(checked) == 0 or channels == 0:
        return torch.empty((len(checked), channels, *out_size), dtype=out_dtype, device=data.device)
    copies = all(_is_whole(b) and (b[3] - b[1], b[2] - b[0]) == out_size for b in checked)
    mode = "nearest" if copies else interpolation
    # The dense kernel's self-check, on an image's own strides: both kernels share their code.
    probe_like = _image(images, data, 0)[None]
    if _kernel_runs(data, probe_like, mode, antialias, out_dtype, (scale, offset), clamp, backend):
        kernel = _triton()
        return kernel.crop_resize(  # type: ignore[union-attr,no-any-return]
            data.detach(),
            _placements(images, data),
            checked,
            channels,
            out_size,
            mode,
            out_dtype,
            (scale, offset),
            clamp,
        )
    value_map = (scale, offset, clamp)
    with torch.no_grad():
        crops = [
            _crop_torch(_image(images, data, i), box, out_size, interpolation, antialias, out_dtype, value_map)
            for i, box in enumerate(checked)
        ]
        return torch.cat(crops)


def _image(images: torch.Tensor | RaggedImages, nchw: torch.Tensor, index: int) -> torch.Tensor:
    return images.image(index) if isinstance(images, RaggedImages) else nchw[index]


def _placements(images: torch.Tensor | RaggedImages, data: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """Each image's ``(offset, stride_c, stride_h, stride_w)`` in elements of ``data``."""
    if not isinstance(images, RaggedImages):
        stride_n, *strides = data.stride()
        return [(i * stride_n, *strides) for i in range(data.shape[0])]  # type: ignore[misc]
    c = images.channels
    if images.layout == "NHWC":
        return [(offset, 1, w * c, c) for offset, _, w in images._rows]
    return [(offset, h * w, w, 1) for offset, h, w in images._rows]
