"""The size policy: which size a step uses. It never touches a tensor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastresize._checks import check_choice, check_int, check_state_keys

_MASK64 = (1 << 64) - 1
_SIDES = ("square", "short", "long")
_STATE_KEYS = ("lower", "upper", "multiple", "max_first_steps", "seed", "side")


def _splitmix64(x: int) -> int:
    """One round of SplitMix64: a fixed, well-mixed 64-bit hash that no library version can change."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def draw_index(seed: int, step: int, count: int) -> int:
    """Return an index in ``[0, count)`` that depends only on ``(seed, step)``.

    Hashing instead of a stateful RNG is what lets DataLoader workers, distributed ranks and
    resumed runs agree on a step's size without communicating.
    """
    h = _splitmix64(_splitmix64(seed & _MASK64) ^ (step & _MASK64))
    # Multiply-shift maps 64 random bits onto [0, count) with a bias below count / 2**64.
    return (h * count) >> 64


class MultiScalePolicy:
    """Chooses the size of every training step for multi-scale training.

    The allowed sizes are the multiples of ``multiple`` inside ``[lower, upper]``. While
    ``global_step < max_first_steps`` the largest size is used, so that a size that does not fit in
    memory fails at the first step of the process rather than hours later. After that, each step's
    size is a uniform draw over the allowed sizes that depends only on ``(seed, step)``.

    Args:
        lower: Smallest side length, ``> 0``.
        upper: Largest side length, ``>= lower``.
        multiple: Every output side is a multiple of this, ``> 0`` (16 suits most conv nets).
        max_first_steps: Steps of each process that use the largest size (the original's
            ``global_step <= 4`` is ``5``). ``0`` disables it.
        seed: Seed of the draw. Every process that shares it shares the sizes.
        side: ``"square"`` gives ``(s, s)``. ``"short"``/``"long"`` set that side of the input to
            ``s`` and keep the aspect ratio, rounding the other side to the nearest multiple.

    Example:
        >>> policy = MultiScalePolicy(256, 512)
        >>> policy.size_for(step=0, global_step=0)
        (512, 512)
        >>> policy.size_for(step=100, global_step=100) == policy.size_for(step=100, global_step=100)
        True
        >>> MultiScalePolicy(256, 512, side="short").size_for(0, 0, shape=(480, 640))
        (512, 688)
    """

    def __init__(
        self,
        lower: int,
        upper: int,
        multiple: int = 16,
        max_first_steps: int = 5,
        seed: int = 0,
        side: str = "square",
    ) -> None:
        self.lower = check_int("lower", lower, minimum=1)
        self.upper = check_int("upper", upper, minimum=1)
        self.multiple = check_int("multiple", multiple, minimum=1)
        self.max_first_steps = check_int("max_first_steps", max_first_steps, minimum=0)
        self.seed = check_int("seed", seed)
        self.side = check_choice("side", side, _SIDES)
        if self.lower > self.upper:
            raise ValueError(f"lower must be <= upper, got lower={lower!r} and upper={upper!r}")
        first = -(-self.lower // self.multiple) * self.multiple
        self.sizes: tuple[int, ...] = tuple(range(first, self.upper + 1, self.multiple))
        if not self.sizes:
            raise ValueError(
                f"no multiple of {self.multiple} lies in [lower, upper] = [{lower}, {upper}]; "
                "widen the range or lower `multiple`"
            )

    @property
    def max_size(self) -> int:
        """The largest allowed size."""
        return self.sizes[-1]

    def side_for(self, step: int, global_step: int) -> int:
        """Return the side length ``s`` for a step.

        Args:
            step: The absolute step (``StepCounter.absolute_step``): it picks the draw.
            global_step: Steps since this process started (``StepCounter.global_step``): it decides
                max-size-first.
        """
        step = check_int("step", step, minimum=0)
        global_step = check_int("global_step", global_step, minimum=0)
        if global_step < self.max_first_steps:
            return self.max_size
        return self.sizes[draw_index(self.seed, step, len(self.sizes))]

    def size_for(self, step: int, global_step: int, shape: Sequence[int] | None = None) -> tuple[int, int]:
        """Return the output ``(height, width)`` for a step.

        Args:
            step: The absolute step: it picks the draw.
            global_step: Steps since this process started: it decides max-size-first.
            shape: The input's shape; its last two entries are ``(height, width)``. Needed for
                ``side="short"`` and ``side="long"``.

        Returns:
            ``(height, width)``, both multiples of ``multiple``.

        Raises:
            ValueError: ``shape`` is missing or holds a non-positive side in an aspect mode.
        """
        s = self.side_for(step, global_step)
        if self.side == "square":
            return (s, s)
        if shape is None or len(shape) < 2:
            raise ValueError(f"side={self.side!r} needs the input shape (..., H, W), got shape={shape!r}")
        h, w = int(shape[-2]), int(shape[-1])
        if h <= 0 or w <= 0:
            raise ValueError(f"shape must have positive height and width, got {tuple(shape)!r}")
        short_is_h = h <= w
        if (self.side == "short") == short_is_h:
            return (s, self._round(w * s / h))
        return (self._round(h * s / w), s)

    def _round(self, length: float) -> int:
        """Round to the nearest multiple (halves go up), never below one multiple."""
        return max(self.multiple, math.floor(length / self.multiple + 0.5) * self.multiple)

    def state_dict(self) -> dict[str, Any]:
        """Return the settings as a dict of plain values.

        A policy is a pure function of its settings and has no progress to save; its settings are
        saved beside a run's progress so that a resume can check it is built the same way.
        """
        return {key: getattr(self, key) for key in _STATE_KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check that a saved policy had these settings; the settings are configuration and stay as built.

        ``max_first_steps`` may differ: it decides only the opening of each process, not the draws.

        Raises:
            ValueError: the keys are wrong, or a saved bound, multiple, seed or side differs from this
                policy's (both are named).
        """
        check_state_keys("MultiScalePolicy", state, _STATE_KEYS)
        # max_first_steps belongs to each process (it may change on resume): only the draw must agree.
        for key in (k for k in _STATE_KEYS if k != "max_first_steps"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"the state was saved with {key}={state[key]!r} but this policy has {key}={getattr(self, key)!r}; "
                    "build the policy with the saved settings to resume that run"
                )

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={getattr(self, key)!r}" for key in _STATE_KEYS)
        return f"MultiScalePolicy({args})"
