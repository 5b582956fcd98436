"""The fused Triton resize kernel: one read of the input, one write of the NCHW output.

A program computes ``ROWS`` output rows of ``BLOCK_W`` columns of one image, for every channel in
turn; the source columns and weights are computed once and serve every row and channel. Walking
down the rows, the program keeps a window of the last ``TAPS`` input rows, each already
interpolated along x, and reads an input row only when the window slides onto it. When shrinking
512 to 384 that is about 1.7 row reads per output row instead of 4 (bicubic), so about 7 gathered
loads per output value instead of 16. Where the image is at least ``TAPS`` wide, the column taps
are moved inside it (a tap past an edge gives its weight to the edge column, which is what
clamping the index does), so the taps of a row are consecutive and share one address.

The input is addressed through its strides, so an NHWC batch (an NCHW view with channel stride 1)
is read in place, without a permute copy; consecutive channels of a pixel then share cache lines.

Per output value the kernel interpolates in float32, applies ``value * scale + offset`` (the
value-range map, which commutes with interpolation because the weights sum to 1), clamps, rounds
for integer outputs and casts to the output dtype. Source positions and weights follow PyTorch's
``upsample_bicubic2d``/``upsample_bilinear2d``/``nearest-exact`` with ``align_corners=False``,
bicubic with ``A = -0.75`` and borders clamped, so results match ``F.interpolate`` in float32.

A second kernel, for :func:`crop_resize`, runs the same program over a ragged batch: each image
has its own start, strides, size and box, read from a small table on the device, so one launch
crops and resizes every image of the batch. A box may start and end inside pixels: its source
positions move by the fraction, and the taps stay inside the pixels it covers.

The module imports Triton; :mod:`fastresize.functional` imports it only when Triton is installed.
Under ``TRITON_INTERPRET=1`` (set before Triton is imported) the kernel runs on CPU tensors in
Triton's interpreter, which is how the tests check it without a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton  # type: ignore[import-untyped]
import triton.language as tl  # type: ignore[import-untyped]
from triton.runtime.interpreter import InterpretedFunction  # type: ignore[import-untyped]

TAPS = {"nearest": 1, "bilinear": 2, "bicubic": 4}
INPUT_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)
OUTPUT_DTYPES = INPUT_DTYPES
# Chosen by counting the instructions of the kernel compiled for sm_90 (python -m
# benchmarks.kernel_instructions), for uint8 to float32, 512 to 384. The design this replaced, 16
# loads per value and one value per thread, issued 131 instructions per value and took 88 us on an
# H100 (32x3x512x512), far from the 31 us that memory bandwidth allows and close to the about 60 us
# it takes to issue them. Here: 96 with 4 warps, 70 with 2 (a thread's two columns share the row's
# weights), 58 with 1 (but 64 registers and half the threads per SM). Not yet timed on a GPU:
# benchmarks/test_transform_bench.py::test_kernel_tiles times the alternatives side by side.
ROWS, BLOCK_W, NUM_WARPS = 8, 128, 2
# A crop table row: int64 [offset, stride_c, stride_h, stride_w, rows, columns], then four float32
# [scale_h, scale_w, shift_h, shift_w] in the last two int64 slots; one tensor, one copy to the device.
# (constexpr globals: a Triton function reads no other module variable).
TABLE_INTS, TABLE_FLOATS_AT = tl.constexpr(8), tl.constexpr(6)
INT32_LIMIT = 2**31
"""Images spanning this many elements or more are addressed with int64 offsets inside them."""


@triton.jit  # type: ignore[misc, untyped-decorator]
def _cubic(t, TAP: tl.constexpr):  # type: ignore[no-untyped-def]
    """Weight of tap ``TAP`` (0..3) at fraction ``t`` in [0, 1): PyTorch's cubic convolution, A = -0.75."""
    A = -0.75
    if TAP == 0:
        u = t + 1.0
        w = ((A * u - 5.0 * A) * u + 8.0 * A) * u - 4.0 * A
    elif TAP == 1:
        w = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0
    elif TAP == 2:
        u = 1.0 - t
        w = ((A + 2.0) * u - (A + 3.0)) * u * u + 1.0
    else:
        u = (1.0 - t) + 1.0
        w = ((A * u - 5.0 * A) * u + 8.0 * A) * u - 4.0 * A
    return w


@triton.jit  # type: ignore[misc, untyped-decorator]
def _source(o, scale, shift, size_in, TAPS: tl.constexpr, SHIFT: tl.constexpr):  # type: ignore[no-untyped-def]
    """First tap index (unclamped) and fraction of output index ``o``, as PyTorch computes them
    with ``align_corners=False``: nearest-exact, bilinear (negative positions clamped to 0) or bicubic.
    With ``SHIFT``, positions move by ``shift`` input pixels (a box starting inside a pixel)."""
    p = (o.to(tl.float32) + 0.5) * scale
    if TAPS == 1:
        if SHIFT:
            p += shift
        first = tl.minimum(p.to(tl.int32), size_in - 1)
        t = o.to(tl.float32) * 0.0
    elif TAPS == 2:
        f = p - 0.5
        if SHIFT:
            f += shift
        f = tl.maximum(f, 0.0)
        first = tl.minimum(f.to(tl.int32), size_in - 1)
        t = tl.minimum(tl.maximum(f - first.to(tl.float32), 0.0), 1.0)
    else:
        f = p - 0.5
        if SHIFT:
            f += shift
        first = tl.floor(f).to(tl.int32) - 1
        t = f - tl.floor(f)
    return first, t


@triton.jit  # type: ignore[misc, untyped-decorator]
def _load(pointers, UINT8_IN: tl.constexpr):  # type: ignore[no-untyped-def]
    v = tl.load(pointers)
    if UINT8_IN:
        # 2**23 + byte, read as a float, minus 2**23: exact, and cheaper than int-to-float conversions.
        v = (v.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
    return v.to(tl.float32)


@triton.jit  # type: ignore[misc, untyped-decorator]
def _window_weights(x0, xb, w_in, w0, w1, w2, w3, TAPS: tl.constexpr):  # type: ignore[no-untyped-def]
    """The weights of columns ``xb .. xb + TAPS - 1`` equivalent to taps ``x0 .. x0 + TAPS - 1``
    read with their indices clamped to the image: a tap past an edge adds its weight to the edge
    column. Reading a window that lies inside the image lets the taps share one address."""
    v0 = tl.zeros_like(w0)
    v1 = v0
    v2 = v0
    v3 = v0
    for k in tl.static_range(TAPS):
        if k == 0:
            w = w0
        elif k == 1:
            w = w1
        elif k == 2:
            w = w2
        else:
            w = w3
        m = tl.minimum(tl.maximum(x0 + k, 0), w_in - 1) - xb
        v0 += tl.where(m == 0, w, 0.0)
        v1 += tl.where(m == 1, w, 0.0)
        v2 += tl.where(m == 2, w, 0.0)
        v3 += tl.where(m == 3, w, 0.0)
    return v0, v1, v2, v3


@triton.jit  # type: ignore[misc, untyped-decorator]
def _row_start(base, r, h_in, stride_h):  # type: ignore[no-untyped-def]
    """Where input row ``r`` starts, clamped to the image: the border rule repeats edge rows."""
    return base + tl.minimum(tl.maximum(r, 0), h_in - 1) * stride_h


@triton.jit  # type: ignore[misc, untyped-decorator]
def _row(  # type: ignore[no-untyped-def]
    row, c0, c1, c2, c3, stride_w, wx0, wx1, wx2, wx3, TAPS: tl.constexpr, UINT8_IN: tl.constexpr, WINDOW: tl.constexpr
):
    """The input row that ``row`` points at, interpolated along x at the program's columns: taps at
    offsets ``c0 .. c3``, or with ``WINDOW`` at ``c0`` and the next ``TAPS - 1`` columns."""
    first = row + c0
    value = _load(first, UINT8_IN)
    if TAPS > 1:
        second = first + stride_w if WINDOW else row + c1
        value = wx0 * value + wx1 * _load(second, UINT8_IN)
    if TAPS > 2:
        third = first + 2 * stride_w if WINDOW else row + c2
        fourth = first + 3 * stride_w if WINDOW else row + c3
        value += wx2 * _load(third, UINT8_IN)
        value += wx3 * _load(fourth, UINT8_IN)
    return value


@triton.jit  # type: ignore[misc, untyped-decorator]
def _resize_image(  # type: ignore[no-untyped-def]
    image,
    dst,
    n,
    channels,
    h_in,
    w_in,
    h_out,
    w_out,
    stride_c,
    stride_h,
    stride_w,
    scale_h,
    scale_w,
    shift_h,
    shift_w,
    mul,
    add,
    low,
    high,
    TAPS: tl.constexpr,
    UINT8_IN: tl.constexpr,
    CLAMP: tl.constexpr,
    ROUND: tl.constexpr,
    WINDOW: tl.constexpr,
    SHIFT: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """One program's work: ``ROWS`` output rows of ``BLOCK_W`` columns of image ``n``, every channel,
    read from the ``h_in`` x ``w_in`` pixels that start at ``image``."""
    # TAPS: 1 nearest-exact, 2 bilinear, 4 bicubic (A = -0.75). WINDOW: the input is at least TAPS wide.
    first_row = tl.program_id(1) * ROWS
    rows = tl.minimum(h_out - first_row, ROWS)
    ox = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    inside = ox < w_out
    # Column offsets and weights, shared by every row and every channel.
    x0, tx = _source(ox, scale_w, shift_w, w_in, TAPS, SHIFT)
    if TAPS == 2:
        wx0, wx1, wx2, wx3 = 1.0 - tx, tx, tx, tx
    else:
        wx0, wx1, wx2, wx3 = _cubic(tx, 0), _cubic(tx, 1), _cubic(tx, 2), _cubic(tx, 3)
    if WINDOW and TAPS > 1:
        xb = tl.minimum(tl.maximum(x0, 0), w_in - TAPS)
        wx0, wx1, wx2, wx3 = _window_weights(x0, xb, w_in, wx0, wx1, wx2, wx3, TAPS)
        c0 = xb * stride_w
        c1, c2, c3 = c0, c0, c0  # unused: the taps follow c0
    else:
        c0 = tl.minimum(tl.maximum(x0, 0), w_in - 1) * stride_w
        c1 = tl.minimum(tl.maximum(x0 + 1, 0), w_in - 1) * stride_w
        c2 = tl.minimum(tl.maximum(x0 + 2, 0), w_in - 1) * stride_w
        c3 = tl.minimum(tl.maximum(x0 + 3, 0), w_in - 1) * stride_w
    # The window, per channel: input rows top + 1 .. top + TAPS (clamped to the image: edge rows
    # repeat), each interpolated along x. It starts empty, above the first output row's taps.
    first_tap, _ = _source(first_row, scale_h, shift_h, h_in, TAPS, SHIFT)
    for c in range(channels):
        base = image + c * stride_c
        out = dst + ((n * channels + c) * h_out + first_row) * w_out + ox
        # Four separate zeros: Triton carries through a loop only the names whose value the body
        # changes, and `h0 = h1` would change nothing if both started as one tensor (the compiled
        # loop then drops h0).
        top = first_tap - TAPS - 1
        h0 = tl.zeros([BLOCK_W], tl.float32)
        h1 = tl.zeros([BLOCK_W], tl.float32)
        h2 = tl.zeros([BLOCK_W], tl.float32)
        h3 = tl.zeros([BLOCK_W], tl.float32)
        for i in range(rows):
            y0, ty = _source(first_row + i, scale_h, shift_h, h_in, TAPS, SHIFT)
            # Slide the window down to rows y0 .. y0 + TAPS - 1; rows it would pass over entirely
            # (downscaling by more than TAPS) are not read.
            top = tl.maximum(top, y0 - TAPS - 1)
            while top < y0 - 1:
                top += 1
                new = _row(
                    _row_start(base, top + TAPS, h_in, stride_h),
                    c0,
                    c1,
                    c2,
                    c3,
                    stride_w,
                    wx0,
                    wx1,
                    wx2,
                    wx3,
                    TAPS,
                    UINT8_IN,
                    WINDOW,
                )
                if TAPS == 1:
                    h0 = new
                elif TAPS == 2:
                    h0, h1 = h1, new
                else:
                    h0, h1, h2, h3 = h1, h2, h3, new
            if TAPS == 1:
                value = h0
            elif TAPS == 2:
                value = (1.0 - ty) * h0 + ty * h1
            else:
                value = _cubic(ty, 0) * h0 + _cubic(ty, 1) * h1 + _cubic(ty, 2) * h2 + _cubic(ty, 3) * h3
            value = value * mul + add
            if CLAMP:
                value = tl.minimum(tl.maximum(value, low), high)
            if ROUND:
                value = tl.floor(value + 0.5)
            tl.store(out + i * w_out, value.to(dst.dtype.element_ty), mask=inside)


@triton.jit  # type: ignore[misc, untyped-decorator]
def _resize_kernel(  # type: ignore[no-untyped-def]
    src,
    dst,
    channels,
    h_in,
    w_in,
    h_out,
    w_out,
    stride_n,
    stride_c,
    stride_h,
    stride_w,
    scale_h,
    scale_w,
    mul,
    add,
    low,
    high,
    TAPS: tl.constexpr,
    UINT8_IN: tl.constexpr,
    CLAMP: tl.constexpr,
    ROUND: tl.constexpr,
    WINDOW: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """A dense batch: program ``(x, y, n)`` resizes one tile of image ``n``, at ``src + n * stride_n``."""
    n = tl.program_id(2).to(tl.int64)
    _resize_image(
        src + n * stride_n,
        dst,
        n,
        channels,
        h_in,
        w_in,
        h_out,
        w_out,
        stride_c,
        stride_h,
        stride_w,
        scale_h,
        scale_w,
        0.0,
        0.0,
        mul,
        add,
        low,
        high,
        TAPS,
        UINT8_IN,
        CLAMP,
        ROUND,
        WINDOW,
        False,
        ROWS,
        BLOCK_W,
    )


@triton.jit  # type: ignore[misc, untyped-decorator]
def _crop_kernel(  # type: ignore[no-untyped-def]
    src,
    dst,
    table,
    ftable,
    channels,
    stride_c,
    stride_w,
    h_out,
    w_out,
    mul,
    add,
    low,
    high,
    TAPS: tl.constexpr,
    UINT8_IN: tl.constexpr,
    CLAMP: tl.constexpr,
    ROUND: tl.constexpr,
    WINDOW: tl.constexpr,
    SHARED_C: tl.constexpr,
    SHARED_W: tl.constexpr,
    WIDE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """A ragged batch: program ``(x, y, n)`` resizes one tile of image ``n``'s box, which row ``n`` of
    the table describes (see :func:`crop_resize`). ``SHARED_C``/``SHARED_W``: every image has the
    channel/column stride ``stride_c``/``stride_w``, else the table's are read. ``WIDE``: an image
    spans :data:`INT32_LIMIT` elements or more, so offsets inside it need int64."""
    n = tl.program_id(2).to(tl.int64)
    entry = table + n * TABLE_INTS
    floats = ftable + n * (2 * TABLE_INTS) + 2 * TABLE_FLOATS_AT
    # Strides shared by every image come as arguments, like the dense kernel's: Triton then knows a
    # stride of 1 at compile time, and loaded ones cost up to 10% more instructions per value. Loaded
    # strides are int32 unless WIDE, as the dense kernel's are for any batch under 2**31 elements.
    stride_h = tl.load(entry + 2)
    if not WIDE:
        stride_h = stride_h.to(tl.int32)
    if not SHARED_C:
        stride_c = tl.load(entry + 1)
        if not WIDE:
            stride_c = stride_c.to(tl.int32)
    if not SHARED_W:
        stride_w = tl.load(entry + 3)
        if not WIDE:
            stride_w = stride_w.to(tl.int32)
    _resize_image(
        src + tl.load(entry),
        dst,
        n,
        channels,
        tl.load(entry + 4).to(tl.int32),
        tl.load(entry + 5).to(tl.int32),
        h_out,
        w_out,
        stride_c,
        stride_h,
        stride_w,
        tl.load(floats),
        tl.load(floats + 1),
        tl.load(floats + 2),
        tl.load(floats + 3),
        mul,
        add,
        low,
        high,
        TAPS,
        UINT8_IN,
        CLAMP,
        ROUND,
        WINDOW,
        True,
        ROWS,
        BLOCK_W,
    )


INTERPRETED = isinstance(_resize_kernel, InterpretedFunction)
"""Whether Triton runs the kernel in its CPU interpreter: ``TRITON_INTERPRET=1`` when Triton was first
imported (Triton decides this once, at import, for its own functions too)."""


def resize(
    images: torch.Tensor,
    size: tuple[int, int],
    mode: str,
    out_dtype: torch.dtype,
    affine: tuple[float, float],
    clamp: tuple[float, float] | None,
) -> torch.Tensor:
    """Resize an NCHW batch (any strides) into a new contiguous NCHW tensor of ``out_dtype``.

    Args:
        images: The input as an NCHW view; an NHWC batch is passed as its permuted view.
        size: The output ``(height, width)``.
        mode: ``"nearest"``, ``"bilinear"`` or ``"bicubic"``.
        out_dtype: The output dtype.
        affine: ``(scale, offset)`` applied to every interpolated value.
        clamp: ``(low, high)`` bounds after the affine map, or ``None``.

    Returns:
        The resized batch; integer outputs are rounded (half up) before the cast.
    """
    n, c, h_in, w_in = images.shape
    h_out, w_out = size
    out = torch.empty((n, c, h_out, w_out), dtype=out_dtype, device=images.device)
    if out.numel() == 0:
        return out
    low, high = clamp if clamp is not None else (0.0, 0.0)
    # Plain integer ceil-division: triton.cdiv goes through Triton's constexpr machinery, ~3 us a call.
    grid = (-(-w_out // BLOCK_W), -(-h_out // ROWS), n)
    _resize_kernel[grid](
        images,
        out,
        c,
        h_in,
        w_in,
        h_out,
        w_out,
        *images.stride(),
        float(h_in / h_out),
        float(w_in / w_out),
        float(affine[0]),
        float(affine[1]),
        float(low),
        float(high),
        TAPS=TAPS[mode],
        UINT8_IN=images.dtype == torch.uint8,
        CLAMP=clamp is not None,
        ROUND=not out_dtype.is_floating_point,
        WINDOW=w_in >= TAPS[mode],
        ROWS=ROWS,
        BLOCK_W=BLOCK_W,
        num_warps=NUM_WARPS,
        enable_fp_fusion=True,  # multiply-adds as FMAs: faster, and no less exact
    )
    return out


def crop_resize(
    src: torch.Tensor,
    images: Sequence[tuple[int, int, int, int]],
    boxes: Sequence[tuple[float, float, float, float]],
    channels: int,
    size: tuple[int, int],
    mode: str,
    out_dtype: torch.dtype,
    affine: tuple[float, float],
    clamp: tuple[float, float] | None,
) -> torch.Tensor:
    """Crop a box out of every image and resize it to ``size``, in one launch, into a new NCHW tensor.

    Output pixel ``o`` of an image samples source position ``x0 + (o + 0.5) * (x1 - x0) / w_out - 0.5``
    (the same in y), with taps clamped to the pixels the box covers: columns ``floor(x0)`` to
    ``ceil(x1) - 1``. For a box of whole pixels that is :func:`resize` of the crop, exactly.

    Args:
        src: The tensor the images lie in (a ragged buffer or a dense batch), addressed from its
            first element.
        images: Per image, ``(offset, stride_c, stride_h, stride_w)`` in elements of ``src``.
        boxes: Per image, ``(x0, y0, x1, y1)`` in pixels, inside the image, ``x0 < x1``, ``y0 < y1``.
        channels: The images' channel count.
        size: The output ``(height, width)``.
        mode: ``"nearest"``, ``"bilinear"`` or ``"bicubic"``.
        out_dtype: The output dtype.
        affine: ``(scale, offset)`` applied to every interpolated value.
        clamp: ``(low, high)`` bounds after the affine map, or ``None``.

    Returns:
        The ``(len(images), channels, height, width)`` batch; integer outputs rounded half up.
    """
    h_out, w_out = size
    out = torch.empty((len(images), channels, h_out, w_out), dtype=out_dtype, device=src.device)
    if out.numel() == 0:
        return out
    ints, floats = [], []
    for (offset, stride_c, stride_h, stride_w), (x0, y0, x1, y1) in zip(images, boxes, strict=True):
        top, left = math.floor(y0), math.floor(x0)
        start = offset + top * stride_h + left * stride_w
        ints.append([start, stride_c, stride_h, stride_w, math.ceil(y1) - top, math.ceil(x1) - left])
        floats.append([(y1 - y0) / h_out, (x1 - x0) / w_out, y0 - top, x0 - left])
    table = torch.empty((len(images), TABLE_INTS.value), dtype=torch.int64)
    table[:, : TABLE_FLOATS_AT.value] = torch.tensor(ints, dtype=torch.int64)
    table.view(torch.float32)[:, 2 * TABLE_FLOATS_AT.value :] = torch.tensor(floats, dtype=torch.float32)
    table = table.to(src.device, non_blocking=True)
    low, high = clamp if clamp is not None else (0.0, 0.0)
    taps = TAPS[mode]
    grid = (-(-w_out // BLOCK_W), -(-h_out // ROWS), len(images))
    _crop_kernel[grid](
        src,
        out,
        table,
        table.view(torch.float32),
        channels,
        ints[0][1],
        ints[0][3],
        h_out,
        w_out,
        float(affine[0]),
        float(affine[1]),
        float(low),
        float(high),
        TAPS=taps,
        UINT8_IN=src.dtype == torch.uint8,
        CLAMP=clamp is not None,
        ROUND=not out_dtype.is_floating_point,
        WINDOW=min(row[5] for row in ints) >= taps,
        SHARED_C=all(row[1] == ints[0][1] for row in ints),
        SHARED_W=all(row[3] == ints[0][3] for row in ints),
        WIDE=max(_span(row, channels) for row in ints) >= INT32_LIMIT,
        ROWS=ROWS,
        BLOCK_W=BLOCK_W,
        num_warps=NUM_WARPS,
        enable_fp_fusion=True,
    )
    return out


def _span(row: list[int], channels: int) -> int:
    """One past the largest offset, from a table row's start, of the pixels a box covers; strides also count."""
    _, stride_c, stride_h, stride_w, rows, columns = row
    return max(
        (channels - 1) * stride_c + (rows - 1) * stride_h + (columns - 1) * stride_w + 1, stride_c, stride_h, stride_w
    )
