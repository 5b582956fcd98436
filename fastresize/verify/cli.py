"""The options of ``python -m fastresize memory``."""

from __future__ import annotations

from typing import Any

from fastresize.verify.schedules import DEFAULTS, SCHEDULES

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
    cpu, gpu = DEFAULTS["cpu"], DEFAULTS["cuda"]
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="device (default: cuda when available)")
    for key, what in [("lower", "smallest size"), ("upper", "largest size"), ("steps", "training steps per schedule"),
                      ("batch_size", "images per step"), ("channels", "width of the conv net"),
                      ("layers", "convolutions of the conv net")]:  # fmt: skip
        default = f"(default: {cpu[key]} on cpu, {gpu[key]} on cuda)"
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"{what} {default}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the fail-fast check")
    jobs = "children at once (default: the cores on cpu; on cuda up to 8, as memory allows)"
    parser.add_argument("--jobs", type=int, default=None, help=jobs)
    timeout = "seconds a child may take before it counts as a hang"
    parser.add_argument("--timeout", type=float, default=120.0, help=timeout)
    out = "folder for children/*.json, report.json, report.txt and memory.png"
    parser.add_argument("--out", default="fastresize-memory", help=out)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
