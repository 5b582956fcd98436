"""The experiment: the size schedules compared, the conv net they train, and the settings per device.

Adding a schedule is one entry in :data:`SCHEDULES`; the runs, the report, the figure and ``--help`` follow it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from fastresize._checks import check_choice
from fastresize.policy import MultiScalePolicy


class Schedule(NamedTuple):
    """One size schedule.

    Attributes:
        purpose: What it is for, in one line (``--help`` and the figure).
        sides: ``(policy, steps) -> the side of every step``.
        prealloc: Step 0 is a pass at the largest size without a weight update.
    """

    purpose: str
    sides: Callable[[MultiScalePolicy, int], list[int]]
    prealloc: bool = False


def _drawn(policy: MultiScalePolicy, steps: int) -> list[int]:
    return [policy.side_for(step, global_step=policy.max_first_steps + step) for step in range(steps)]


def _ramp(policy: MultiScalePolicy, steps: int) -> list[int]:
    bounds = (policy.sizes[0], policy.sizes[-1])
    ramp = MultiScalePolicy(bounds, bounds, policy.multiple, policy.max_first_steps, ramp=(0, steps - 1))
    return [ramp.side_for(step, global_step=step) for step in range(steps)]


# Every schedule that draws draws the same sizes: the policy's, with no max-size opening (_drawn).
SCHEDULES: dict[str, Schedule] = {
    "max_first": Schedule(
        "the policy as shipped: the largest size first, then random_first's draws",
        lambda policy, steps: [policy.side_for(step, global_step=step) for step in range(steps)],
    ),
    "prealloc_first": Schedule(
        "one untrained pass at the largest size, then random_first's steps (one step more)",
        lambda policy, steps: [policy.max_size, *_drawn(policy, steps)],
        prealloc=True,
    ),
    "random_first": Schedule("random sizes from step 0: the largest comes when the draw says", _drawn),
    "ascending": Schedule(
        "smallest to largest (progressive resizing): each new size outgrows the cache; the largest comes last",
        lambda policy, steps: [policy.sizes[i * len(policy.sizes) // steps] for i in range(steps)],
    ),
    "ramp": Schedule(
        "progressive resizing as the policy's ramp runs it: the ramp's end, its largest size, first", _ramp
    ),
    "max_only": Schedule(
        "the largest size at every step: the most memory any order needs", lambda p, n: [p.max_size] * n
    ),
}
# None removes the variable, so that a user's own setting cannot leak into the default variant.
VARIANTS: dict[str, dict[str, str | None]] = {
    "default": {"PYTORCH_CUDA_ALLOC_CONF": None, "PYTORCH_ALLOC_CONF": None},
    "expandable_segments": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "PYTORCH_ALLOC_CONF": None},
}
# CPU stays small enough for a 2-core machine; CUDA resembles training (a step needs over a GB).
DEFAULTS = {
    "cpu": {"lower": 64, "upper": 160, "steps": 16, "batch_size": 4, "channels": 16, "layers": 4},
    "cuda": {"lower": 256, "upper": 512, "steps": 40, "batch_size": 8, "channels": 32, "layers": 6},
}
CALIBRATION_STEPS = 3


def schedule_sizes(name: str, policy: MultiScalePolicy, steps: int) -> list[int]:
    """Return the side of every step of schedule ``name``."""
    return SCHEDULES[check_choice("schedule", name, tuple(SCHEDULES))].sides(policy, steps)


def seeds_of(name: str, seeds: int) -> range:
    """The seeds under which the fail-fast check runs schedule ``name``: all for the two it asserts, else 0."""
    return range(seeds if name in ("max_first", "random_first") else 1)


def conv_net(width: int, layers: int) -> nn.Sequential:
    """The measured model: ``layers`` 3x3 convolutions (RGB in, RGB out) with ReLUs between them."""
    modules: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise([3, *[width] * (layers - 1), 3]):
        modules += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*modules[:-1])
