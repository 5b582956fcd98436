"""The report as text, as a figure (``memory.png``) and as files."""

from __future__ import annotations

import itertools
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from fastresize.verify.report import mb
from fastresize.verify.schedules import SCHEDULES

PEAK_TOLERANCE = 0.01


def _last(values: list[Any] | None) -> Any:
    return values[-1] if values else "-"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


# The tables' columns: header, width, the cell of a schedule's entry, and which tables show it (CUDA's
# only, or the default allocator's only: the capped runs use it).
_COLUMNS: list[tuple[str, int, Callable[[dict[str, Any]], Any], str]] = [
    ("steps", 5, lambda e: len(e["peak_bytes"]), "all"),
    ("peak", 11, lambda e: mb(max(e["peak_bytes"], default=None)), "all"),
    ("at step", 7, lambda e: e["peak_step"], "all"),
    ("growth", 11, lambda e: mb(e["growth_after_max_first_bytes"]), "all"),
    ("retries", 7, lambda e: _last(e.get("num_alloc_retries")), "cuda"),
    ("inact. split", 12, lambda e: mb(max(e.get("inactive_split_bytes") or [], default=None)), "cuda"),
    ("ms/step", 8, lambda e: _ms(e["mean_step_seconds"]), "all"),
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
    """Draw one schedule: its running peak per allocator variant, both caps and its capped runs' failures."""
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
