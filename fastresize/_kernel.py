"""The fused Triton resize kernel: one read of the input, one write of the NCHW output.

A program computes a ``BLOCK_H x BLOCK_W`` tile of output pixels of one image, for every channel in
turn: the source rows, columns and weights of the tile are computed once and serve all channels.
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
# One output row of 128 pixels over 4 warps, one output per thread. Measured on an H100 (32x3x512x512
# to 384, uint8 and float32 in): 16 x 64 tiles over 8 warps took 486 us, 4 x 128 over 4 warps 140 us,
# 1 x 128 over 4 warps 88 us: small tiles keep the registers low and the SMs full of warps, whose 16
# gathered loads per output then overlap.
BLOCK_H, BLOCK_W, NUM_WARPS = 1, 128, 4


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
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    # TAPS: 1 nearest-exact, 2 bilinear, 4 bicubic (A = -0.75).
    n = tl.program_id(2).to(tl.int64)
    oy = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ox = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    inside = (oy < h_out)[:, None] & (ox < w_out)[None, :]
    A = -0.75
    # Source positions, first tap index and fraction per output row (y) and column (x).
    if TAPS == 1:
        y0 = tl.minimum(((oy.to(tl.float32) + 0.5) * scale_h).to(tl.int32), h_in - 1)
        x0 = tl.minimum(((ox.to(tl.float32) + 0.5) * scale_w).to(tl.int32), w_in - 1)
        ty = tl.zeros([BLOCK_H], tl.float32)
        tx = tl.zeros([BLOCK_W], tl.float32)
    elif TAPS == 2:
        # PyTorch clamps negative source positions to 0 and repeats the last row/column.
        fy = tl.maximum((oy.to(tl.float32) + 0.5) * scale_h - 0.5, 0.0)
        fx = tl.maximum((ox.to(tl.float32) + 0.5) * scale_w - 0.5, 0.0)
        y0 = tl.minimum(fy.to(tl.int32), h_in - 1)
        x0 = tl.minimum(fx.to(tl.int32), w_in - 1)
        ty = tl.minimum(tl.maximum(fy - y0.to(tl.float32), 0.0), 1.0)
        tx = tl.minimum(tl.maximum(fx - x0.to(tl.float32), 0.0), 1.0)
    else:
        fy = (oy.to(tl.float32) + 0.5) * scale_h - 0.5
        fx = (ox.to(tl.float32) + 0.5) * scale_w - 0.5
        y0 = tl.floor(fy).to(tl.int32) - 1
        x0 = tl.floor(fx).to(tl.int32) - 1
        ty = fy - tl.floor(fy)
        tx = fx - tl.floor(fx)
    # Column offsets and weights, shared by every row tap and every channel.
    c0 = (tl.minimum(tl.maximum(x0, 0), w_in - 1) * stride_w)[None, :]
    c1 = (tl.minimum(tl.maximum(x0 + 1, 0), w_in - 1) * stride_w)[None, :]
    c2 = (tl.minimum(tl.maximum(x0 + 2, 0), w_in - 1) * stride_w)[None, :]
    c3 = (tl.minimum(tl.maximum(x0 + 3, 0), w_in - 1) * stride_w)[None, :]
    if TAPS == 2:
        wx0 = (1.0 - tx)[None, :]
        wx1 = tx[None, :]
    else:
        ux = tx + 1.0
        vx = 1.0 - tx
        zx = vx + 1.0
        wx0 = (((A * ux - 5.0 * A) * ux + 8.0 * A) * ux - 4.0 * A)[None, :]
        wx1 = (((A + 2.0) * tx - (A + 3.0)) * tx * tx + 1.0)[None, :]
        wx2 = (((A + 2.0) * vx - (A + 3.0)) * vx * vx + 1.0)[None, :]
        wx3 = (((A * zx - 5.0 * A) * zx + 8.0 * A) * zx - 4.0 * A)[None, :]
    out_offsets = oy[:, None] * w_out + ox[None, :]
    for c in range(channels):
        base = src + n * stride_n + c * stride_c
        value = tl.zeros([BLOCK_H, BLOCK_W], tl.float32)
        for k in tl.static_range(TAPS):
            row = base + (tl.minimum(tl.maximum(y0 + k, 0), h_in - 1) * stride_h)[:, None]
            v0 = tl.load(row + c0)
            if TAPS > 1:
                v1 = tl.load(row + c1)
            if TAPS > 2:
                v2 = tl.load(row + c2)
                v3 = tl.load(row + c3)
            if UINT8_IN:
                # 2**23 + byte, read as a float, minus 2**23: exact, and cheaper than int-to-float conversions.
                v0 = (v0.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                if TAPS > 1:
                    v1 = (v1.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                if TAPS > 2:
                    v2 = (v2.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                    v3 = (v3.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            else:
                v0 = v0.to(tl.float32)
                if TAPS > 1:
                    v1 = v1.to(tl.float32)
                if TAPS > 2:
                    v2 = v2.to(tl.float32)
                    v3 = v3.to(tl.float32)
            if TAPS == 1:
                value = v0
            elif TAPS == 2:
                if k == 0:
                    wy = 1.0 - ty
                else:
                    wy = ty
                value += wy[:, None] * (wx0 * v0 + wx1 * v1)
            else:
                if k == 0:
                    u = ty + 1.0
                    wy = ((A * u - 5.0 * A) * u + 8.0 * A) * u - 4.0 * A
                elif k == 1:
                    wy = ((A + 2.0) * ty - (A + 3.0)) * ty * ty + 1.0
                elif k == 2:
                    u = 1.0 - ty
                    wy = ((A + 2.0) * u - (A + 3.0)) * u * u + 1.0
                else:
                    u = (1.0 - ty) + 1.0
                    wy = ((A * u - 5.0 * A) * u + 8.0 * A) * u - 4.0 * A
                value += wy[:, None] * (wx0 * v0 + wx1 * v1 + wx2 * v2 + wx3 * v3)
        value = value * mul + add
        if CLAMP:
            value = tl.minimum(tl.maximum(value, low), high)
        if ROUND:
            value = tl.floor(value + 0.5)
        target = dst + (n * channels + c) * h_out * w_out + out_offsets
        tl.store(target, value.to(dst.dtype.element_ty), mask=inside)


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
    grid = (triton.cdiv(w_out, BLOCK_W), triton.cdiv(h_out, BLOCK_H), n)
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
        BLOCK_H=BLOCK_H,
        BLOCK_W=BLOCK_W,
        num_warps=NUM_WARPS,
        enable_fp_fusion=True,  # multiply-adds as FMAs: faster, and no less exact
    )
    return out
