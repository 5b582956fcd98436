"""Count the instructions of fastresize's Triton kernels compiled for an H100, on a machine without a GPU.

Compiles ``fastresize._kernel`` ahead of time for sm_90 (Triton bundles ``ptxas`` and
``cuobjdump``) and prints, per case, the registers a thread uses, the bytes it spills, the window
rows the compiled loop carries (one per tap, or the kernel computes something else than the
interpreter checked), and an estimate of the instructions issued per output value. The kernel
walks down the output rows and reads a new input row only when its window slides, so the estimate
is::

    (row + rows_read * step) / columns_per_thread

``row`` is the row loop's fixed part (weights, combining, storing), ``step`` one slide of the window
(one input row read and interpolated along x) and ``rows_read`` the input rows read per output row,
``(TAPS + (ROWS - 1) * min(scale, TAPS)) / ROWS``. This is a proxy, not a timing: the kernel's time on an H100
was found close to what issuing its instructions takes and far above what moving its data takes, so
fewer instructions per value should mean less time, but only
``benchmarks/test_transform_bench.py::test_kernel_tiles`` on a GPU says how much.

``--crop`` counts the ragged crop kernel (``fastresize._kernel.crop_resize``) on the same cases,
with ragged images' strides: its counts should stay close to the dense kernel's.

Usage: ``python -m benchmarks.kernel_instructions [--rows 8] [--warps 2] [--scale 1.333] [--crop]``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

import triton  # type: ignore[import-untyped]
from triton.backends.compiler import GPUTarget  # type: ignore[import-untyped]
from triton.compiler import ASTSource  # type: ignore[import-untyped]

from fastresize import _kernel

# (name, taps, input dtype, output dtype, NCHW): NHWC leaves the column stride unknown at compile time.
CASES = [
    ("bicubic uint8->float32", 4, "u8", "fp32", True),
    ("bicubic uint8->float32 NHWC", 4, "u8", "fp32", False),
    ("bicubic uint8->bfloat16", 4, "u8", "bf16", True),
    ("bicubic float32->float32", 4, "fp32", "fp32", True),
    ("bilinear float16->bfloat16", 2, "fp16", "bf16", True),
    ("nearest float32->uint8", 1, "fp32", "u8", True),
]
_FLOATS = ("scale_h", "scale_w", "mul", "add", "low", "high")
# Integer arguments Triton sees as multiples of 16 at run time for a 32x3x512x512 batch.
_DIVISIBLE = ("src", "dst", "h_in", "w_in", "h_out", "w_out", "stride_n", "stride_c", "stride_h")


def compile_sass(
    taps: int, src: str, dst: str, nchw: bool, rows: int, warps: int, crop: bool = False
) -> tuple[str, str, int]:
    """Compile one case for sm_90 (``crop``: the ragged crop kernel); return its SASS, ``cuobjdump``'s
    resource line and the number of window rows the compiled window loop carries."""
    kernel = _kernel._crop_kernel if crop else _kernel._resize_kernel
    names = kernel.arg_names
    constants = {"TAPS": taps, "UINT8_IN": src == "u8", "CLAMP": True, "ROUND": dst == "u8", "WINDOW": True}
    constants |= {"ROWS": rows, "BLOCK_W": _kernel.BLOCK_W}
    constants["stride_w" if nchw else "stride_c"] = 1  # Triton specialises an int argument equal to 1
    if crop:  # ragged images: NCHW ones differ in their channel stride, NHWC ones share every stride
        constants |= {"SHARED_C": not nchw, "SHARED_W": True, "WIDE": False}
    signature = {name: "i32" for name in names} | {"src": "*" + src, "dst": "*" + dst}
    signature |= {"table": "*i64", "ftable": "*fp32"} if crop else {}
    signature |= dict.fromkeys(_FLOATS, "fp32") | dict.fromkeys(constants, "constexpr")
    signature = {name: signature[name] for name in names}
    divisible = [k for k in (*_DIVISIBLE, "table", "ftable") if k in names and k not in constants]
    source = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(names.index(k),): v for k, v in constants.items()},
        attrs={(names.index(k),): [["tt.divisibility", 16]] for k in divisible},
    )
    options = {"num_warps": warps, "enable_fp_fusion": True}  # as fastresize launches it
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run([tools / "cuobjdump", "-sass", cubin], capture_output=True, text=True, check=True)
        usage = subprocess.run([tools / "cuobjdump", "-res-usage", cubin], capture_output=True, text=True, check=True)
    # The row loop and the loop that slides the window carry `top` and, unless Triton dropped some,
    # each window row: count the tensors they carry.
    loops = re.findall(r"= scf\.(?:while|for) [^\n]*?\) -> \(([^)]*)\)", compiled.asm["ttir"])
    carried = min((types.count("tensor<") for types in loops), default=0)
    return sass.stdout, usage.stdout.strip().splitlines()[-1], carried


def loop_costs(sass: str) -> tuple[int, int] | None:
    """Instructions of the row loop's fixed part and of one window step, read off the SASS's branches;
    ``None`` where the compiler shaped the loops otherwise (nearest: the step became a branch)."""
    address = {}
    branches = []
    for line in sass.splitlines():
        match = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if match:
            at = int(match.group(1), 16)
            address[at] = match.group(2)
            target = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", match.group(2))
            if target:
                branches.append((at, int(target.group(1), 16)))
    backward = sorted((at - to, to, at) for at, to in branches if to < at)
    if len(backward) < 2:
        return None
    _, step_start, step_end = backward[0]  # the innermost loop: the window's step
    around = [b for b in backward[1:] if b[1] <= step_start and b[2] >= step_end]  # the row loop
    if not around:
        return None
    _, row_start, row_end = min(around)
    skips = [(at, to) for at, to in branches if row_start <= at < step_start and to > step_end]
    if not skips:
        return None
    skip_at, skip_to = skips[0]
    size = 16  # bytes per SASS instruction
    fixed = (skip_at - row_start) // size + 1 + (row_end - skip_to) // size + 1
    return fixed, (step_end - step_start) // size + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=_kernel.ROWS, help="output rows per program (ROWS, >= 1)")
    parser.add_argument(
        "--warps", type=int, default=_kernel.NUM_WARPS, choices=[1, 2, 4], help="warps per program (NUM_WARPS)"
    )
    parser.add_argument("--scale", type=float, default=512 / 384, help="input rows per output row")
    parser.add_argument(
        "--crop", action="store_true", help="the ragged crop kernel (strides and boxes from a table) instead"
    )
    args = parser.parse_args()
    if args.rows < 1 or args.scale <= 0:
        parser.error(f"--rows must be >= 1 and --scale > 0, got --rows {args.rows} --scale {args.scale}")
    columns = _kernel.BLOCK_W // (32 * args.warps)
    kernel = "crop kernel" if args.crop else "dense kernel"
    print(f"{kernel}: ROWS={args.rows} NUM_WARPS={args.warps} BLOCK_W={_kernel.BLOCK_W} scale={args.scale:.3f} (sm_90)")
    print(f"{'case':<30} {'registers':>9} {'spilled':>7} {'window':>6} {'row':>5} {'step':>5} {'per value':>9}")
    for name, taps, src, dst, nchw in CASES:
        sass, usage, carried = compile_sass(taps, src, dst, nchw, args.rows, args.warps, args.crop)
        registers = re.search(r"REG:(\d+)", usage)
        spilled = re.search(r"LOCAL:(\d+)", usage)
        resources = (
            f"{registers.group(1) if registers else '?':>9} {spilled.group(1) if spilled else '?':>7} {carried:>6}"
        )
        costs = loop_costs(sass)
        counts = "    -     -         -"
        if costs is not None:
            rows_read = (taps + (args.rows - 1) * min(args.scale, taps)) / args.rows
            counts = f"{costs[0]:>5} {costs[1]:>5} {(costs[0] + rows_read * costs[1]) / columns:>9.1f}"
        print(f"{name:<30} {resources} {counts}")


if __name__ == "__main__":
    main()
