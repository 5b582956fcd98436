"""The report: the caps placed from the calibration, each schedule's figures and the two verdicts.

The verdicts are the ones ``python -m fastresize memory --help`` defines (``cli.DESCRIPTION``). Beyond
it: the high cap is 5% (at least 4 MiB) above the largest need or what a step at the largest size
reserves in a fresh allocator, whichever is larger, so that max-size-first's first step runs as in the
calibration; the allocator verdict allows 1% and compares runs of one invocation (they run side by
side); on CPU it is not applicable, since glibc hands large blocks back after every step and there
is no cache whose reuse the order of sizes could change.
"""

from __future__ import annotations

from typing import Any

from fastresize.policy import MultiScalePolicy
from fastresize.verify.schedules import CALIBRATION_STEPS, SCHEDULES, VARIANTS, schedule_sizes, seeds_of

ALLOCATOR_TOLERANCE = 0.01
HIGH_CAP_HEADROOM = 1.05
# At the smallest settings 5% is a few hundred KB, less than what oneDNN's just-in-time primitives
# vary by between two processes ("could not create a primitive" under the cap): keep at least this.
HIGH_CAP_MIN_HEADROOM_BYTES = 4 * 2**20
_COMPARED = ("max_first", "random_first", "ascending")


def mb(value: float | None) -> str:
    """``value`` bytes in MB, or ``-`` for ``None``."""
    return "-" if value is None else f"{value / 2**20:.1f} MB"


def runs_expected(cuda: bool, seeds: int) -> int:
    """The children of a whole run: the calibration, the uncapped profiles and the capped runs."""
    profiles = (len(VARIANTS) if cuda else 1) * len(SCHEDULES)
    return 1 + profiles + 2 * sum(len(seeds_of(name, seeds)) for name in SCHEDULES)


def calibrate(result: dict[str, Any] | None, largest: int, next_largest: int, cuda: bool) -> dict[str, Any]:
    """The needs of the two largest sizes, from the calibration child's result, and the caps placed from them."""
    result = result if result and "crashed" not in result else {}
    measured = result.get("peak_allocated_bytes" if cuda else "peak_bytes") or []
    n = CALIBRATION_STEPS
    need_largest, need_next = max(measured[:n] or [0]), max(measured[n : 2 * n] or [0])
    reserved_largest = max((result.get("peak_bytes") or [])[:n] or [0])
    high = max(need_largest, reserved_largest)
    slack = (
        result["baseline_bytes"] - result["baseline_allocated_bytes"] if "baseline_allocated_bytes" in result else None
    )
    return {
        "measure": "peak allocated (max_memory_allocated)" if cuda else "peak RSS",
        "largest": largest,
        "next_largest": next_largest,
        "need_largest_bytes": need_largest,
        "need_next_largest_bytes": need_next,
        "reserved_largest_bytes": reserved_largest,
        "cap_below_bytes": (need_largest + need_next) // 2,
        "cap_above_bytes": max(int(high * HIGH_CAP_HEADROOM), high + HIGH_CAP_MIN_HEADROOM_BYTES),
        "baseline_slack_bytes": slack if cuda else None,
    }


def _schedule_entry(sizes: list[int], result: dict[str, Any], opening: int) -> dict[str, Any]:
    peaks, seconds = result.get("peak_bytes") or [], result.get("seconds") or []
    entry: dict[str, Any] = {
        "sizes": sizes,
        "peak_bytes": peaks,
        "peak_step": max(range(len(peaks)), key=peaks.__getitem__) if peaks else None,
        "growth_after_max_first_bytes": (max(peaks[opening:]) - max(peaks[:opening])) if len(peaks) > opening else None,
        "seconds": seconds,
        "mean_step_seconds": sum(seconds) / len(seconds) if seconds else None,
        "new_shape": result.get("new_shape") or [],
    }
    entry.update(
        {k: result[k] for k in ("peak_allocated_bytes", "num_alloc_retries", "inactive_split_bytes") if k in result}
    )
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
        variants[variant] = rows = {}
        for name, entry in schedules.items():
            peaks, retries = entry["peak_bytes"], entry.get("num_alloc_retries") or []
            splits = entry.get("inactive_split_bytes") or []
            rows[name] = {
                "max_reserved_bytes": max(peaks) if peaks else None,
                "max_reserved_step": entry["peak_step"],
                "num_alloc_retries": retries[-1] if retries else None,
                "max_inactive_split_bytes": max(splits) if splits else None,
                "mean_step_seconds": entry["mean_step_seconds"],
            }
        mine, *others = (rows[name]["max_reserved_bytes"] for name in _COMPARED)
        if mine is None or None in others:
            held[variant] = None
            reasons.append(f"{variant}: a schedule did not finish")
        elif any(rows[name]["num_alloc_retries"] for name in _COMPARED):
            held[variant] = None  # without a cap, a retry means the run met its share of the GPU
            reasons.append(f"{variant}: a run met its share of the GPU memory (retries); use fewer --jobs")
        else:
            held[variant] = all(mine <= other * (1 + ALLOCATOR_TOLERANCE) for other in others)
    verdict = "inconclusive" if None in held.values() else "held" if all(held.values()) else "did not hold"
    return {
        "verdict": verdict,
        "reason": "; ".join(reasons)
        or f"max_first's peak reserved memory vs random_first's and ascending's (tolerance {ALLOCATOR_TOLERANCE:.0%})",
        "held_by_variant": held,
        "variants": variants,
    }


def _fail_fast_row(drawn: list[int], largest: int, below: dict[str, Any], above: dict[str, Any]) -> dict[str, Any]:
    """One schedule and seed under both caps (``{}``: that capped run did not finish)."""
    return {
        "first_max_step": drawn.index(largest) if largest in drawn else None,
        "fail_step_below_cap": below.get("fail_step"),
        "error_below_cap": below.get("error"),
        "ooms_caught_below_cap": below.get("ooms_caught"),
        "finished_above_cap": bool(above) and above["fail_step"] is None,
        "fail_step_above_cap": above.get("fail_step"),
        "retries_above_cap": (above.get("num_alloc_retries") or [None])[-1],
        "ran": bool(below) and bool(above),
    }


def build_report(
    settings: dict[str, Any], results: dict[str, dict[str, Any]], *, interrupted: bool = False
) -> dict[str, Any]:
    """Assemble the report from the children's results (keys as in ``Job``); missing ones are "not run".

    Args:
        settings: What ``run_verification`` recorded about the run (``device``, ``sizes``, ...).
        results: Each finished child's result by its job key.
        interrupted: The run was stopped before every child finished.
    """
    cuda, sizes, steps = settings["device"].startswith("cuda"), settings["sizes"], settings["steps"]
    policies = [
        MultiScalePolicy(sizes[0], sizes[-1], max_first_steps=settings["max_first_steps"], seed=seed)
        for seed in range(settings["seeds"])
    ]
    crashed = [f"{key}: {r['crashed']}" for key, r in results.items() if "crashed" in r]
    usable = {key: r for key, r in results.items() if "crashed" not in r}
    report: dict[str, Any] = {"device": settings["device"], "settings": settings, "crashed": crashed}
    report["calibration"] = cal = calibrate(usable.get("calibration"), sizes[-1], sizes[-2], cuda)
    by_variant: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in VARIANTS if cuda else ("default",):
        by_variant[variant] = {}
        for name, schedule in SCHEDULES.items():
            opening = 1 if schedule.prealloc else settings["max_first_steps"]
            result = usable.get(f"profile/{variant}/{name}", {})
            by_variant[variant][name] = _schedule_entry(schedule_sizes(name, policies[0], steps), result, opening)
        report["schedules" if variant == "default" else f"schedules_{variant}"] = by_variant[variant]
    for name, entry in report["schedules"].items():
        entry["fail_fast_by_seed"] = by_seed = {
            seed: _fail_fast_row(
                schedule_sizes(name, policies[seed], steps),
                sizes[-1],
                usable.get(f"cap_below/{name}/{seed}", {}),
                usable.get(f"cap_above/{name}/{seed}", {}),
            )
            for seed in seeds_of(name, settings["seeds"])
        }
        entry["fail_step_below_cap"] = by_seed[0]["fail_step_below_cap"]
        entry["finished_above_cap"] = by_seed[0]["finished_above_cap"]

    max_first, random_first = (report["schedules"][name]["fail_fast_by_seed"].values() for name in _COMPARED[:2])
    report["checks"] = {
        "calibration_monotonic": cal["need_largest_bytes"] > cal["need_next_largest_bytes"] > 0,
        "max_first_fails_at_step_0_below_cap_and_finishes_above": all(
            r["fail_step_below_cap"] == 0 and r["finished_above_cap"] for r in max_first
        ),
        "no_crash_or_hang": not crashed,
    }
    if not cuda:
        # On CPU a step's need depends on its size alone, so a random order must fail exactly at its
        # first max-size step. On CUDA the caching allocator's history adds to a step's need, and a
        # random order can fail earlier (the allocator verdict measures that): reported, not checked.
        report["checks"]["random_first_fails_at_its_first_max_step"] = all(
            r["ran"] and r["fail_step_below_cap"] == r["first_max_step"] for r in random_first
        )
    finished, expected = len(results), runs_expected(cuda, settings["seeds"])
    if interrupted or finished < expected:
        fail_fast = f"incomplete ({finished} of {expected} runs finished)"
    else:
        fail_fast = "held" if all(report["checks"].values()) else "did not hold"
    report["allocator"] = _allocator(by_variant, cuda)
    report["verdicts"] = {"fail_fast": fail_fast, "allocator": report["allocator"]["verdict"]}
    report["interrupted"] = interrupted
    report["runs_finished"], report["runs_expected"] = finished, expected
    entry = report["schedules"]["max_first"]
    opening_peak = max(entry["peak_bytes"][: settings["max_first_steps"]] or [0])
    growth = entry["growth_after_max_first_bytes"]
    report["max_first_growth_ratio"] = None if growth is None or not opening_peak else growth / opening_peak
    report["summary"] = _summary(report)
    return report


def _summary(report: dict[str, Any]) -> list[str]:
    cal, schedules, verdicts = report["calibration"], report["schedules"], report["verdicts"]

    def column(name: str, key: str) -> list[Any]:
        return [row[key] for row in schedules[name]["fail_fast_by_seed"].values()]

    lines = [
        f"fail-fast {verdicts['fail_fast']}: calibrated needs ({cal['measure']}) {mb(cal['need_next_largest_bytes'])} "
        f"at {cal['next_largest']}px and {mb(cal['need_largest_bytes'])} at {cal['largest']}px; "
        f"cap below {mb(cal['cap_below_bytes'])}, cap above {mb(cal['cap_above_bytes'])}.",
        f"max-size-first under the low cap failed at steps {column('max_first', 'fail_step_below_cap')} "
        f"(seeds {list(schedules['max_first']['fail_fast_by_seed'])}); "
        f"above the cap it finished: {column('max_first', 'finished_above_cap')}.",
        f"random-first under the low cap failed at steps {column('random_first', 'fail_step_below_cap')}; "
        f"its first max-size steps were {column('random_first', 'first_max_step')}; "
        f"above the cap it finished: {column('random_first', 'finished_above_cap')}.",
    ]
    caught = {name: column(name, "ooms_caught_below_cap") for name in schedules}
    if any(any(counts) for counts in caught.values()):
        lines.append(
            "out-of-memory errors caught without ending the run under the low cap (cuDNN falling back to "
            "less workspace): " + ", ".join(f"{name} {counts}" for name, counts in caught.items()) + "."
        )
    if report["max_first_growth_ratio"] is not None:
        ratio = report["max_first_growth_ratio"]
        lines.append(f"after its max-size steps, max-size-first's peak moved by {ratio:+.1%} of the opening peak.")
    allocator = report["allocator"]
    if allocator["verdict"] == "not applicable":
        lines.append(f"allocator not applicable: {allocator['reason']}.")
    else:
        parts = []
        for variant, table in allocator["variants"].items():
            mine = table["max_first"]["max_reserved_bytes"]
            cells = [(name, table[name]["max_reserved_bytes"]) for name in _COMPARED]
            times = {name: f" (x{peak / mine:.2f})" if mine and peak else "" for name, peak in cells}
            parts.append(f"{variant}: " + ", ".join(f"{name} {mb(peak)}{times[name]}" for name, peak in cells))
        lines.append(
            f"allocator {allocator['verdict']} ({allocator['reason']}): peak reserved " + "; ".join(parts) + "."
        )
    lines += [f"crash or hang: {problem}" for problem in report["crashed"]]
    if report["interrupted"]:
        lines.append(f"interrupted: {report['runs_finished']} of {report['runs_expected']} runs had finished.")
    return lines
