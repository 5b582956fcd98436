"""The verification of max-size-first: ``python -m fastresize memory``.

Trains a small conv model under several size schedules, each in its own subprocess on the same
seeds, records the peak memory of every step, and checks the one thing max-size-first promises:
**fail-fast**. Under a memory cap between the needs of the two largest sizes, max-size-first must
fail at step 0 and random-first at its first max-size step; under a cap 5% above the largest need,
max-size-first must finish. Whether it also prevents later growth (allocator caching) is measured
and reported, not assumed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from fastresize._checks import check_device, check_int
from fastresize.policy import MultiScalePolicy

SCHEDULES = ("max_first", "prealloc_first", "random_first", "ascending", "max_only")
# Pin glibc's allocator so that a step's need depends on its size, not on the history before it:
# large blocks go straight to mmap (and back on free), and oneDNN caches no per-shape primitives.
CPU_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}
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


# ------------------------------------------------------------------------------------ the child
def _is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(marker in text for marker in _OOM_MARKERS)


def child_main(config: dict[str, Any]) -> dict[str, Any]:
    """Train one schedule in this (fresh) process and return what every step used.

    The cap, if any, is set after importing torch and after a warm-up step at the smallest size,
    relative to the memory in use then: CUDA through ``set_per_process_memory_fraction`` (which
    counts reserved memory), CPU through ``RLIMIT_DATA``.
    """
    import torch
    from torch import nn

    from fastresize.memory import MemoryProfiler, read_status_kib, reset_peak_rss

    device = torch.device(config["device"])
    cuda = device.type == "cuda"
    torch.manual_seed(config["seed"])
    width = config["channels"]
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 3, 3, padding=1),
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step(side: int, update: bool) -> None:
        x = torch.rand(config["batch"], 3, side, side, device=device)
        model(x).square().mean().backward()
        if update:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sizes: list[int] = config["sizes"]
    train_step(min(sizes), update=True)  # kernels, Adam's state, the allocator's first blocks
    if cuda:
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_reserved(device)
    else:
        reset_peak_rss()
        baseline = read_status_kib("VmRSS") or 0
    cap = config["cap_bytes"]
    if cap is not None:
        if cuda:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, (baseline + cap) / total), device)
        else:
            import resource

            data = read_status_kib("VmData") or 0
            resource.setrlimit(resource.RLIMIT_DATA, (data + cap, resource.RLIM_INFINITY))

    profiler = MemoryProfiler(device)
    fail_step: int | None = None
    error_text = None
    for index, side in enumerate(sizes):
        try:
            with profiler.step((side, side)):
                train_step(side, update=not (config["prealloc"] and index == 0))
        except (RuntimeError, MemoryError) as error:
            if not _is_oom(error):
                raise
            fail_step, error_text = index, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            break
    records = profiler.records
    result: dict[str, Any] = {
        "baseline_bytes": baseline,
        "peak_bytes": [r.peak_bytes - baseline for r in records],
        "seconds": [r.seconds for r in records],
        "new_shape": [r.new_shape for r in records],
        "fail_step": fail_step,
        "error": error_text,
    }
    if cuda:
        result.update(
            peak_allocated_bytes=[r.peak_allocated_bytes for r in records],
            num_alloc_retries=[r.num_alloc_retries for r in records],
            inactive_split_bytes=[r.inactive_split_bytes for r in records],
        )
    return result


# ----------------------------------------------------------------------------------- the parent
def _run_child(config: dict[str, Any], timeout: float, extra_env: dict[str, str]) -> dict[str, Any]:
    """Run :func:`child_main` in a fresh interpreter; a crash or a hang comes back as ``crashed``."""
    env = {**os.environ, **extra_env}
    if config["device"] == "cpu":
        env.update(CPU_CHILD_ENV)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    code = (
        "import json, sys; from fastresize.verify import child_main; "
        "print(json.dumps(child_main(json.loads(sys.argv[1]))))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(config)], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return {"crashed": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"crashed": f"exit status {done.returncode}: {' | '.join(tail)}"}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _first_max_step(sizes: Sequence[int], max_size: int) -> int | None:
    return next((i for i, side in enumerate(sizes) if side == max_size), None)


def run_verification(
    device: str | None = None,
    lower: int = 64,
    upper: int = 160,
    steps: int = 24,
    batch_size: int = 8,
    channels: int = 16,
    seeds: int = 3,
    max_first_steps: int = 5,
    timeout: float = 120.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole verification and return its report as plain Python values (see the module doc).

    Args:
        device: ``"cpu"`` or ``"cuda"``; CUDA when available if ``None``.
        lower: Smallest size of the policy.
        upper: Largest size of the policy.
        steps: Training steps of every schedule.
        batch_size: Images per step.
        channels: Width of the conv model.
        seeds: Seeds of the fail-fast check.
        max_first_steps: Max-size steps of the ``max_first`` schedule.
        timeout: Seconds each subprocess may take; a longer one counts as a hang.
        progress: Show a progress bar.
    """
    from tqdm import tqdm

    resolved = check_device(device, types=("cpu", "cuda"))
    device, cuda = str(resolved), resolved.type == "cuda"

    steps = check_int("steps", steps, minimum=2)
    seeds = check_int("seeds", seeds, minimum=1)
    batch = check_int("batch_size", batch_size, minimum=1)
    channels = check_int("channels", channels, minimum=1)
    policy = MultiScalePolicy(lower, upper, max_first_steps=max_first_steps)
    if len(policy.sizes) < 2:
        raise ValueError(f"the verification needs at least two sizes in [{lower}, {upper}], got {policy.sizes}")
    largest, next_largest = policy.sizes[-1], policy.sizes[-2]
    variants: dict[str, dict[str, str]] = {"default": {}}
    if cuda:
        variants["expandable_segments"] = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    asserted = ("max_first", "random_first")
    total = 2 + len(SCHEDULES) * len(variants) + 2 * len(asserted) * seeds + 2 * (len(SCHEDULES) - len(asserted))
    bar = tqdm(total=total, disable=not progress, unit="run", desc="memory verification")

    def child(
        sizes: list[int], seed: int, cap: int | None, prealloc: bool = False, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        config = {"device": device, "sizes": sizes, "seed": seed, "batch": batch, "channels": channels,
                  "cap_bytes": cap, "prealloc": prealloc}  # fmt: skip
        result = _run_child(config, timeout, env or {})
        bar.update(1)
        return result

    # 1. Calibrate, each size in a fresh process without a cap: the peak over its first steps.
    calibration = {side: child([side] * 3, 0, None) for side in (largest, next_largest)}
    crashed = [f"calibration at {side}px: {r['crashed']}" for side, r in calibration.items() if "crashed" in r]
    need = {side: max(r.get("peak_bytes") or [0]) for side, r in calibration.items()}
    low_cap = (need[largest] + need[next_largest]) // 2
    high_cap = int(need[largest] * 1.05)

    # 2. Profile every schedule without a cap.
    report: dict[str, Any] = {"device": device, "settings": {
        "lower": lower, "upper": upper, "sizes": list(policy.sizes), "steps": steps, "batch": batch,
        "channels": channels, "seeds": seeds, "max_first_steps": max_first_steps,
        "child_env": {} if cuda else CPU_CHILD_ENV,
    }}  # fmt: skip
    report["calibration"] = {
        "need_largest_bytes": need[largest],
        "need_next_largest_bytes": need[next_largest],
        "largest": largest,
        "next_largest": next_largest,
        "cap_below_bytes": low_cap,
        "cap_above_bytes": high_cap,
    }
    for variant, env in variants.items():
        key = "schedules" if variant == "default" else f"schedules_{variant}"
        report[key] = {}
        for name in SCHEDULES:
            sizes = schedule_sizes(name, policy, steps)
            result = child(sizes, 0, None, prealloc=name == "prealloc_first", env=env)
            if "crashed" in result:
                crashed.append(f"{name} ({variant}): {result['crashed']}")
                result = {"peak_bytes": [], "fail_step": None}
            opening = 1 if name == "prealloc_first" else max_first_steps
            peaks = result["peak_bytes"]
            entry = {
                "sizes": sizes,
                "peak_bytes": peaks,
                "peak_step": max(range(len(peaks)), key=peaks.__getitem__) if peaks else None,
                "growth_after_max_first_bytes": (max(peaks[opening:]) - max(peaks[:opening]))
                if len(peaks) > opening
                else None,
                **{k: v for k, v in result.items() if k not in ("peak_bytes", "fail_step", "error", "baseline_bytes")},
            }
            report[key][name] = entry

    # 3. The fail-fast check: every schedule under both caps; the asserted ones for every seed.
    fail_fast: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in SCHEDULES}
    for name in SCHEDULES:
        for seed in range(seeds if name in asserted else 1):
            seeded = MultiScalePolicy(lower, upper, max_first_steps=max_first_steps, seed=seed)
            sizes = schedule_sizes(name, seeded, steps)
            below = child(sizes, seed, low_cap, prealloc=name == "prealloc_first")
            above = child(sizes, seed, high_cap, prealloc=name == "prealloc_first")
            for label, result in (("below", below), ("above", above)):
                if "crashed" in result:
                    crashed.append(f"{name} seed {seed} {label} the cap: {result['crashed']}")
            fail_fast[name][seed] = {
                "first_max_step": _first_max_step(sizes, largest),
                "fail_step_below_cap": below.get("fail_step"),
                "error_below_cap": below.get("error"),
                "finished_above_cap": "crashed" not in above and above.get("fail_step") is None,
            }
        report["schedules"][name]["fail_step_below_cap"] = fail_fast[name][0]["fail_step_below_cap"]
        report["schedules"][name]["finished_above_cap"] = fail_fast[name][0]["finished_above_cap"]
        report["schedules"][name]["fail_fast_by_seed"] = fail_fast[name]
    bar.close()

    held_max = all(r["fail_step_below_cap"] == 0 and r["finished_above_cap"] for r in fail_fast["max_first"].values())
    held_random = all(r["fail_step_below_cap"] == r["first_max_step"] for r in fail_fast["random_first"].values())
    calibrated = need[largest] > need[next_largest] > 0
    report["crashed"] = crashed
    report["checks"] = {
        "calibration_monotonic": calibrated,
        "max_first_fails_at_step_0_below_cap_and_finishes_above": held_max,
        "random_first_fails_at_its_first_max_step": held_random,
        "no_crash_or_hang": not crashed,
    }
    report["verdict"] = "held" if all(report["checks"].values()) else "did not hold"
    # Reported, not part of the verdict: whether a later step raised the peak above the opening's.
    opening_peak = max(report["schedules"]["max_first"]["peak_bytes"][:max_first_steps] or [0])
    growth = report["schedules"]["max_first"]["growth_after_max_first_bytes"]
    report["max_first_growth_ratio"] = None if growth is None or not opening_peak else growth / opening_peak
    report["summary"] = _summary(report)
    return report


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MB"


def _summary(report: dict[str, Any]) -> list[str]:
    cal, schedules = report["calibration"], report["schedules"]
    lines = [
        f"fail-fast {report['verdict']}: calibrated needs {_mb(cal['need_next_largest_bytes'])} at "
        f"{cal['next_largest']}px and {_mb(cal['need_largest_bytes'])} at {cal['largest']}px; "
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
        f"{[r['first_max_step'] for r in random_first.values()]}."
    )
    ratio = report["max_first_growth_ratio"]
    if ratio is not None:
        verdict = "within" if ratio <= 0.05 else "above"
        lines.append(
            f"after its max-size steps, max-size-first's peak moved by {ratio:+.1%} of the opening peak "
            f"({verdict} the 5% target)."
        )
    growth = {name: entry["growth_after_max_first_bytes"] for name, entry in schedules.items()}
    lines.append(
        "peak growth after the opening steps (later steps minus the opening's peak): "
        + ", ".join(f"{name} {_mb(value)}" for name, value in growth.items())
        + "."
    )
    if "schedules_expandable_segments" in report:
        peaks = {n: max(e["peak_bytes"] or [0]) for n, e in report["schedules_expandable_segments"].items()}
        spread = (max(peaks.values()) - min(peaks.values())) / max(max(peaks.values()), 1)
        lines.append(
            f"with expandable_segments the schedules' peak reserved memory spans {spread:.1%} "
            f"({'equal within 5%' if spread <= 0.05 else 'not equal'})."
        )
    for problem in report["crashed"]:
        lines.append(f"crash or hang: {problem}")
    return lines


def print_report(report: dict[str, Any], file: TextIO) -> None:
    """Print the per-schedule table and the summary."""
    print(f"device: {report['device']}   sizes: {report['settings']['sizes']}", file=file)
    header = f"{'schedule':<15} {'steps':>5} {'peak':>11} {'peak step':>9} {'growth':>11} {'fail<cap':>8} {'ok>cap':>6}"
    print(header, file=file)
    for name, entry in report["schedules"].items():
        peaks = entry["peak_bytes"]
        fail = entry.get("fail_step_below_cap")
        print(
            f"{name:<15} {len(peaks):>5} {_mb(max(peaks) if peaks else None):>11} {entry['peak_step']!s:>9} "
            f"{_mb(entry['growth_after_max_first_bytes']):>11} {'-' if fail is None else fail:>8} "
            f"{'yes' if entry.get('finished_above_cap') else 'no':>6}",
            file=file,
        )
    for line in report["summary"]:
        print(line, file=file)


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Save a PNG of the peak memory per step of every schedule (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("--plot needs matplotlib: pip install 'fastresize[plot]'") from error
    figure, axis = plt.subplots(figsize=(9, 5))
    styles = ["-", "--", ":", "-.", (0, (1, 3))]  # schedules that share draws overlap: tell them apart
    for (name, entry), style in zip(report["schedules"].items(), styles, strict=True):
        axis.plot([b / 2**20 for b in entry["peak_bytes"]], marker=".", linestyle=style, label=name)
    cal = report["calibration"]
    axis.axhline(cal["cap_below_bytes"] / 2**20, color="grey", linestyle="--", label="cap below")
    axis.set_xlabel("step")
    axis.set_ylabel("peak memory above baseline (MB)")
    axis.set_title(f"fastresize memory verification on {report['device']}: fail-fast {report['verdict']}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def add_arguments(parser: Any) -> None:
    """Declare the memory command's options on an ``argparse`` parser."""
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--lower", type=int, default=64, help="smallest size (default: 64)")
    parser.add_argument("--upper", type=int, default=160, help="largest size (default: 160)")
    parser.add_argument("--steps", type=int, default=24, help="training steps per schedule (default: 24)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=16, help="width of the conv model (default: 16)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the fail-fast check (default: 3)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per subprocess (default: 120)")
    parser.add_argument("--json", default=None, help="write the report as JSON to this path")
    parser.add_argument("--plot", default=None, help="write a PNG plot of memory per step (needs matplotlib)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
