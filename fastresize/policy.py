"""The size policy: which size a step uses. It never touches a tensor.

:class:`MultiScalePolicy` composes one of three size schedules (a fixed range, an explicit list, a
linear ramp) with a hashed draw, a hold of ``interval`` steps and max-size-first. :class:`SizePolicy`
is the protocol that the transform and the loader need, for schedules of your own.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

from fastresize._checks import check_choice, check_float, check_int, check_state_keys

Shape = tuple[int, int]
"""An output size as ``(height, width)``."""

_MASK64 = (1 << 64) - 1
_SIDES = ("square", "short", "long")
_STATE_KEYS = ("lower", "upper", "multiple", "max_first_steps", "seed", "side", "interval", "sizes", "weights", "ramp")
# The settings that came with the schedules: a state saved before them holds none, and meant these.
_SCHEDULE_DEFAULTS: dict[str, Any] = {"interval": 1, "sizes": None, "weights": None, "ramp": None}


def _splitmix64(x: int) -> int:
    """One round of SplitMix64: a fixed, well-mixed 64-bit hash that no library version can change."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _hash(seed: int, step: int) -> int:
    """64 random bits that depend only on ``(seed, step)``."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (step & _MASK64))


def draw_index(seed: int, step: int, count: int) -> int:
    """Return an index in ``[0, count)`` that depends only on ``(seed, step)``.

    Hashing instead of a stateful RNG is what lets DataLoader workers, distributed ranks and
    resumed runs agree on a step's size without communicating.
    """
    # Multiply-shift maps 64 random bits onto [0, count) with a bias below count / 2**64.
    return (_hash(seed, step) * count) >> 64


def _draw_weighted(seed: int, step: int, thresholds: tuple[int, ...]) -> int:
    """Return index ``i`` with probability ``(thresholds[i] - thresholds[i - 1]) / 2**64``."""
    return bisect.bisect_right(thresholds, _hash(seed, step))


@runtime_checkable
class SizePolicy(Protocol):
    """What :class:`~fastresize.BatchResize` and the loader need from a size policy.

    A policy of your own must be a pure function of its settings and the step, so that workers,
    ranks and resumed runs agree; :class:`MultiScalePolicy` is one.

    Attributes:
        max_size: The largest size the policy will ever return, what max-size-first uses: an int
            ``s`` for ``(s, s)``, or ``(height, width)``.
    """

    @property
    def max_size(self) -> int | tuple[int, int]: ...

    def size_for(self, step: int, global_step: int, shape: Sequence[int] | None = None) -> tuple[int, int]:
        """Return the ``(height, width)`` of absolute step ``step``, the ``global_step``-th of this process."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Return the settings (or state) as plain Python values."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check (or restore) a saved state; raise ``ValueError`` on one saved under other settings."""
        ...


# ------------------------------------------------------------------------------------ schedules
def _round_to(numerator: int, denominator: int, multiple: int) -> int:
    """Round ``numerator / denominator`` to the nearest multiple (halves go up), never below one multiple.

    Integer arithmetic, so that every machine rounds a ramp's bounds the same way.
    """
    return max(multiple, (2 * numerator + multiple * denominator) // (2 * multiple * denominator) * multiple)


def _area_order(shape: Shape) -> tuple[int, int]:
    return (shape[0] * shape[1], shape[0])


class _Range:
    """Fixed bounds: the multiples of ``multiple`` inside ``[lower, upper]``, the same at every step."""

    thresholds = None

    def __init__(self, lower: int, upper: int, multiple: int) -> None:
        if lower > upper:
            raise ValueError(f"lower must be <= upper, got lower={lower!r} and upper={upper!r}")
        first = -(-lower // multiple) * multiple
        self.shapes: tuple[Shape, ...] = tuple((s, s) for s in range(first, upper + 1, multiple))
        if not self.shapes:
            raise ValueError(
                f"no multiple of {multiple} lies in [lower, upper] = [{lower}, {upper}]; "
                "widen the range or lower `multiple`"
            )

    def shapes_at(self, step: int) -> tuple[Shape, ...]:
        return self.shapes

    def capped(self, size: Shape) -> dict[str, Any]:
        return {"upper": size[0]}


class _List:
    """An explicit list of sizes (side lengths or ``(height, width)`` buckets), drawn with optional weights."""

    def __init__(self, sizes: Any, weights: Any, multiple: int) -> None:
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes:
            raise ValueError(f"sizes must be a non-empty list of side lengths or (height, width) pairs, got {sizes!r}")
        self.given: list[int | Shape] = [_check_entry(f"sizes[{i}]", entry) for i, entry in enumerate(sizes)]
        self.choices: tuple[Shape, ...] = tuple((e, e) if isinstance(e, int) else e for e in self.given)
        for i, (h, w) in enumerate(self.choices):
            if h % multiple or w % multiple:
                raise ValueError(
                    f"sizes[{i}]={sizes[i]!r} is not a multiple of multiple={multiple}; "
                    "round it, or pass the multiple your sizes share"
                )
        if len(set(self.choices)) != len(self.choices):
            raise ValueError(
                f"sizes must not repeat a size, got {sizes!r}; give each size once and weigh it with weights"
            )
        self.shapes = tuple(sorted(self.choices, key=_area_order))
        self.weights: list[float] | None = None
        self.thresholds: tuple[int, ...] | None = None
        if weights is not None:
            if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) != len(sizes):
                raise ValueError(f"weights must hold one number per size ({len(sizes)}), got {weights!r}")
            self.weights = [check_float(f"weights[{i}]", weight, minimum=0.0) for i, weight in enumerate(weights)]
            for i, weight in enumerate(self.weights):
                if weight == 0:
                    raise ValueError(f"weights[{i}] must be > 0, got {weights[i]!r}; leave that size out of sizes")
            # Exact fractions: the cut points of [0, 2**64) are the same on every machine.
            exact = [Fraction(weight) for weight in self.weights]
            total, running, cuts = sum(exact), Fraction(0), []
            for share in exact[:-1]:
                running += share
                cuts.append(int(running / total * (1 << 64)))
            self.thresholds = (*cuts, 1 << 64)

    def shapes_at(self, step: int) -> tuple[Shape, ...]:
        return self.choices

    def capped(self, size: Shape) -> dict[str, Any]:
        keep = [i for i, shape in enumerate(self.choices) if _area_order(shape) <= _area_order(size)]
        weights = None if self.weights is None else [self.weights[i] for i in keep]
        return {"sizes": [self.given[i] for i in keep], "weights": weights}


class _Ramp:
    """Bounds that move linearly from their start to their end values between steps ``first`` and ``last``.

    A bound going from ``a`` to ``b`` is ``a`` up to ``first``, ``b`` from ``last`` on, and in between
    ``a + (b - a) * (step - first) / (last - first)``, rounded to the nearest multiple (halves up)
    that lies between the smallest lower and the largest upper value, as a range's sizes do.
    """

    thresholds = None

    def __init__(self, lower: Shape, upper: Shape, first: int, last: int, multiple: int) -> None:
        for end, (low, high) in enumerate(zip(lower, upper, strict=True)):
            if low > high:
                where = "start" if end == 0 else "end"
                raise ValueError(
                    f"lower must be <= upper at the ramp's {where}, got lower={low!r} and upper={high!r} there"
                )
        self.lower, self.upper, self.first, self.last, self.multiple = lower, upper, first, last, multiple
        # The bounds round to the nearest multiple, but never leave [lower, upper]: as a range's do.
        self.smallest = -(-min(lower) // multiple) * multiple
        self.largest = max(upper) // multiple * multiple
        if self.smallest > self.largest:
            raise ValueError(
                f"no multiple of {multiple} lies in [lower, upper] = [{min(lower)}, {max(upper)}]; "
                "widen the range or lower `multiple`"
            )
        self.shapes: tuple[Shape, ...] = tuple((s, s) for s in range(self.smallest, self.largest + 1, multiple))

    def bound(self, ends: Shape, step: int) -> int:
        """One bound at ``step``, rounded to the multiple, inside the ramp's overall range."""
        start, end = ends
        span = self.last - self.first
        if step >= self.last:
            rounded = _round_to(end, 1, self.multiple)
        elif step <= self.first:
            rounded = _round_to(start, 1, self.multiple)
        else:
            rounded = _round_to(start * span + (end - start) * (step - self.first), span, self.multiple)
        return min(max(rounded, self.smallest), self.largest)

    def shapes_at(self, step: int) -> tuple[Shape, ...]:
        low, high = self.bound(self.lower, step), self.bound(self.upper, step)
        return tuple((s, s) for s in range(low, high + 1, self.multiple))

    def capped(self, size: Shape) -> dict[str, Any]:
        return {
            "lower": tuple(min(v, size[0]) for v in self.lower),
            "upper": tuple(min(v, size[0]) for v in self.upper),
        }


def _check_entry(name: str, value: Any) -> int | Shape:
    """Return a size as an int, or a ``(height, width)`` tuple when it is a pair."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a side length or a (height, width) pair, got {value!r}")
        return (check_int(name, value[0], minimum=1), check_int(name, value[1], minimum=1))
    return check_int(name, value, minimum=1)


def _as_shape(name: str, value: Any) -> Shape:
    """Return a size as ``(height, width)``: an int ``s`` is ``(s, s)``."""
    entry = _check_entry(name, value)
    return (entry, entry) if isinstance(entry, int) else entry


def _check_ends(name: str, value: Any) -> Shape:
    """Return a ramp's bound as ``(start, end)``: an int is the same at both ends."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a (start, end) pair, got {value!r}")
        return (check_int(name, value[0], minimum=1), check_int(name, value[1], minimum=1))
    ends = check_int(name, value, minimum=1)
    return (ends, ends)


def _plain(value: Any) -> Any:
    """``value`` as JSON keeps it: tuples become lists."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------- the policy
class MultiScalePolicy:
    """Chooses the size of every training step for multi-scale training.

    Three schedules; each step's size is a draw over the schedule's sizes that depends only on
    ``(seed, step)``, never on anything a process accumulates, so DataLoader workers, distributed
    ranks and resumed runs agree with no communication:

    * **range** (``lower``, ``upper``): the multiples of ``multiple`` inside ``[lower, upper]``, drawn
      uniformly.
    * **list** (``sizes``, optional ``weights``): the given side lengths, or ``(height, width)`` buckets
      for rectangular outputs (with ``side="square"``), drawn uniformly or with probability
      ``weights[i] / sum(weights)``. Every side must be a multiple of ``multiple``.
    * **ramp** (``ramp=(first, last)``, ``lower``/``upper`` ints or ``(start, end)`` pairs): each bound
      moves linearly from its start value at step ``first`` to its end value at step ``last``
      (held before and after), rounded to the nearest multiple (halves up) that stays within the
      given values; the draw is uniform
      over the multiples between the two bounds. ``lower == upper`` is a pure ramp, FFCV's
      progressive resizing (160 to 192 between two epochs: ``lower=upper=(160, 192)``); wider bounds
      jitter around the ramp. With ``steps_per_epoch``, ``first`` and ``last`` are epochs.

    ``interval=k`` holds each draw for ``k`` steps: step ``t`` uses draw ``t // k``, and a ramp's
    bounds at step ``(t // k) * k`` (mmdet's and YOLOX's ``BatchSyncRandomResize`` hold a size for 10
    steps; ``interval=steps_per_epoch`` changes a ramp's size once per epoch, as FFCV does).

    **Max-size-first**: while ``global_step < max_first_steps`` the step uses the largest size the
    whole run will ever use (:attr:`max_shape`), not the largest of the moment: a ramp's end, the
    bucket of largest area. A size that does not fit in memory then fails at the first step of the
    process rather than hours later (for a ramp, at its end).

    Args:
        lower: Smallest side length, ``> 0``; for a ramp a ``(start, end)`` pair, or an int that stays.
        upper: Largest side length, ``>= lower``; for a ramp a ``(start, end)`` pair, or an int that stays.
        multiple: Every output side is a multiple of this, ``> 0`` (16 suits most conv nets).
        max_first_steps: Steps of each process that use the largest size (the original's
            ``global_step <= 4`` is ``5``). ``0`` disables it.
        seed: Seed of the draw. Every process that shares it shares the sizes.
        side: ``"square"`` gives ``(s, s)``. ``"short"``/``"long"`` set that side of the input to
            ``s`` and keep the aspect ratio, rounding the other side to the nearest multiple.
        interval: Steps each draw is held for, ``>= 1``.
        sizes: An explicit list of sizes instead of ``lower``/``upper``: ints, or ``(height, width)``.
        weights: One positive weight per entry of ``sizes``; uniform when ``None``.
        ramp: ``(first, last)`` with ``0 <= first <= last``: the steps (or epochs) between which the
            bounds move.
        steps_per_epoch: Makes ``ramp`` count in epochs; held in steps (``state_dict`` shows steps).

    Example:
        >>> policy = MultiScalePolicy(256, 512)
        >>> policy.size_for(step=0, global_step=0)
        (512, 512)
        >>> policy.size_for(step=100, global_step=100) == policy.size_for(step=100, global_step=100)
        True
        >>> MultiScalePolicy(256, 512, side="short").size_for(0, 0, shape=(480, 640))
        (512, 688)
        >>> ffcv = MultiScalePolicy((160, 192), (160, 192), multiple=32, ramp=(10, 13), steps_per_epoch=100)
        >>> [ffcv.side_for(step, global_step=5) for step in (0, 1000, 1100, 1200, 1300, 5000)]
        [160, 160, 160, 192, 192, 192]
        >>> ffcv.size_for(step=0, global_step=0)  # max-size-first: the ramp's end
        (192, 192)
        >>> buckets = MultiScalePolicy(sizes=[(512, 768), (640, 640), (768, 512)], weights=[1, 2, 1])
        >>> buckets.max_shape, buckets.max_size
        ((640, 640), 640)
    """

    def __init__(
        self,
        lower: int | tuple[int, int] | None = None,
        upper: int | tuple[int, int] | None = None,
        multiple: int = 16,
        max_first_steps: int = 5,
        seed: int = 0,
        side: str = "square",
        *,
        interval: int = 1,
        sizes: Sequence[int | tuple[int, int]] | None = None,
        weights: Sequence[float] | None = None,
        ramp: tuple[int, int] | None = None,
        steps_per_epoch: int | None = None,
    ) -> None:
        self.multiple = check_int("multiple", multiple, minimum=1)
        self.max_first_steps = check_int("max_first_steps", max_first_steps, minimum=0)
        self.seed = check_int("seed", seed)
        self.side = check_choice("side", side, _SIDES)
        self.interval = check_int("interval", interval, minimum=1)
        self.lower: int | tuple[int, int] | None = None
        self.upper: int | tuple[int, int] | None = None
        self.ramp: tuple[int, int] | None = None
        self._schedule: _Range | _List | _Ramp
        if steps_per_epoch is not None and ramp is None:
            raise ValueError(
                f"steps_per_epoch={steps_per_epoch!r} only turns ramp's epochs into steps; "
                "pass ramp=(first_epoch, last_epoch) with it, or leave it out"
            )
        if sizes is not None:
            if lower is not None or upper is not None or ramp is not None:
                raise ValueError(
                    f"sizes=... replaces lower, upper and ramp, got lower={lower!r}, upper={upper!r} and "
                    f"ramp={ramp!r} with it; give either sizes or the bounds"
                )
            self._schedule = _List(sizes, weights, self.multiple)
        else:
            if weights is not None:
                raise ValueError(f"weights={weights!r} weighs the entries of sizes=[...]; pass sizes with it")
            if lower is None or upper is None:
                raise ValueError(
                    f"give lower and upper (the range of side lengths) or sizes=[...], "
                    f"got lower={lower!r} and upper={upper!r}"
                )
            if ramp is None:
                for name, value in (("lower", lower), ("upper", upper)):
                    if isinstance(value, (tuple, list)):
                        raise ValueError(
                            f"{name}={value!r} is a (start, end) pair, which needs ramp=(first_step, last_step); "
                            "pass ramp, or an int"
                        )
                self.lower, self.upper = check_int("lower", lower, minimum=1), check_int("upper", upper, minimum=1)
                self._schedule = _Range(self.lower, self.upper, self.multiple)
            else:
                self.ramp = self._check_ramp(ramp, steps_per_epoch)
                self.lower, self.upper = _check_ends("lower", lower), _check_ends("upper", upper)
                self._schedule = _Ramp(self.lower, self.upper, *self.ramp, self.multiple)
        self._is_square = all(h == w for h, w in self._schedule.shapes)
        if self.side != "square" and not self._is_square:
            raise ValueError(f"rectangular sizes set both sides, so they need side='square', got side={self.side!r}")

    @staticmethod
    def _check_ramp(ramp: Any, steps_per_epoch: Any) -> tuple[int, int]:
        if not isinstance(ramp, (tuple, list)) or len(ramp) != 2:
            raise ValueError(f"ramp must be a (first, last) pair of steps or epochs, got {ramp!r}")
        first, last = check_int("ramp[0]", ramp[0], minimum=0), check_int("ramp[1]", ramp[1], minimum=0)
        if first > last:
            raise ValueError(f"ramp must have first <= last, got ramp={ramp!r}; the ramp runs from first to last")
        if steps_per_epoch is not None:
            epoch = check_int("steps_per_epoch", steps_per_epoch, minimum=1)
            first, last = first * epoch, last * epoch
        return (first, last)

    # ------------------------------------------------------------------------------ the sizes
    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """Every ``(height, width)`` the run may use, by ascending area (then height).

        For a ramp: every multiple between its smallest lower bound and its largest upper bound. Under
        ``side="short"``/``"long"``, ``(s, s)`` stands for the side length ``s``.
        """
        return self._schedule.shapes

    @property
    def sizes(self) -> tuple[int, ...]:
        """Every side length the run may use, ascending (the side lengths of :attr:`shapes`).

        Raises:
            ValueError: the sizes are rectangular (use :attr:`shapes`).
        """
        if not self._is_square:
            raise ValueError("rectangular sizes have no side lengths; read policy.shapes instead")
        return tuple(h for h, _ in self._schedule.shapes)

    @property
    def max_shape(self) -> tuple[int, int]:
        """The largest size of the run, which max-size-first uses: the last of :attr:`shapes`.

        For rectangular buckets, the bucket of largest area (of two of the same area, the taller).
        """
        return self._schedule.shapes[-1]

    @property
    def max_size(self) -> int:
        """The side length of the run's largest size: ``s`` of :attr:`max_shape` ``(s, s)``; for a
        rectangular bucket its longer side (read :attr:`max_shape` for both)."""
        return max(self.max_shape)

    def shapes_at(self, step: int) -> tuple[tuple[int, int], ...]:
        """Return the sizes that absolute step ``step`` draws from once max-size-first is over.

        For a ramp, the multiples between its two bounds at ``(step // interval) * interval``.
        """
        step = check_int("step", step, minimum=0)
        return self._schedule.shapes_at(step // self.interval * self.interval)

    def _shape(self, step: int, global_step: int) -> Shape:
        step = check_int("step", step, minimum=0)
        global_step = check_int("global_step", global_step, minimum=0)
        if global_step < self.max_first_steps:
            return self.max_shape
        block = step // self.interval
        choices = self._schedule.shapes_at(block * self.interval)
        thresholds = self._schedule.thresholds
        if thresholds is None:
            return choices[draw_index(self.seed, block, len(choices))]
        return choices[_draw_weighted(self.seed, block, thresholds)]

    def side_for(self, step: int, global_step: int) -> int:
        """Return the side length ``s`` for a step.

        Args:
            step: The absolute step (``StepCounter.absolute_step``): it picks the draw.
            global_step: Steps since this process started (``StepCounter.global_step``): it decides
                max-size-first.

        Raises:
            ValueError: the sizes are rectangular (use :meth:`size_for`).
        """
        if not self._is_square:
            raise ValueError("rectangular sizes have no side length; call policy.size_for instead")
        return self._shape(step, global_step)[0]

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
        return self.output_size(self._shape(step, global_step), shape)

    def output_size(self, size: int | tuple[int, int], shape: Sequence[int] | None = None) -> tuple[int, int]:
        """Return the output ``(height, width)`` of one of the policy's sizes for an input of ``shape``.

        Args:
            size: A side length ``s``, or a ``(height, width)`` (square under ``side="short"``/``"long"``).
            shape: The input's shape, for ``side="short"``/``"long"``; its last two entries are ``(H, W)``.

        Raises:
            ValueError: ``shape`` is missing or has a non-positive side in an aspect mode, or ``size``
                is not square there.
        """
        h_out, w_out = _as_shape("size", size)
        if self.side == "square":
            return (h_out, w_out)
        if h_out != w_out:
            raise ValueError(f"side={self.side!r} sets one side length, got the rectangular size={size!r}")
        if shape is None or len(shape) < 2:
            raise ValueError(f"side={self.side!r} needs the input shape (..., H, W), got shape={shape!r}")
        h, w = int(shape[-2]), int(shape[-1])
        if h <= 0 or w <= 0:
            raise ValueError(f"shape must have positive height and width, got {tuple(shape)!r}")
        s = h_out
        if (self.side == "short") == (h <= w):
            return (s, self._round(w * s / h))
        return (self._round(h * s / w), s)

    def _round(self, length: float) -> int:
        """Round to the nearest multiple (halves go up), never below one multiple."""
        return max(self.multiple, math.floor(length / self.multiple + 0.5) * self.multiple)

    def capped(self, size: int | tuple[int, int]) -> MultiScalePolicy:
        """Return a policy like this one whose sizes stop at ``size``, one of :attr:`shapes`.

        A range's ``upper`` becomes ``size``; a list keeps the sizes of area up to ``size``'s (and
        their weights); a ramp's bounds are clamped to ``size`` at both ends, so the ramp still ends
        at its last step, at ``size``. The draws change with the sizes: the capped policy is a
        different run.

        Raises:
            ValueError: ``size`` is not one of :attr:`shapes`.
        """
        shape = _as_shape("size", size)
        if shape not in self.shapes:
            raise ValueError(f"size={size!r} is not one of this policy's sizes {list(self.shapes)}; pass one of them")
        settings = self._settings()
        settings.update(self._schedule.capped(shape))
        return MultiScalePolicy(**settings)

    # ----------------------------------------------------------------------------------- state
    def _settings(self) -> dict[str, Any]:
        """The constructor's arguments that rebuild this policy (a ramp in steps)."""
        values: dict[str, Any] = {
            "lower": self.lower,
            "upper": self.upper,
            "multiple": self.multiple,
            "max_first_steps": self.max_first_steps,
            "seed": self.seed,
            "side": self.side,
            "interval": self.interval,
            "sizes": None,
            "weights": None,
            "ramp": self.ramp,
        }
        if isinstance(self._schedule, _List):
            values.update(sizes=list(self._schedule.given), weights=self._schedule.weights)
        return values

    def state_dict(self) -> dict[str, Any]:
        """Return the settings as a dict of plain values (pairs become lists, as in JSON).

        A policy is a pure function of its settings and has no progress to save; its settings are
        saved beside a run's progress so that a resume can check it is built the same way.
        """
        return {key: _plain(value) for key, value in self._settings().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check that a saved policy had these settings; the settings are configuration and stay as built.

        ``max_first_steps`` may differ: it decides only the opening of each process, not the draws. A
        state saved before ``interval``, ``sizes``, ``weights`` and ``ramp`` existed holds none of
        them and is read as their defaults. Pairs compare equal to lists, as a JSON round trip
        turns them.

        Raises:
            ValueError: the keys are wrong, or a saved setting differs from this policy's (both are
                named).
        """
        if isinstance(state, dict) and not any(key in state for key in _SCHEDULE_DEFAULTS):
            state = {**state, **_SCHEDULE_DEFAULTS}
        check_state_keys("MultiScalePolicy", state, _STATE_KEYS)
        mine = self.state_dict()
        # max_first_steps belongs to each process (it may change on resume): only the draw must agree.
        for key in (k for k in _STATE_KEYS if k != "max_first_steps"):
            if _plain(state[key]) != mine[key]:
                raise ValueError(
                    f"the state was saved with {key}={state[key]!r} but this policy has {key}={mine[key]!r}; "
                    "build the policy with the saved settings to resume that run"
                )

    def __repr__(self) -> str:
        settings = self._settings()
        shown = [key for key in _STATE_KEYS if key not in _SCHEDULE_DEFAULTS and settings[key] is not None]
        shown += [key for key in _SCHEDULE_DEFAULTS if settings[key] != _SCHEDULE_DEFAULTS[key]]
        return f"MultiScalePolicy({', '.join(f'{key}={settings[key]!r}' for key in shown)})"
