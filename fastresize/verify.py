"""The verification of max-size-first, behind ``python -m fastresize memory``.

A small conv net trains under several size schedules, each in a fresh child process on the same
draws, and every step's time and memory are recorded. Children run side by side: on CPU one per
core, on CUDA up to 8, each under its own share of the GPU memory
(``torch.cuda.set_per_process_memory_fraction``). Each child's result is saved as it finishes. Two
verdicts come out, each "held" or "did not hold":

**fail-fast**, the one thing max-size-first promises. One child calibrates the needs of the two
largest sizes; every schedule then runs under a low cap between those needs and a high cap above the
largest. Max-size-first must fail at step 0 under the low cap and finish under the high one. On
CPU, random-first must also fail exactly at its first max-size step (there a step's need depends on
its size alone, so anything else means the protocol is broken); on CUDA the allocator's history adds
to a step's need, so where random-first fails is reported, and the allocator verdict measures it.

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
  Hence the low cap is the midpoint of the two allocated needs, and the high cap is 5% (at least
  4 MiB) above what a step at the largest size reserves in a fresh allocator (so max-size-first's first step runs as in
  the calibration, without a retry). cuDNN would defeat this: it catches an out-of-memory error of
  a convolution's workspace and falls back to an algorithm with less workspace, so a capped step
  could run on less than its calibrated need (seen on an H100: max-size-first survived the low cap
  after 150 to 190 such errors). So the calibration and the capped runs use PyTorch's native
  convolutions (``torch.backends.cudnn.enabled = False``), which have no fallback: a step's need is
  then a function of its size. The allocator profiles keep cuDNN, as training does. Each child
  still counts the allocator's out-of-memory errors that did not end it (``ooms_caught``).

**allocator**, CUDA only: whether max-size-first's peak reserved memory is at most random-first's and
ascending's (within 1%), with the default allocator and with ``expandable_segments:True``, reported
with each schedule's allocator retries, inactive split bytes and mean step time (measured side by
side: compare within one run). On CPU it is not applicable: glibc hands large blocks back after
every step, so there is no cache whose reuse the order of sizes could change.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

import torch
from torch import nn

from fastresize._checks import check_device, check_float, check_int
from fastresize.policy import MultiScalePolicy

SCHEDULES = ("max_first", "prealloc_first", "random_first", "ascending", "max_only")
ASSERTED = ("max_first", "random_first")
# None removes the variable, so that a user's own setting cannot leak into the default variant.
VARIANTS: dict[str, dict[str, str | None]] = {
    "default": {"PYTORCH_CUDA_ALLOC_CONF": None, "PYTORCH_ALLOC_CONF": None},
    "expandable_segments": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "PYTORCH_ALLOC_CONF": None},
}
# Pin glibc's allocator so that a step's need depends on its size, not on the history before it:
# large blocks go straight to mmap (and back on free), and oneDNN caches no per-shape primitives.
CPU_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}
# CPU stays small enough for a 2-core machine; CUDA resembles training (a step needs over a GB).
DEFAULTS = {
    "cpu": {"lower": 64, "upper": 160, "steps": 16, "batch_size": 4, "channels": 16, "layers": 4},
    "cuda": {"lower": 256, "upper": 512, "steps": 40, "batch_size": 8, "channels": 32, "layers": 6},
}
MAX_CUDA_JOBS = 8
ALLOCATOR_TOLERANCE = 0.01
CALIBRATION_STEPS = 3
HIGH_CAP_HEADROOM = 1.05
# At the smallest settings 5% is a few hundred KB, less than what oneDNN's just-in-time primitives
# vary by between two processes ("could not create a primitive" under the cap): keep at least this.
HIGH_CAP_MIN_HEADROOM_BYTES = 4 * 2**20
# What a CUDA process holds outside the caching allocator (context, cuDNN and cuBLAS handles).
_CONTEXT_BYTES = 1 << 30
_OOM_MARKERS = ("out of memory", "can't allocate memory", "could not create a primitive", "std::bad_alloc")


def schedule_sizes(name: str, policy: MultiScalePolicy, steps: int) -> list[int]:
    """Return the side length of every step of a schedule (the same draws for every schedule that draws).

    ``prealloc_first`` has one more entry: its step 0 is the preallocation pass at the largest size.
    """
    drawn = [policy.side_for(step, global_step=policy.max_first_steps + step) for step in range(steps)]
    if name == "max_first":
        return [policy.side_for(step, global_step=step) for step in range(steps)]
    if name == "prealloc_first":
        return [policy.max_size, *drawn]
    if name == "random_first":
        return drawn
    if name == "ascending":
        return [policy.sizes[i * len(policy.sizes) // steps] for i in range(steps)]
    if name == "max_only":
        return [policy.max_size] * steps
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")


def conv_net(width: int, layers: int) -> nn.Sequential:
    """The measured model: ``layers`` 3x3 convolutions (RGB in, RGB out) with ReLUs between them."""
    modules: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise([3, *[width] * (layers - 1), 3]):
        modules += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*modules[:-1])


# ------------------------------------------------------------------------------------ the child
def _is_oom(error: BaseException, allocator_failed: bool = False) -> bool:
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
    from fastresize.memory import MemoryProfiler, read_status_kib, reset_peak_rss

    device = torch.device(config["device"])
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        # set_per_process_memory_fraction wants an index: "cuda" means the current device.
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.mem_get_info(device)[1] if cuda else 0  # what the allocator's fraction refers to
    share = config.get("share_bytes")
    if cuda and share is not None:
        torch.cuda.set_per_process_memory_fraction(min(1.0, share / total), device)
    if cuda:
        # The capped runs need a step's memory to depend on its size alone (see the module docstring).
        torch.backends.cudnn.enabled = config.get("cudnn", True)
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

    sizes: list[int] = config["sizes"]
    cap = config["cap_bytes"]
    train_step(min(sizes), update=True)
    result: dict[str, Any] = {}
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # what stays reserved is what no retry can free: live tensors' segments
        baseline = torch.cuda.memory_reserved(device)
        baseline_allocated = torch.cuda.memory_allocated(device)
        limit = share
        if cap is not None:
            limit = baseline + cap if share is None else min(share, baseline + cap)
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
            if not _is_oom(error, allocator_failed=cuda and _num_ooms(device) > ooms):
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


# ------------------------------------------------------------------------- running the children
@dataclass
class Job:
    """One child run: its key in the report, its configuration and its environment changes.

    Attributes:
        key: ``calibration``, ``profile/<variant>/<schedule>`` or ``cap_<below|above>/<schedule>/<seed>``.
        config: What :func:`child_main` is given.
        env: Environment variables to set (``None`` removes one).
    """

    key: str
    config: dict[str, Any]
    env: dict[str, str | None]


@dataclass
class _Running:
    job: Job
    process: subprocess.Popen[bytes]
    started: float
    stdout: IO[bytes]
    stderr: IO[bytes]


def _start(job: Job) -> _Running:
    env = dict(os.environ)
    for name, value in job.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    code = (
        "import json, sys; from fastresize.verify import child_main; "
        "print(json.dumps(child_main(json.loads(sys.argv[1]))))"
    )
    stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # files: no pipe to fill up
    process = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(job.config)], stdout=stdout, stderr=stderr, env=env
    )
    return _Running(job, process, time.monotonic(), stdout, stderr)


def _collect(run: _Running, timeout: float | None) -> dict[str, Any]:
    run.stdout.seek(0)
    run.stderr.seek(0)
    out = run.stdout.read().decode(errors="replace").strip()
    err = run.stderr.read().decode(errors="replace").strip()
    run.stdout.close()
    run.stderr.close()
    if timeout is not None:
        return {"crashed": f"timed out after {timeout:.0f} s"}
    if run.process.returncode != 0 or not out:
        tail = (err or out).splitlines()[-3:]
        return {"crashed": f"exit status {run.process.returncode}: {' | '.join(tail)}"}
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def run_jobs(pending: deque[Job], workers: int, timeout: float, on_done: Callable[[Job, dict[str, Any]], None]) -> None:
    """Run the jobs, ``workers`` at a time, each in a fresh interpreter.

    ``on_done`` gets each job's result as it finishes and may append jobs to ``pending``. A crash or
    a hang comes back as ``{"crashed": reason}``. On an exception (``KeyboardInterrupt`` included),
    the children still running are killed before it propagates.
    """
    running: list[_Running] = []
    try:
        while pending or running:
            while pending and len(running) < workers:
                running.append(_start(pending.popleft()))
            time.sleep(0.02)
            for run in list(running):
                late = run.process.poll() is None and time.monotonic() - run.started > timeout
                if run.process.returncode is None and not late:
                    continue
                if late:
                    run.process.kill()
                    run.process.wait()
                running.remove(run)
                on_done(run.job, _collect(run, timeout if late else None))
    finally:
        for run in running:
            run.process.kill()
            run.process.wait()


def _workers(device: torch.device, jobs: int | None, estimate_bytes: int) -> tuple[int, int | None]:
    """Return how many children run at once and, on CUDA, the memory share of each."""
    cores = _cores()
    if device.type != "cuda":
        return (cores if jobs is None else jobs), None
    free = torch.cuda.mem_get_info(device)[0]
    if jobs is None:
        jobs = max(1, min(MAX_CUDA_JOBS, cores, free // (estimate_bytes + _CONTEXT_BYTES)))
    share = (free - jobs * _CONTEXT_BYTES) // jobs
    if share <= 0:
        raise ValueError(
            f"jobs={jobs} leaves no GPU memory for each child ({free / 2**30:.1f} GiB free); pass a smaller --jobs"
        )
    return jobs, share


# ------------------------------------------------------------------------------------ the report
def _calibration(result: dict[str, Any] | None, largest: int, next_largest: int, cuda: bool) -> dict[str, Any]:
    """The needs of the two largest sizes and the caps placed from them."""
    result = result or {}
    measured = result.get("peak_allocated_bytes" if cuda else "peak_bytes") or []
    reserved = result.get("peak_bytes") or []
    n = CALIBRATION_STEPS
    need_largest, need_next = max(measured[:n] or [0]), max(measured[n : 2 * n] or [0])
    reserved_largest = max(reserved[:n] or [0])
    return {
        "measure": "peak allocated (max_memory_allocated)" if cuda else "peak RSS",
        "largest": largest,
        "next_largest": next_largest,
        "need_largest_bytes": need_largest,
        "need_next_largest_bytes": need_next,
        "reserved_largest_bytes": reserved_largest,
        "cap_below_bytes": (need_largest + need_next) // 2,
        "cap_above_bytes": max(
            int(max(need_largest, reserved_largest) * HIGH_CAP_HEADROOM),
            max(need_largest, reserved_largest) + HIGH_CAP_MIN_HEADROOM_BYTES,
        ),
        "baseline_slack_bytes": result["baseline_bytes"] - result["baseline_allocated_bytes"]
        if cuda and "baseline_allocated_bytes" in result
        else None,
    }


def _schedule_entry(sizes: list[int], result: dict[str, Any], opening: int) -> dict[str, Any]:
    peaks = result.get("peak_bytes") or []
    seconds = result.get("seconds") or []
    entry: dict[str, Any] = {
        "sizes": sizes,
        "peak_bytes": peaks,
        "peak_step": max(range(len(peaks)), key=peaks.__getitem__) if peaks else None,
        "growth_after_max_first_bytes": (max(peaks[opening:]) - max(peaks[:opening])) if len(peaks) > opening else None,
        "seconds": seconds,
        "mean_step_seconds": sum(seconds) / len(seconds) if seconds else None,
        "new_shape": result.get("new_shape") or [],
    }
    for key in ("peak_allocated_bytes", "num_alloc_retries", "inactive_split_bytes"):
        if key in result:
            entry[key] = result[key]
    return entry


def _allocator(schedules_by_variant: dict[str, dict[str, dict[str, Any]]], cuda: bool) -> dict[str, Any]:
    """The allocator section: per variant and schedule, reserved peak, retries, fragmentation, step time."""
    if not cuda:
        return {
            "verdict": "not applicable",
            "reason": "on CPU there is no caching allocator to measure: glibc hands large blocks back to the OS "
            "after every step (the children pin MALLOC_MMAP_THRESHOLD_), so a step's memory depends on its "
            "size alone, whatever came first",
            "variants": {},
        }
    variants: dict[str, dict[str, Any]] = {}
    held: dict[str, bool | None] = {}
    reasons: list[str] = []
    for variant, schedules in schedules_by_variant.items():
        rows = {}
        for name, entry in schedules.items():
            peaks = entry["peak_bytes"]
            retries = entry.get("num_alloc_retries") or []
            splits = entry.get("inactive_split_bytes") or []
            rows[name] = {
                "max_reserved_bytes": max(peaks) if peaks else None,
                "max_reserved_step": entry["peak_step"],
                "num_alloc_retries": retries[-1] if retries else None,
                "max_inactive_split_bytes": max(splits) if splits else None,
                "mean_step_seconds": entry["mean_step_seconds"],
            }
        variants[variant] = rows
        compared = [rows[name] for name in ("max_first", "random_first", "ascending")]
        if any(row["max_reserved_bytes"] is None for row in compared):
            held[variant] = None
            reasons.append(f"{variant}: a schedule did not finish")
        elif any(row["num_alloc_retries"] for row in compared):
            held[variant] = None  # without a cap, a retry means the run met its share of the GPU
            reasons.append(f"{variant}: a run met its share of the GPU memory (retries); use fewer --jobs")
        else:
            mine, *others = (row["max_reserved_bytes"] for row in compared)
            held[variant] = all(mine <= other * (1 + ALLOCATOR_TOLERANCE) for other in others)
    if any(value is None for value in held.values()):
        verdict = "inconclusive"
    else:
        verdict = "held" if all(held.values()) else "did not hold"
    return {
        "verdict": verdict,
        "reason": "; ".join(reasons)
        or f"max_first's peak reserved memory vs random_first's and ascending's (tolerance {ALLOCATOR_TOLERANCE:.0%})",
        "held_by_variant": held,
        "variants": variants,
    }


def build_report(
    settings: dict[str, Any], results: dict[str, dict[str, Any]], *, interrupted: bool = False
) -> dict[str, Any]:
    """Assemble the report from the children's results (keys as in :class:`Job`); missing ones are "not run".

    Args:
        settings: What :func:`run_verification` recorded about the run (``device``, ``sizes``, ...).
        results: Each finished child's result by its job key.
        interrupted: The run was stopped before every child finished.
    """
    cuda = settings["device"].startswith("cuda")
    sizes = settings["sizes"]
    largest, next_largest = sizes[-1], sizes[-2]
    policies = {
        seed: MultiScalePolicy(sizes[0], largest, max_first_steps=settings["max_first_steps"], seed=seed)
        for seed in range(settings["seeds"])
    }
    crashed = [f"{key}: {r['crashed']}" for key, r in results.items() if "crashed" in r]
    usable = {key: r for key, r in results.items() if "crashed" not in r}
    report: dict[str, Any] = {"device": settings["device"], "settings": settings, "crashed": crashed}
    report["calibration"] = cal = _calibration(usable.get("calibration"), largest, next_largest, cuda)

    by_variant: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in VARIANTS if cuda else ("default",):
        by_variant[variant] = {}
        for name in SCHEDULES:
            opening = 1 if name == "prealloc_first" else settings["max_first_steps"]
            result = usable.get(f"profile/{variant}/{name}", {})
            by_variant[variant][name] = _schedule_entry(
                schedule_sizes(name, policies[0], settings["steps"]), result, opening
            )
        report["schedules" if variant == "default" else f"schedules_{variant}"] = by_variant[variant]

    for name, entry in report["schedules"].items():
        by_seed = {}
        for seed in range(settings["seeds"] if name in ASSERTED else 1):
            drawn = schedule_sizes(name, policies[seed], settings["steps"])
            below, above = usable.get(f"cap_below/{name}/{seed}"), usable.get(f"cap_above/{name}/{seed}")
            retries = (above or {}).get("num_alloc_retries") or [None]
            by_seed[seed] = {
                "first_max_step": next((i for i, side in enumerate(drawn) if side == largest), None),
                "fail_step_below_cap": None if below is None else below["fail_step"],
                "error_below_cap": None if below is None else below["error"],
                "ooms_caught_below_cap": None if below is None else below.get("ooms_caught"),
                "finished_above_cap": above is not None and above["fail_step"] is None,
                "retries_above_cap": retries[-1],
                "ran": below is not None and above is not None,
            }
        entry["fail_fast_by_seed"] = by_seed
        entry["fail_step_below_cap"] = by_seed[0]["fail_step_below_cap"]
        entry["finished_above_cap"] = by_seed[0]["finished_above_cap"]

    expected = 1 + len(by_variant) * len(SCHEDULES) + 2 * (len(ASSERTED) * settings["seeds"] + len(SCHEDULES) - 2)
    max_first, random_first = report["schedules"]["max_first"], report["schedules"]["random_first"]
    report["checks"] = {
        "calibration_monotonic": cal["need_largest_bytes"] > cal["need_next_largest_bytes"] > 0,
        "max_first_fails_at_step_0_below_cap_and_finishes_above": all(
            r["fail_step_below_cap"] == 0 and r["finished_above_cap"] for r in max_first["fail_fast_by_seed"].values()
        ),
        "no_crash_or_hang": not crashed,
    }
    if not cuda:
        # On CPU a step's need depends on its size alone, so a random order must fail exactly at its
        # first max-size step. On CUDA the caching allocator's history adds to a step's need, and a
        # random order can fail earlier (the allocator verdict measures that): reported, not checked.
        report["checks"]["random_first_fails_at_its_first_max_step"] = all(
            r["ran"] and r["fail_step_below_cap"] == r["first_max_step"]
            for r in random_first["fail_fast_by_seed"].values()
        )
    finished = len(results)
    if interrupted or finished < expected:
        fail_fast = f"incomplete ({finished} of {expected} runs finished)"
    else:
        fail_fast = "held" if all(report["checks"].values()) else "did not hold"
    report["allocator"] = _allocator(by_variant, cuda)
    report["verdicts"] = {"fail_fast": fail_fast, "allocator": report["allocator"]["verdict"]}
    report["interrupted"] = interrupted
    report["runs_finished"], report["runs_expected"] = finished, expected
    opening_peak = max(max_first["peak_bytes"][: settings["max_first_steps"]] or [0])
    growth = max_first["growth_after_max_first_bytes"]
    report["max_first_growth_ratio"] = None if growth is None or not opening_peak else growth / opening_peak
    report["summary"] = _summary(report)
    return report


def run_verification(
    device: str | None = None,
    lower: int | None = None,
    upper: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    channels: int | None = None,
    layers: int | None = None,
    seeds: int = 3,
    max_first_steps: int = 5,
    jobs: int | None = None,
    timeout: float = 120.0,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole verification and return its report as plain Python values (see the module doc).

    A ``KeyboardInterrupt`` (Ctrl-C, or ``SIGTERM`` through the command line) stops the children and
    returns the report of what finished, marked ``interrupted``.

    Args:
        device: ``"cpu"`` or ``"cuda"``; CUDA when available if ``None``.
        lower: Smallest size of the policy (``None``: the device's default, see ``DEFAULTS``).
        upper: Largest size of the policy.
        steps: Training steps of every schedule.
        batch_size: Images per step.
        channels: Width of the conv net.
        layers: Convolutions of the conv net (at least 2).
        seeds: Seeds of the fail-fast check.
        max_first_steps: Max-size steps of the ``max_first`` schedule.
        jobs: Children at once; ``None``: the core count on CPU, on CUDA as many as the cores and
            the GPU memory allow, up to 8.
        timeout: Seconds each child may take; a longer one counts as a hang.
        out: Folder that receives each child's result (``children/<key>.json``) as it finishes.
        progress: Show a progress bar.
    """
    from tqdm import tqdm

    resolved = check_device(device, types=("cpu", "cuda"))
    cuda = resolved.type == "cuda"
    given = {"lower": lower, "upper": upper, "steps": steps, "batch_size": batch_size, "channels": channels}
    values = {k: DEFAULTS[resolved.type][k] if v is None else v for k, v in {**given, "layers": layers}.items()}
    steps = check_int("steps", values["steps"], minimum=2)
    batch = check_int("batch_size", values["batch_size"], minimum=1)
    channels = check_int("channels", values["channels"], minimum=1)
    layers = check_int("layers", values["layers"], minimum=2)
    seeds = check_int("seeds", seeds, minimum=1)
    if jobs is not None:
        jobs = check_int("jobs", jobs, minimum=1)
    timeout = check_float("timeout", timeout, minimum=1.0)
    policy = MultiScalePolicy(values["lower"], values["upper"], max_first_steps=max_first_steps)
    if len(policy.sizes) < 2:
        raise ValueError(
            f"the verification needs at least two sizes in [{values['lower']}, {values['upper']}], got {policy.sizes}"
        )
    largest, next_largest = policy.sizes[-1], policy.sizes[-2]
    estimate = int(2.5 * 2 * layers * batch * channels * largest**2 * 4)  # activations, and the cache's growth
    workers, share = _workers(resolved, jobs, estimate)
    settings: dict[str, Any] = {
        "device": str(resolved),
        "device_name": torch.cuda.get_device_name(resolved) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "lower": policy.lower,
        "upper": policy.upper,
        "sizes": list(policy.sizes),
        "steps": steps,
        "batch": batch,
        "channels": channels,
        "layers": layers,
        "seeds": seeds,
        "max_first_steps": max_first_steps,
        "jobs": workers,
        "share_bytes": share,
        "child_env": {} if cuda else CPU_CHILD_ENV,
    }
    base_env: dict[str, str | None] = (
        {} if cuda else {**CPU_CHILD_ENV, "OMP_NUM_THREADS": str(max(1, _cores() // workers))}
    )
    base = {"device": str(resolved), "batch": batch, "channels": channels, "layers": layers, "share_bytes": share}

    def job(
        key: str, name: str, sizes: list[int], seed: int = 0, cap: int | None = None, variant: str = "default"
    ) -> Job:
        config = {**base, "sizes": sizes, "seed": seed, "cap_bytes": cap, "prealloc": name == "prealloc_first"}
        config["cudnn"] = key.startswith("profile/")
        return Job(key, config, {**base_env, **VARIANTS[variant]})

    calibration_sizes = [largest] * CALIBRATION_STEPS + [next_largest] * CALIBRATION_STEPS
    pending: deque[Job] = deque([job("calibration", "calibration", calibration_sizes)])
    for variant in VARIANTS if cuda else ("default",):
        for name in SCHEDULES:
            pending.append(job(f"profile/{variant}/{name}", name, schedule_sizes(name, policy, steps), variant=variant))
    results: dict[str, dict[str, Any]] = {}
    total = len(pending) + 2 * (len(ASSERTED) * seeds + len(SCHEDULES) - len(ASSERTED))
    children = Path(out) / "children" if out is not None else None
    if children is not None:
        children.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=total, disable=not progress, unit="run", desc=f"memory verification, {workers} at once")

    def done(finished: Job, result: dict[str, Any]) -> None:
        results[finished.key] = result
        if children is not None:
            text = json.dumps({"key": finished.key, "config": finished.config, "result": result})
            (children / f"{finished.key.replace('/', '-')}.json").write_text(text)
        bar.update(1)
        if finished.key != "calibration":
            return
        cal = _calibration(result if "crashed" not in result else None, largest, next_largest, cuda)
        capped = []
        for name in SCHEDULES:
            for seed in range(seeds if name in ASSERTED else 1):
                seeded = MultiScalePolicy(policy.lower, policy.upper, max_first_steps=max_first_steps, seed=seed)
                sizes = schedule_sizes(name, seeded, steps)
                capped.append(job(f"cap_above/{name}/{seed}", name, sizes, seed, cal["cap_above_bytes"]))
                capped.append(job(f"cap_below/{name}/{seed}", name, sizes, seed, cal["cap_below_bytes"]))
        # The runs that finish take longest: start them first, so the short failing ones fill the gaps.
        pending.extend(sorted(capped, key=lambda j: not j.key.startswith("cap_above")))

    start = time.perf_counter()
    interrupted = False
    try:
        run_jobs(pending, workers, timeout, done)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    report = build_report(settings, results, interrupted=interrupted)
    report["seconds"] = time.perf_counter() - start
    return report


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ----------------------------------------------------------------------------------- the output
def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MB"


def _summary(report: dict[str, Any]) -> list[str]:
    cal, schedules = report["calibration"], report["schedules"]
    verdicts = report["verdicts"]
    lines = [
        f"fail-fast {verdicts['fail_fast']}: calibrated needs ({cal['measure']}) {_mb(cal['need_next_largest_bytes'])} "
        f"at {cal['next_largest']}px and {_mb(cal['need_largest_bytes'])} at {cal['largest']}px; "
        f"cap below {_mb(cal['cap_below_bytes'])}, cap above {_mb(cal['cap_above_bytes'])}.",
    ]
    max_first, random_first = (
        schedules["max_first"]["fail_fast_by_seed"],
        schedules["random_first"]["fail_fast_by_seed"],
    )
    lines.append(
        "max-size-first under the low cap failed at steps "
        f"{[r['fail_step_below_cap'] for r in max_first.values()]} (seeds {list(max_first)}); "
        f"above the cap it finished: {[r['finished_above_cap'] for r in max_first.values()]}."
    )
    lines.append(
        "random-first under the low cap failed at steps "
        f"{[r['fail_step_below_cap'] for r in random_first.values()]}; its first max-size steps were "
        f"{[r['first_max_step'] for r in random_first.values()]}; above the cap it finished: "
        f"{[r['finished_above_cap'] for r in random_first.values()]}."
    )
    caught = {
        name: [r["ooms_caught_below_cap"] for r in entry["fail_fast_by_seed"].values()]
        for name, entry in schedules.items()
    }
    if any(any(count for count in counts) for counts in caught.values()):
        lines.append(
            "out-of-memory errors caught without ending the run under the low cap (cuDNN falling back to "
            "less workspace): " + ", ".join(f"{name} {counts}" for name, counts in caught.items()) + "."
        )
    ratio = report["max_first_growth_ratio"]
    if ratio is not None:
        lines.append(f"after its max-size steps, max-size-first's peak moved by {ratio:+.1%} of the opening peak.")
    allocator = report["allocator"]
    if allocator["verdict"] == "not applicable":
        lines.append(f"allocator not applicable: {allocator['reason']}.")
    else:
        parts = []
        for variant, rows in allocator["variants"].items():
            mine = rows["max_first"]["max_reserved_bytes"]
            parts.append(
                f"{variant}: "
                + ", ".join(
                    f"{name} {_mb(rows[name]['max_reserved_bytes'])}"
                    + (
                        f" (x{rows[name]['max_reserved_bytes'] / mine:.2f})"
                        if mine and rows[name]["max_reserved_bytes"]
                        else ""
                    )
                    for name in ("max_first", "random_first", "ascending")
                )
            )
        lines.append(
            f"allocator {allocator['verdict']} ({allocator['reason']}): peak reserved " + "; ".join(parts) + "."
        )
    for problem in report["crashed"]:
        lines.append(f"crash or hang: {problem}")
    if report["interrupted"]:
        lines.append(f"interrupted: {report['runs_finished']} of {report['runs_expected']} runs had finished.")
    return lines


def print_report(report: dict[str, Any], file: TextIO) -> None:
    """Print the per-schedule tables (one per allocator variant) and the summary."""
    settings = report["settings"]
    print(
        f"device: {report['device']} ({settings['device_name']}), torch {settings['torch']}, "
        f"{settings['jobs']} children at once" + (f", {report['seconds']:.0f} s" if "seconds" in report else ""),
        file=file,
    )
    print(
        f"sizes: {settings['sizes'][0]}..{settings['sizes'][-1]} ({len(settings['sizes'])} sizes), "
        f"{settings['steps']} steps, batch {settings['batch']}, conv net {settings['layers']} layers x "
        f"{settings['channels']} channels, SGD",
        file=file,
    )
    cuda = "schedules_expandable_segments" in report
    for key in [k for k in report if k.startswith("schedules")]:
        variant = key.removeprefix("schedules_") if key != "schedules" else "default"
        measure = "peak reserved" if cuda else "peak RSS"
        print(f"\n{variant}{' allocator' if cuda else ''} ({measure} above the baseline)", file=file)
        head = f"{'schedule':<15} {'steps':>5} {'peak':>11} {'at step':>7} {'growth':>11}"
        if cuda:
            head += f" {'retries':>7} {'inact. split':>12}"
        head += f" {'ms/step':>8}"
        if variant == "default":
            head += f" {'fail<cap':>8} {'ok>cap':>6}"
        print(head, file=file)
        for name, entry in report[key].items():
            peaks = entry["peak_bytes"]
            row = (
                f"{name:<15} {len(peaks):>5} {_mb(max(peaks) if peaks else None):>11} {entry['peak_step']!s:>7} "
                f"{_mb(entry['growth_after_max_first_bytes']):>11}"
            )
            if cuda:
                retries, splits = entry.get("num_alloc_retries") or [], entry.get("inactive_split_bytes") or []
                row += f" {retries[-1] if retries else '-'!s:>7} {_mb(max(splits) if splits else None):>12}"
            mean = entry["mean_step_seconds"]
            row += f" {'-' if mean is None else f'{mean * 1000:.1f}':>8}"
            if variant == "default":
                fail = entry.get("fail_step_below_cap")
                row += f" {'-' if fail is None else fail!s:>8} {'yes' if entry.get('finished_above_cap') else 'no':>6}"
            print(row, file=file)
    print(file=file)
    for line in report["summary"]:
        print(line, file=file)


def report_figure(report: dict[str, Any]) -> Any:
    """Return a matplotlib figure of the peak memory per step, one panel per allocator variant.

    Both caps of the fail-fast check are drawn; the legend sits outside the axes. Needs matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("the memory plot needs matplotlib: pip install 'fastresize[plot]'") from error
    keys = [k for k in report if k.startswith("schedules")]
    figure, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys) + 3, 5), squeeze=False, sharey=True)
    styles = ["-", "--", ":", "-.", (0, (1, 3))]  # schedules that share draws overlap: tell them apart
    cal = report["calibration"]
    cuda = len(keys) > 1
    for axis, key in zip(axes[0], keys, strict=True):
        for (name, entry), style in zip(report[key].items(), styles, strict=True):
            axis.plot([b / 2**20 for b in entry["peak_bytes"]], marker=".", linestyle=style, label=name)
        if key == "schedules":
            # On CUDA the caps bound the capped runs, which use native convolutions (no cuDNN
            # workspace): they are not limits on these cuDNN profiles.
            runs = " (capped runs,\nnative convolutions)" if cuda else ""
            axis.axhline(cal["cap_below_bytes"] / 2**20, color="black", linestyle="--", label="cap below" + runs)
            axis.axhline(
                cal["cap_above_bytes"] / 2**20, color="grey", linestyle=(0, (6, 2, 1, 2)), label="cap above" + runs
            )
        variant = "default" if key == "schedules" else key.removeprefix("schedules_")
        axis.set_title(f"{variant} allocator" if cuda else "CPU (peak RSS)")
        axis.set_xlabel("step")
    axes[0][0].set_ylabel(f"peak {'reserved ' if cuda else ''}memory above baseline (MB)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center right", frameon=False)
    verdicts = report["verdicts"]
    figure.suptitle(
        f"fastresize memory verification on {report['device']}: fail-fast {verdicts['fail_fast']}, "
        f"allocator {verdicts['allocator']}"
    )
    figure.tight_layout(rect=(0, 0, 1 - 2.2 / figure.get_figwidth(), 1))
    return figure


def save_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.txt`` and (with matplotlib) ``memory.png`` into ``out``; return the paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "report.json", folder / "report.txt"]
    written[0].write_text(json.dumps(report, indent=1))
    with written[1].open("w") as file:
        print_report(report, file)
    try:
        figure = report_figure(report)
    except ImportError:
        return written
    figure.savefig(folder / "memory.png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return [*written, folder / "memory.png"]


DESCRIPTION = """\
Verify max-size-first: train a small conv net under five size schedules (max_first, prealloc_first,
random_first, ascending, max_only), each in a fresh child process, and report two verdicts.

fail-fast: under a memory cap between the needs of the two largest sizes, max-size-first must fail
at step 0 and random-first at its first max-size step; under a cap above the largest need,
max-size-first must finish. On CUDA the needs are the peak memory of the step's tensors
(max_memory_allocated) and the cap is an allocator limit (set_per_process_memory_fraction) above the
memory held after warm-up: the caching allocator frees its cache and retries rather than fail, but
it cannot free live tensors, so a step whose tensors need more than the cap must fail. On CPU the
need is the peak RSS and the cap is RLIMIT_DATA.

allocator (CUDA only): max-size-first's peak reserved memory is at most random-first's and
ascending's, with the default allocator and with expandable_segments:True; the report also gives
allocator retries, inactive split bytes and the mean step time. Not applicable on CPU.

Children run side by side (CPU: one per core; CUDA: up to 8, each under its own share of the GPU
memory). A default run takes about a minute on an otherwise idle 2-core CPU (its children use about
80 CPU-seconds) and is sized to take under a minute on one H100-class GPU. Results go to --out as
each child finishes; Ctrl-C or SIGTERM prints the report of what finished."""


def add_arguments(parser: Any) -> None:
    """Declare the memory command's options on an ``argparse`` parser."""
    cpu, gpu = DEFAULTS["cpu"], DEFAULTS["cuda"]

    def per_device(key: str) -> str:
        return f"(default: {cpu[key]} on cpu, {gpu[key]} on cuda)"

    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="device (default: cuda when available)")
    parser.add_argument("--lower", type=int, default=None, help=f"smallest size {per_device('lower')}")
    parser.add_argument("--upper", type=int, default=None, help=f"largest size {per_device('upper')}")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps per schedule {per_device('steps')}")
    parser.add_argument("--batch-size", type=int, default=None, help=f"images per step {per_device('batch_size')}")
    parser.add_argument("--channels", type=int, default=None, help=f"width of the conv net {per_device('channels')}")
    parser.add_argument("--layers", type=int, default=None, help=f"convolutions of the conv net {per_device('layers')}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the fail-fast check")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="children at once (default: the cores on cpu; on cuda up to 8, as memory allows)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds a child may take before it counts as a hang"
    )
    parser.add_argument(
        "--out", default="fastresize-memory", help="folder for children/*.json, report.json, report.txt and memory.png"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
