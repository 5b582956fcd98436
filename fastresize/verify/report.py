"""The report: the caps, each schedule's figures and the two verdicts, as text, a figure and files.

The verdicts are the ones ``python -m fastresize memory --help`` defines (``run.DESCRIPTION``).
Beyond it: the high cap is 5% (at least 4 MiB) above the largest need or what a step at the largest
size reserves in a fresh allocator, whichever is larger, so that max-size-first's first step runs as
in the calibration; the allocator verdict allows 1% and compares runs of one invocation (side by side).
"""

from __future__ import annotations

import itertools
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from fastresize.policy import MultiScalePolicy
from fastresize.verify.schedules import CALIBRATION_STEPS, SCHEDULES, VARIANTS, schedule_sizes, seeds_of

ALLOCATOR_TOLERANCE = 0.01
HIGH_CAP_HEADROOM = 1.05
# At the smallest settings 5% is a few hundred KB, less than what oneDNN's just-in-time primitives
# vary by between two processes ("could not create a primitive" under the cap): keep at least this.
HIGH_CAP_MIN_HEADROOM_BYTES = 4 * 2**20
PEAK_TOLERANCE = 0.01
_COMPARED = ("max_first", "random_first", "ascending")


def _mb(value: float | None) -> str:
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
    allocated = result.get("baseline_allocated_bytes")
    return {
        "measure": "peak allocated (max_memory_allocated)" if cuda else "peak RSS",
        "largest": largest,
        "next_largest": next_largest,
        "need_largest_bytes": need_largest,
        "need_next_largest_bytes": need_next,
        "reserved_largest_bytes": reserved_largest,
        "cap_below_bytes": (need_largest + need_next) // 2,
        "cap_above_bytes": max(int(high * HIGH_CAP_HEADROOM), high + HIGH_CAP_MIN_HEADROOM_BYTES),
        "baseline_slack_bytes": result["baseline_bytes"] - allocated if cuda and allocated is not None else None,
    }


def _schedule_entry(sizes: list[int], result: dict[str, Any], opening: int) -> dict[str, Any]:
    peaks, seconds = result.get("peak_bytes") or [], result.get("seconds") or []
    return {
        "sizes": sizes,
        "peak_bytes": peaks,
        "peak_step": max(range(len(peaks)), key=peaks.__getitem__) if peaks else None,
        "growth_after_max_first_bytes": (max(peaks[opening:]) - max(peaks[:opening])) if len(peaks) > opening else None,
        "seconds": seconds,
        "mean_step_seconds": sum(seconds) / len(seconds) if seconds else None,
        "new_shape": result.get("new_shape") or [],
        **{k: result[k] for k in ("peak_allocated_bytes", "num_alloc_retries", "inactive_split_bytes") if k in result},
    }


def _allocator(schedules_by_variant: dict[str, dict[str, dict[str, Any]]], cuda: bool) -> dict[str, Any]:
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
            rows[name] = {
                "max_reserved_bytes": max(entry["peak_bytes"], default=None),
                "max_reserved_step": entry["peak_step"],
                "num_alloc_retries": (entry.get("num_alloc_retries") or [None])[-1],
                "max_inactive_split_bytes": max(entry.get("inactive_split_bytes") or [], default=None),
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
    return {
        "verdict": "inconclusive" if None in held.values() else "held" if all(held.values()) else "did not hold",
        "reason": "; ".join(reasons)
        or f"max_first's peak reserved memory vs random_first's and ascending's (tolerance {ALLOCATOR_TOLERANCE:.0%})",
        "held_by_variant": held,
        "variants": variants,
    }


def _fail_fast_row(drawn: list[int], largest: int, usable: dict[str, Any], schedule_seed: str) -> dict[str, Any]:
    below, above = (usable.get(f"cap_{which}/{schedule_seed}", {}) for which in ("below", "above"))
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
        report["schedules" if variant == "default" else f"schedules_{variant}"] = by_variant[variant] = {}
        for name, schedule in SCHEDULES.items():
            opening = 1 if schedule.prealloc else settings["max_first_steps"]
            result = usable.get(f"profile/{variant}/{name}", {})
            by_variant[variant][name] = _schedule_entry(schedule_sizes(name, policies[0], steps), result, opening)
    for name, entry in report["schedules"].items():
        entry["fail_fast_by_seed"] = by_seed = {
            seed: _fail_fast_row(schedule_sizes(name, policies[seed], steps), sizes[-1], usable, f"{name}/{seed}")
            for seed in seeds_of(name, settings["seeds"])
        }
        entry.update({key: by_seed[0][key] for key in ("fail_step_below_cap", "finished_above_cap")})

    max_first, random_first = (report["schedules"][name]["fail_fast_by_seed"].values() for name in _COMPARED[:2])
    report["checks"] = {
        "calibration_monotonic": cal["need_largest_bytes"] > cal["need_next_largest_bytes"] > 0,
        "max_first_fails_at_step_0_below_cap_and_finishes_above": all(
            r["fail_step_below_cap"] == 0 and r["finished_above_cap"] for r in max_first
        ),
        "no_crash_or_hang": not crashed,
    }
    if not cuda:
        # On CUDA the caching allocator's history adds to a step's need, and a random order can fail
        # before its first max-size step (the allocator verdict measures that): reported, not checked.
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
    report.update(interrupted=interrupted, runs_finished=finished, runs_expected=expected)
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
        f"fail-fast {verdicts['fail_fast']}: calibrated needs ({cal['measure']}) {_mb(cal['need_next_largest_bytes'])} "
        f"at {cal['next_largest']}px and {_mb(cal['need_largest_bytes'])} at {cal['largest']}px; "
        f"cap below {_mb(cal['cap_below_bytes'])}, cap above {_mb(cal['cap_above_bytes'])}.",
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
    if (ratio := report["max_first_growth_ratio"]) is not None:
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
            parts.append(f"{variant}: " + ", ".join(f"{name} {_mb(peak)}{times[name]}" for name, peak in cells))
        lines.append(
            f"allocator {allocator['verdict']} ({allocator['reason']}): peak reserved " + "; ".join(parts) + "."
        )
    lines += [f"crash or hang: {problem}" for problem in report["crashed"]]
    if report["interrupted"]:
        lines.append(f"interrupted: {report['runs_finished']} of {report['runs_expected']} runs had finished.")
    return lines


# The tables' columns: header, width, the cell of a schedule's entry, and which tables show it (CUDA's
# only, or the default allocator's only: the capped runs use it).
_COLUMNS: list[tuple[str, int, Callable[[dict[str, Any]], Any], str]] = [
    ("steps", 5, lambda e: len(e["peak_bytes"]), "all"),
    ("peak", 11, lambda e: _mb(max(e["peak_bytes"], default=None)), "all"),
    ("at step", 7, lambda e: e["peak_step"], "all"),
    ("growth", 11, lambda e: _mb(e["growth_after_max_first_bytes"]), "all"),
    ("retries", 7, lambda e: (e.get("num_alloc_retries") or ["-"])[-1], "cuda"),
    ("inact. split", 12, lambda e: _mb(max(e.get("inactive_split_bytes") or [], default=None)), "cuda"),
    ("ms/step", 8, lambda e: "-" if e["mean_step_seconds"] is None else f"{e['mean_step_seconds'] * 1000:.1f}", "all"),
    ("fail<cap", 8, lambda e: "-" if e.get("fail_step_below_cap") is None else e["fail_step_below_cap"], "default"),
    ("ok>cap", 6, lambda e: "yes" if e.get("finished_above_cap") else "no", "default"),
]


def print_report(report: dict[str, Any], file: TextIO) -> None:
    """Print the per-schedule tables (one per allocator variant) and the summary."""
    settings, cuda, sizes = report["settings"], "schedules_expandable_segments" in report, report["settings"]["sizes"]
    seconds = f", {report['seconds']:.0f} s" if "seconds" in report else ""
    print(f"device: {report['device']} ({settings['device_name']}), torch {settings['torch']}, "
          f"{settings['jobs']} children at once{seconds}", file=file)  # fmt: skip
    print(f"sizes: {sizes[0]}..{sizes[-1]} ({len(sizes)} sizes), {settings['steps']} steps, batch {settings['batch']}, "
          f"conv net {settings['layers']} layers x {settings['channels']} channels, SGD", file=file)  # fmt: skip
    for key in [k for k in report if k.startswith("schedules")]:
        variant = key.removeprefix("schedules_") if key != "schedules" else "default"
        measure = f"{' allocator' if cuda else ''} ({'peak reserved' if cuda else 'peak RSS'} above the baseline)"
        columns = [c for c in _COLUMNS if c[3] in ("all", variant, "cuda" if cuda else "all")]
        print(f"\n{variant}{measure}\n{'schedule':<15}" + "".join(f" {c[0]:>{c[1]}}" for c in columns), file=file)
        for name, entry in report[key].items():
            print(f"{name:<15}" + "".join(f" {c[2](entry)!s:>{c[1]}}" for c in columns), file=file)
    print("", *report["summary"], sep="\n", file=file)


def _panel(axis: Any, report: dict[str, Any], name: str, keys: list[str]) -> None:
    for key, style in zip(keys, ("-", "--"), strict=False):
        running = [b / 2**20 for b in itertools.accumulate(report[key][name]["peak_bytes"], max)]
        variant = f", {key.removeprefix('schedules').strip('_') or 'default'} allocator" if len(keys) > 1 else ""
        axis.plot(running, style, color="tab:blue", drawstyle="steps-post", linewidth=2,
                  label=f"running peak{variant} (uncapped run, seed 0)")  # fmt: skip
        if key == "schedules":  # a step of the same size can measure a fraction of a percent more
            reached = next((i for i, peak in enumerate(running) if peak >= running[-1] * (1 - PEAK_TOLERANCE)), None)
            title = "not run" if reached is None else f"peak reached at step {reached} (±1%)"
            axis.set_title(f"{name}\n{title}", loc="left", fontsize=10, fontweight="bold")
    cal, by_seed = report["calibration"], report["schedules"][name]["fail_fast_by_seed"]
    measure = " (allocated)" if len(keys) > 1 else ""  # CUDA: the caps bound the capped runs' tensors
    caps = {"low": ("below", "tab:red", "--", f"between the {cal['next_largest']} and {cal['largest']} px needs"),
            "high": ("above", "dimgrey", ":", f"above the {cal['largest']} px need")}  # fmt: skip
    for cap, (which, color, style, where) in caps.items():
        level = cal[f"cap_{which}_bytes"] / 2**20
        axis.axhline(level, color=color, linestyle=style, linewidth=1.2, label=f"{cap} cap: {where}{measure}")
        failed = {str(seed): row[f"fail_step_{which}_cap"] for seed, row in by_seed.items()}
        failed = {seed: step for seed, step in failed.items() if step is not None}
        if failed:  # one cross per seed; the seeds that failed at the same step share a label
            axis.plot(list(failed.values()), [level] * len(failed), "x", color=color, markersize=11,
                      markeredgewidth=2.5, label=f"failed under the {cap} cap")  # fmt: skip
        for step in sorted(set(failed.values())) if len(by_seed) > 1 else []:
            seeds = ", ".join(seed for seed, at in failed.items() if at == step)
            axis.annotate(f"seed {seeds}", (step, level), xytext=(5, 5), textcoords="offset points", color=color)
    axis.annotate(textwrap.fill(SCHEDULES[name].purpose, 42), (0, 0), xycoords="axes fraction", xytext=(0, -30),
                  textcoords="offset points", va="top", fontsize=8)  # fmt: skip
    axis.set_xlabel("step")


def report_figure(report: dict[str, Any]) -> Any:
    """Return a matplotlib ``Figure`` of the report: one panel per schedule, titled with both verdicts.

    Each panel draws the running peak of the schedule's uncapped run (seed 0; on CUDA one line per
    allocator variant), both caps as horizontal lines, and a cross on a cap at the step where a
    capped run failed under it, one per seed. On CUDA the caps bound the capped runs' allocated
    memory (native convolutions), not the reserved memory of the profiles drawn. Needs matplotlib.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the memory plot needs matplotlib: pip install 'fastresize[plot]'") from error
    keys = [k for k in report if k.startswith("schedules")]  # one per allocator variant, the default first
    figure = Figure(figsize=(3 * len(SCHEDULES), 4.4))
    axes = figure.subplots(1, len(SCHEDULES), sharex=True, sharey=True)
    legend: dict[str, Any] = {}
    for axis, name in zip(axes, SCHEDULES, strict=True):
        _panel(axis, report, name, keys)
        legend.update(zip(*reversed(axis.get_legend_handles_labels()), strict=True))
    axes[0].set_ylim(bottom=0)
    axes[0].set_ylabel(f"running peak {'reserved' if len(keys) > 1 else 'RSS'}\nabove baseline (MB)")
    order, rows = sorted(legend, key=lambda label: label.startswith("failed")), 1 + (len(legend) > 4)
    figure.legend([legend[k] for k in order], order, loc="lower center", ncol=-(-len(order) // rows), frameon=False)
    verdicts = report["verdicts"]
    good = verdicts["fail_fast"] == "held" and verdicts["allocator"] in ("held", "not applicable")
    figure.suptitle(f"fail-fast {verdicts['fail_fast']}, allocator {verdicts['allocator']}  ({report['device']})",
                    color="darkgreen" if good else "darkred", fontsize=14, fontweight="bold")  # fmt: skip
    figure.tight_layout(rect=(0, 0.07 * rows, 1, 1))
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
        report_figure(report).savefig(folder / "memory.png", dpi=100)
    except ImportError:
        return written
    return [*written, folder / "memory.png"]
