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

The module imports Triton; :mod:`fastresize.functional` imports it only when Triton is installed.
Under ``TRITON_INTERPRET=1`` (set before Triton is imported) the kernel runs on CPU tensors in
Triton's interpreter, which is how the tests check it without a GPU.
"""

from __future__ import annotations

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
def _source(o, scale, size_in, TAPS: tl.constexpr):  # type: ignore[no-untyped-def]
    """First tap index (unclamped) and fraction of output index ``o``, as PyTorch computes them
    with ``align_corners=False``: nearest-exact, bilinear (negative positions clamped to 0) or bicubic."""
    if TAPS == 1:
        first = tl.minimum(((o.to(tl.float32) + 0.5) * scale).to(tl.int32), size_in - 1)
        t = o.to(tl.float32) * 0.0
    elif TAPS == 2:
        f = tl.maximum((o.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
        first = tl.minimum(f.to(tl.int32), size_in - 1)
        t = tl.minimum(tl.maximum(f - first.to(tl.float32), 0.0), 1.0)
    else:
        f = (o.to(tl.float32) + 0.5) * scale - 0.5
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
    # TAPS: 1 nearest-exact, 2 bilinear, 4 bicubic (A = -0.75). WINDOW: the input is at least TAPS wide.
    n = tl.program_id(2).to(tl.int64)
    first_row = tl.program_id(1) * ROWS
    rows = tl.minimum(h_out - first_row, ROWS)
    ox = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    inside = ox < w_out
    # Column offsets and weights, shared by every row and every channel.
    x0, tx = _source(ox, scale_w, w_in, TAPS)
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
    first_tap, _ = _source(first_row, scale_h, h_in, TAPS)
    for c in range(channels):
        base = src + n * stride_n + c * stride_c
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
            y0, ty = _source(first_row + i, scale_h, h_in, TAPS)
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
