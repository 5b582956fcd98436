"""The memory command: its options, then the two phases of the verification and the report.

Phase 1 calibrates the needs of the two largest sizes, while the uncapped profiles of every schedule
fill the other workers; phase 2 runs every schedule under the two caps placed from that calibration.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from fastresize._checks import check_device, check_float, check_int
from fastresize.policy import MultiScalePolicy
from fastresize.verify.child import CPU_CHILD_ENV, Job, Pool
from fastresize.verify.report import build_report, calibrate, runs_expected
from fastresize.verify.schedules import CALIBRATION_STEPS, DEFAULTS, SCHEDULES, VARIANTS, schedule_sizes, seeds_of

MAX_CUDA_JOBS = 8
# What a CUDA process holds outside the caching allocator (context, cuDNN and cuBLAS handles).
_CONTEXT_BYTES = 1 << 30
DESCRIPTION = f"""\
Verify max-size-first: train a small conv net under {len(SCHEDULES)} size schedules, each in a fresh child
process, and report two verdicts. The schedules:
{chr(10).join(f"  {name:<15} {schedule.purpose}" for name, schedule in SCHEDULES.items())}

fail-fast: under a memory cap between the needs of the two largest sizes, max-size-first must fail
at step 0 (on CPU, where a step's need depends on its size alone, random-first must also fail at its
first max-size step; on CUDA, where it fails is reported); under a cap above the largest need,
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
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="device (default: cuda when available)")
    for key, what in [("lower", "smallest size"), ("upper", "largest size"), ("steps", "training steps per schedule"),
                      ("batch_size", "images per step"), ("channels", "width of the conv net"),
                      ("layers", "convolutions of the conv net")]:  # fmt: skip
        default = f"(default: {DEFAULTS['cpu'][key]} on cpu, {DEFAULTS['cuda'][key]} on cuda)"
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"{what} {default}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the fail-fast check")
    jobs = "children at once (default: the cores on cpu; on cuda up to 8, as memory allows)"
    parser.add_argument("--jobs", type=int, default=None, help=jobs)
    timeout = "seconds a child may take before it counts as a hang"
    parser.add_argument("--timeout", type=float, default=120.0, help=timeout)
    out = "folder for children/*.json, report.json, report.txt and memory.png"
    parser.add_argument("--out", default="fastresize-memory", help=out)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


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
    resolved = check_device(device, types=("cpu", "cuda"))
    cuda = resolved.type == "cuda"
    variants = tuple(VARIANTS) if cuda else ("default",)
    given = {"lower": lower, "upper": upper, "steps": steps, "batch_size": batch_size, "channels": channels}
    values = {k: DEFAULTS[resolved.type][k] if v is None else v for k, v in {**given, "layers": layers}.items()}
    minimums = {"steps": 2, "batch_size": 1, "channels": 1, "layers": 2}
    steps, batch, channels, layers = (check_int(key, values[key], minimum=low) for key, low in minimums.items())
    seeds = check_int("seeds", seeds, minimum=1)
    jobs = None if jobs is None else check_int("jobs", jobs, minimum=1)
    timeout = check_float("timeout", timeout, minimum=1.0)
    policy = MultiScalePolicy(values["lower"], values["upper"], max_first_steps=max_first_steps)
    if len(policy.sizes) < 2:
        raise ValueError(
            f"the verification needs at least two sizes in [{values['lower']}, {values['upper']}], got {policy.sizes}"
        )
    largest, next_largest = policy.sizes[-1], policy.sizes[-2]
    estimate = int(2.5 * 2 * layers * batch * channels * largest**2 * 4)  # activations, and the cache's growth
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers, share = _workers_and_share(resolved, jobs, estimate, cores)
    device_name = torch.cuda.get_device_name(resolved) if cuda else platform.processor() or "cpu"
    settings: dict[str, Any] = {
        "device": str(resolved), "device_name": device_name, "torch": torch.__version__, "lower": policy.lower,
        "upper": policy.upper, "sizes": list(policy.sizes), "steps": steps, "batch": batch, "channels": channels,
        "layers": layers, "seeds": seeds, "max_first_steps": max_first_steps, "jobs": workers, "share_bytes": share,
        "child_env": {} if cuda else CPU_CHILD_ENV,
    }  # fmt: skip
    base_env = {} if cuda else {**CPU_CHILD_ENV, "OMP_NUM_THREADS": str(max(1, cores // workers))}
    base = {"device": str(resolved), "batch": batch, "channels": channels, "layers": layers, "share_bytes": share}

    def job(key: str, name: str, seed: int = 0, cap: int | None = None, variant: str = "default") -> Job:
        if name == "calibration":
            sizes, prealloc = [largest] * CALIBRATION_STEPS + [next_largest] * CALIBRATION_STEPS, False
        else:
            seeded = MultiScalePolicy(policy.lower, policy.upper, max_first_steps=max_first_steps, seed=seed)
            sizes, prealloc = schedule_sizes(name, seeded, steps), SCHEDULES[name].prealloc
        config = {**base, "sizes": sizes, "seed": seed, "cap_bytes": cap, "prealloc": prealloc}
        config["cudnn"] = key.startswith("profile/")  # the capped runs need native convolutions (see .child)
        return Job(key, config, {**base_env, **VARIANTS[variant]})

    children = Path(out) / "children" if out is not None else None
    pool = Pool(workers, timeout, children, total=runs_expected(cuda, seeds) if progress else None)
    start, interrupted = time.perf_counter(), False
    try:
        with pool:
            # Phase 1: the calibration, with the uncapped profiles on the workers it leaves free.
            pool.submit([job("calibration", "calibration")])
            pool.submit(job(f"profile/{v}/{name}", name, variant=v) for v in variants for name in SCHEDULES)
            caps = calibrate(pool.wait("calibration"), largest, next_largest, cuda)
            # Phase 2: every schedule under both caps. The runs that finish take longest: they start
            # first, so that the short failing ones fill the gaps.
            pool.submit(
                job(f"cap_{which}/{name}/{seed}", name, seed, caps[f"cap_{which}_bytes"])
                for which in ("above", "below")
                for name in SCHEDULES
                for seed in seeds_of(name, seeds)
            )
            pool.wait()
    except KeyboardInterrupt:
        interrupted = True
    report = build_report(settings, pool.results, interrupted=interrupted)
    report["seconds"] = time.perf_counter() - start
    return report


def _workers_and_share(device: torch.device, jobs: int | None, estimate: int, cores: int) -> tuple[int, int | None]:
    if device.type != "cuda":
        return (cores if jobs is None else jobs), None
    free = torch.cuda.mem_get_info(device)[0]
    if jobs is None:
        jobs = max(1, min(MAX_CUDA_JOBS, cores, free // (estimate + _CONTEXT_BYTES)))
    share = (free - jobs * _CONTEXT_BYTES) // jobs
    if share <= 0:
        raise ValueError(
            f"jobs={jobs} leaves no GPU memory for each child ({free / 2**30:.1f} GiB free); pass a smaller --jobs"
        )
    return jobs, share
