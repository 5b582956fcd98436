"""The size finder: the largest of a policy's sizes at which a training step fits in memory."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import NamedTuple, TextIO

import torch

from fastresize._checks import check_device
from fastresize.functional import resize
from fastresize.policy import MultiScalePolicy

# What PyTorch's CPU allocator says when malloc fails (RLIMIT_DATA, overcommit off); CUDA raises
# torch.OutOfMemoryError, and Python's own allocations MemoryError. Libraries that fail for lack of
# memory inside a kernel (cuDNN's workspace, cuBLAS's handles) say so in a RuntimeError of their own.
_OOM_MESSAGES = (
    "DefaultCPUAllocator: can't allocate memory",
    "CUDA error: out of memory",
    "CUDNN_STATUS_NOT_SUPPORTED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED",
)


class MaxSize(NamedTuple):
    """What :func:`find_max_size` found.

    Attributes:
        size: The largest of the policy's sizes that fits: a side length ``s`` (also under
            ``side="short"``/``"long"``), or ``(height, width)`` for a rectangular bucket.
        policy: The policy capped there (:meth:`MultiScalePolicy.capped`): a new policy whose sizes
            stop at ``size``; equal to the given one when its largest size fits.
    """

    size: int | tuple[int, int]
    policy: MultiScalePolicy


def _is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error of PyTorch's CUDA or CPU allocator, or Python's."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(message in str(error) for message in _OOM_MESSAGES)


def find_max_size(
    step_fn: Callable[[torch.Tensor], object],
    batch: torch.Tensor,
    policy: MultiScalePolicy,
    *,
    device: torch.device | str | None = None,
    value_range: tuple[float, float] | None = None,
    dtype: torch.dtype | None = None,
    layout: str | None = None,
    file: TextIO | None = None,
    log: Callable[[str], object] | None = None,
) -> MaxSize:
    """Find the largest of ``policy``'s sizes at which ``step_fn`` runs without running out of memory.

    Each try resizes ``batch`` to one size with :func:`fastresize.functional.resize` and calls
    ``step_fn`` on it. The first try is the policy's largest size (:attr:`MultiScalePolicy.max_shape`,
    what max-size-first uses first). If it runs out of memory (``torch.OutOfMemoryError`` on CUDA; on
    CPU the allocator's ``RuntimeError`` "DefaultCPUAllocator: can't allocate memory", or
    ``MemoryError``; and the ``RuntimeError`` of cuDNN or cuBLAS failing to allocate, as Lightning
    counts them), the memory is freed (``gc.collect()``, and ``torch.cuda.empty_cache()`` on
    CUDA) and the sizes of :attr:`MultiScalePolicy.shapes` (by area) are bisected, on the
    assumption that a step needs more memory at a larger size. One line per try goes to ``file`` (or
    ``log``). Any other error is raised as it is.

    What a try costs: one call of ``step_fn`` at that size (give it your forward, backward and
    optimizer step: an optimizer such as Adam allocates its state at its first step, which
    counts), plus, after an out-of-memory error, a garbage collection and emptying CUDA's cache.
    A policy of ``n`` sizes takes at most ``1 + ceil(log2(n))`` tries. ``step_fn`` runs for real:
    the model's weights change with every try, so run the finder before training, or on a copy.

    The answer holds only for the model, the batch (its size, dtype and layout), the resize settings
    and the environment (precision, compilation, allocator settings, other processes on the device)
    it was run with: change one and run it again. On CPU, running out of memory raises only under a
    limit (``RLIMIT_DATA``, or overcommit turned off); without one, the kernel's OOM killer may end
    the process instead.

    Args:
        step_fn: One training step: ``step_fn(images)`` with the resized batch; its result is ignored.
        batch: One batch of images, ``(B, C, H, W)`` (or ``(B, H, W, C)`` with ``layout="NHWC"``),
            uint8 or float, as the loader hands it over.
        policy: The policy whose sizes to try.
        device: Where to run the tries; ``None``: the batch's device.
        value_range: Passed to :func:`~fastresize.functional.resize` (e.g. ``(0, 1)``).
        dtype: Passed to :func:`~fastresize.functional.resize` (e.g. ``torch.float32``).
        layout: Passed to :func:`~fastresize.functional.resize`: ``"NCHW"``, ``"NHWC"`` or ``None``.
        file: Where the lines go; ``None``: standard output.
        log: Called with each line instead of writing it to ``file``.

    Returns:
        The largest size that fits and the policy capped there, as :class:`MaxSize`.

    Raises:
        TypeError: ``step_fn`` or ``log`` is not callable, ``batch`` is not a tensor, or ``policy`` is
            not a :class:`MultiScalePolicy`.
        ValueError: ``file`` and ``log`` are both given, or ``device`` is not a usable device.
        RuntimeError: even the smallest size runs out of memory.

    Example:
        >>> policy = MultiScalePolicy(64, 256, multiple=64)
        >>> def step(images):  # stands for a forward and backward that need too much above 128
        ...     if images.shape[-1] > 128:
        ...         raise torch.OutOfMemoryError("CUDA out of memory")
        >>> found = find_max_size(step, torch.zeros(2, 3, 32, 32), policy, log=lambda line: None)
        >>> found.size, found.policy.sizes
        (128, (64, 128))
    """
    if not callable(step_fn):
        raise TypeError(f"step_fn must be a callable that runs one training step on a batch, got {step_fn!r}")
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"batch must be a torch.Tensor of images, got {type(batch).__name__}")
    if not isinstance(policy, MultiScalePolicy):
        raise TypeError(
            f"policy must be a MultiScalePolicy (the finder bisects over its sizes and caps it), "
            f"got {type(policy).__name__}"
        )
    if file is not None and log is not None:
        raise ValueError("give file= or log=, not both: the lines go to one of them")
    if log is not None and not callable(log):
        raise TypeError(f"log must be a callable that takes one line, got {log!r}")
    target = batch.device if device is None else check_device(device)
    batch = batch.to(target)
    in_hw = tuple(batch.shape[1:3]) if layout == "NHWC" else tuple(batch.shape[-2:])
    shapes = policy.shapes

    def write(line: str) -> None:
        if log is not None:
            log(line)
        else:
            print(line, file=file if file is not None else sys.stdout, flush=True)

    tries = 0

    def fits(index: int) -> bool:
        nonlocal tries
        tries += 1
        out = policy.output_size(shapes[index], in_hw)
        failure = None
        try:
            step_fn(resize(batch, out, value_range=value_range, dtype=dtype, layout=layout))
        except (RuntimeError, MemoryError) as error:
            if not _is_out_of_memory(error):
                raise
            first_line = (str(error).splitlines() or [""])[0][:200]
            failure = f"{type(error).__name__}: {first_line}"
        # Outside the handler: the error and its traceback's frames (which hold the step's tensors)
        # are gone, so collecting frees them.
        if failure is not None:
            _free(target)
        verdict = "fits" if failure is None else f"out of memory ({failure})"
        write(f"find_max_size: try {tries}: {out[0]}x{out[1]}: {verdict}")
        return failure is None

    last = len(shapes) - 1
    if fits(last):
        best = last
    else:
        # Invariant: every index <= low fits, every index >= high does not (low = -1: none known).
        low, high = -1, last
        while high - low > 1:
            middle = (low + high) // 2
            if fits(middle):
                low = middle
            else:
                high = middle
        if low < 0:
            raise RuntimeError(
                f"even the smallest size {shapes[0]} runs out of memory with a batch of shape {tuple(batch.shape)}; "
                "lower the batch size or the policy's sizes"
            )
        best = low
    h, w = shapes[best]
    return MaxSize(h if h == w else (h, w), policy.capped(shapes[best]))


def _free(device: torch.device) -> None:
    """Hand back what a failed try held, so that the next try starts from the same memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
