"""The measurement in each child process: train one schedule, under a memory cap or not.

- CPU: a step's need is its peak RSS above the baseline taken after a warm-up step, and the cap is
  ``RLIMIT_DATA`` above the baseline's ``VmData``. Children pin glibc (``MALLOC_MMAP_THRESHOLD_``)
  and oneDNN, so that a step's need depends on its size alone.
- CUDA: a step's need is the memory its tensors take at their peak (``max_memory_allocated`` above
  the baseline). After the warm-up every child empties the allocator's cache, so its reserved
  memory R0 holds only live tensors (the weights), and its allocator limit is R0 + cap
  (``set_per_process_memory_fraction``, which the allocator checks against reserved memory). A cap
  on reserved memory alone forces nothing: when an allocation would pass the limit, the caching
  allocator frees its cache and retries (``num_alloc_retries``), so a step that reserves 2.5 GB in
  a fresh process can run in 1.5 GB. What it cannot free are live tensors, and reserved memory is
  never below allocated memory, so a step whose tensors need more than the cap (plus the free room
  inside R0's segments, reported as ``baseline_slack_bytes``) fails whatever the allocator does.
  cuDNN would defeat this: it catches an out-of-memory error of a convolution's workspace and falls
  back to an algorithm with less workspace, so a capped step could run on less than its calibrated
  need (seen on an H100: max-size-first survived the low cap after 150 to 190 such errors). So the
  calibration and the capped runs use PyTorch's native convolutions
  (``torch.backends.cudnn.enabled = False``), which have no fallback: a step's need is then a
  function of its size. The allocator profiles keep cuDNN, as training does. Each child still
  counts the allocator's out-of-memory errors that did not end it (``ooms_caught``).
"""

from __future__ import annotations

from typing import Any

import torch

from fastresize.memory import MemoryProfiler, read_status_kib, reset_peak_rss
from fastresize.verify.schedules import conv_net

# Pin glibc's allocator so that a step's need depends on its size, not on the history before it:
# large blocks go straight to mmap (and back on free), and oneDNN caches no per-shape primitives.
CPU_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}
_OOM_MARKERS = ("out of memory", "can't allocate memory", "could not create a primitive", "std::bad_alloc")


def is_oom(error: BaseException, allocator_failed: bool = False) -> bool:
    """Whether ``error`` is an out-of-memory error; ``allocator_failed``: the CUDA allocator counted one.

    cuDNN can turn an allocator out-of-memory error into "unable to find an engine", hence the count.
    """
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)) or allocator_failed:
        return True
    text = str(error).lower()
    return any(marker in text for marker in _OOM_MARKERS)


def _num_ooms(device: torch.device) -> int:
    return int(torch.cuda.memory_stats(device).get("num_ooms", 0))


def child_main(config: dict[str, Any]) -> dict[str, Any]:
    """Train one schedule in this (fresh) process and return what every step used.

    The warm-up step at the smallest size creates the kernels; the baseline is
    taken after it (CUDA: with the allocator's cache emptied), and a cap applies above it. On CUDA,
    ``share_bytes`` bounds the whole process from the start, so that children can share a GPU.
    """
    device = torch.device(config["device"])
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        # set_per_process_memory_fraction wants an index: "cuda" means the current device.
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.mem_get_info(device)[1] if cuda else 0  # what the allocator's fraction refers to
    share, cap, sizes = config.get("share_bytes"), config["cap_bytes"], config["sizes"]
    if cuda:
        # The capped runs need a step's memory to depend on its size alone (see the module docstring).
        torch.backends.cudnn.enabled = config.get("cudnn", True)
        if share is not None:
            torch.cuda.set_per_process_memory_fraction(min(1.0, share / total), device)
    torch.manual_seed(config["seed"])
    model = conv_net(config["channels"], config["layers"]).to(device)

    def train_step(side: int, update: bool) -> None:
        x = torch.rand(config["batch"], 3, side, side, device=device)
        model(x).square().mean().backward()
        # Plain SGD written out: a torch.optim optimizer imports torch._dynamo, a second or more per
        # child, and an optimizer's state is tiny next to the activations of a step.
        with torch.no_grad():
            for parameter in model.parameters():
                if update and parameter.grad is not None:
                    parameter.sub_(parameter.grad, alpha=1e-3)
                parameter.grad = None

    train_step(min(sizes), update=True)
    result: dict[str, Any] = {}
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # what stays reserved is what no retry can free: live tensors' segments
        baseline = torch.cuda.memory_reserved(device)
        baseline_allocated = torch.cuda.memory_allocated(device)
        limit = share if cap is None else baseline + cap if share is None else min(share, baseline + cap)
        if limit is not None:
            torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
        ooms_before = _num_ooms(device)
        result.update(baseline_allocated_bytes=baseline_allocated, limit_bytes=limit, total_bytes=total)
    else:
        reset_peak_rss()
        baseline = read_status_kib("VmRSS") or 0
        if cap is not None:
            import resource

            data = read_status_kib("VmData") or 0
            resource.setrlimit(resource.RLIMIT_DATA, (data + cap, resource.RLIM_INFINITY))

    profiler = MemoryProfiler(device)
    fail_step: int | None = None
    error_text = None
    for index, side in enumerate(sizes):
        ooms = _num_ooms(device) if cuda else 0
        try:
            with profiler.step((side, side)):
                train_step(side, update=not (config["prealloc"] and index == 0))
        except (RuntimeError, MemoryError) as error:
            if not is_oom(error, allocator_failed=cuda and _num_ooms(device) > ooms):
                raise
            fail_step, error_text = index, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            break
    records = profiler.records
    result.update(
        baseline_bytes=baseline,
        peak_bytes=[r.peak_bytes - baseline for r in records],
        seconds=[r.seconds for r in records],
        new_shape=[r.new_shape for r in records],
        fail_step=fail_step,
        error=error_text,
    )
    if cuda:
        result.update(
            peak_allocated_bytes=[(r.peak_allocated_bytes or 0) - baseline_allocated for r in records],
            num_alloc_retries=[r.num_alloc_retries for r in records],
            inactive_split_bytes=[r.inactive_split_bytes for r in records],
            ooms_caught=max(0, _num_ooms(device) - ooms_before - (fail_step is not None)),
        )
    return result
