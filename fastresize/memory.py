"""Per-step peak-memory and time records of a training loop, on CUDA or CPU."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from fastresize._checks import check_device

T = TypeVar("T")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def read_status_kib(field: str) -> int | None:
    """Return a ``/proc/self/status`` field (``VmHWM``, ``VmRSS``, ``VmData``) in bytes, or ``None``."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (``VmHWM``) to its current RSS; ``False`` where the OS forbids it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@dataclass
class StepMemory:
    """What one step used.

    Attributes:
        step: Index of the step in this profiler.
        size: The input's ``(height, width)``, if given.
        seconds: Wall time of the step (CUDA work included: the device is synchronised).
        peak_bytes: The peak the step reached: reserved memory on CUDA (what a memory cap counts),
            peak RSS on CPU.
        peak_allocated_bytes: CUDA: peak memory held by tensors (``max_memory_allocated``).
        peak_reserved_bytes: CUDA: peak memory held by the caching allocator.
        num_alloc_retries: CUDA: allocator retries so far (a cache flush after a failed ``cudaMalloc``).
        num_ooms: CUDA: out-of-memory errors so far.
        inactive_split_bytes: CUDA: the step's peak of free bytes inside split blocks, which the allocator
            cannot hand back while the rest of their segment is in use (fragmentation).
        new_shape: Whether this step's ``size`` had not been seen before.
        peak_reset: CPU: whether the peak RSS could be reset for this step (else it is the process peak).
    """

    step: int
    size: tuple[int, int] | None
    seconds: float
    peak_bytes: int
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    num_alloc_retries: int | None = None
    num_ooms: int | None = None
    inactive_split_bytes: int | None = None
    new_shape: bool = False
    peak_reset: bool = True


class MemoryProfiler:
    """Records, for each training step, the input size, the step time and the peak memory.

    Use it as a context manager around each step, or wrap a step function:

    Example:
        >>> profiler = MemoryProfiler("cpu")
        >>> with profiler.step(size=(64, 64)):
        ...     y = torch.ones(8, 3, 64, 64).sum()
        >>> train_step = profiler.wrap(lambda x: x.sum(), size_of=lambda x: tuple(x.shape[-2:]))
        >>> _ = train_step(torch.ones(1, 3, 32, 32))
        >>> [r.size for r in profiler.records], profiler.records[1].new_shape
        ([(64, 64), (32, 32)], True)

    Args:
        device: The device whose memory is measured: CUDA memory statistics for a CUDA device,
            the process's peak RSS (``VmHWM``, reset before each step where Linux allows) for CPU.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = check_device(device, types=("cpu", "cuda"))
        self.records: list[StepMemory] = []
        self._seen: set[tuple[int, int]] = set()

    @contextmanager
    def step(self, size: tuple[int, int] | None = None) -> Iterator[None]:
        """Measure the code inside the ``with`` block as one step.

        Args:
            size: The step's input ``(height, width)``, recorded with it.
        """
        size = None if size is None else (int(size[0]), int(size[1]))
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            reset = True
        else:
            reset = reset_peak_rss()
        start = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        new_shape = size is not None and size not in self._seen
        if size is not None:
            self._seen.add(size)
        record = StepMemory(len(self.records), size, seconds, 0, new_shape=new_shape, peak_reset=reset)
        if cuda:
            stats = torch.cuda.memory_stats(self.device)
            record.peak_allocated_bytes = torch.cuda.max_memory_allocated(self.device)
            record.peak_reserved_bytes = torch.cuda.max_memory_reserved(self.device)
            record.peak_bytes = record.peak_reserved_bytes
            record.num_alloc_retries = int(stats.get("num_alloc_retries", 0))
            record.num_ooms = int(stats.get("num_ooms", 0))
            record.inactive_split_bytes = int(stats.get("inactive_split_bytes.all.peak", 0))
        else:
            record.peak_bytes = read_status_kib("VmHWM") or 0
        self.records.append(record)

    def wrap(
        self, fn: Callable[..., T], size_of: Callable[..., tuple[int, int] | None] | None = None
    ) -> Callable[..., T]:
        """Return ``fn`` measured as one step per call.

        Args:
            fn: The user's training step.
            size_of: Given the step's arguments, returns the input size to record.
        """

        @functools.wraps(fn)
        def measured(*args: Any, **kwargs: Any) -> T:
            with self.step(None if size_of is None else size_of(*args, **kwargs)):
                return fn(*args, **kwargs)

        return measured

    def as_dict(self) -> dict[str, Any]:
        """Return the device and the records as plain Python values."""
        return {"device": str(self.device), "steps": [asdict(record) for record in self.records]}

    def to_json(self, path: str | Path | None = None) -> str:
        """Return the records as JSON, and write them to ``path`` if given."""
        text = json.dumps(self.as_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text
