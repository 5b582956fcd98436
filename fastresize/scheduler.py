"""CosineAnnealingWarmbootingLR: cosine annealing with warm restarts, warmup and decay per restart."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from fastresize._checks import check_float, check_int, check_state_keys
from fastresize.counter import StepCounter

CurveFn = Callable[[float, float], float]


class CosineAnnealingWarmbootingLR(LRScheduler):
    r"""Cosine annealing with warm restarts ("warmbooting") at milestone epochs.

    A drop-in replacement for the original ``CosineAnnealingWarmbootingLR`` (Huangdebo/CAWB): the
    same arguments and, in the original call order, the same learning rates, with its defects fixed:
    sizes of the warmup and the restarts are checked, past the last epoch the lr holds its final value
    instead of rising again, duplicate or out-of-range milestones warn, resuming does not replay the
    warmup, and the base lr is each group's ``initial_lr`` rather than its current lr.

    The math. Let :math:`b_g` be param group *g*'s base lr (its ``initial_lr``), :math:`B` the
    batches per epoch, :math:`w` the warmup epochs and :math:`W = wB`. The segment boundaries are
    :math:`s_0 = w < s_1 < \dots < s_m = \text{epochs}`, the milestones strictly inside
    :math:`(w, \text{epochs})`. For an epoch counter :math:`k`, let segment :math:`i` be the first
    with :math:`k \le s_{i+1}`; then

    .. math::

        \text{gap} = s_{i+1} - s_i + \begin{cases}\text{epoch\_scale} & i < m - 1 \\
        0 & i = m - 1\end{cases}, \qquad t = k - s_i, \qquad \gamma = \text{step\_scale}^{\,i},

        f_g(k) = \gamma\, b_g \left(\frac{1 + \cos(\pi t / \text{gap})}{2}\,(1 - \eta) + \eta\right)

    with :math:`\eta` = ``eta_min`` (a ratio of the base lr, not an absolute lr), or
    :math:`\gamma\, b_g\, \text{lf}(t, \text{gap})` with a custom curve. For :math:`k >
    \text{epochs}` the value holds at :math:`f_g(\text{epochs})`. The lr of batch *b* of epoch *e*,
    with :math:`n = eB + b`, is

    .. math::

        \text{lr}_g(e, b) = \begin{cases} b_g\, n / W & n < W \ \text{(linear warmup from 0)}\\
        b_g & e = 0 \\ f_g(e - 1) & \text{otherwise,}\end{cases}

    which is what the original yields when :meth:`step_batch` runs before each batch and
    :meth:`step` after each epoch's last batch.

    Two ways to drive it:

    * **The original call order** (no ``counter``): call :meth:`step_batch` before each batch's
      update and :meth:`step` after each epoch. ``step(external_iter=k)`` sets the epoch counter to
      ``k`` as the original does, and ``scheduler.last_epoch = N`` resumes after ``N`` epochs
      (without replaying the warmup, unlike the original).
    * **Counter-driven** (``counter=StepCounter(...)``): the lr is :meth:`lr_at` of the counter's
      position; :meth:`step` and :meth:`step_batch` both just apply it, so calling them more often
      changes nothing. Under Lightning, return ``{"scheduler": s, "interval": "step"}``; with
      :class:`~fastresize.ResizeLoader` the loader advances the counter.

    Args:
        optimizer: The optimizer. Each group's ``initial_lr`` (set from ``lr`` when missing) is its
            base lr, so a scheduler built after ``optimizer.load_state_dict`` keeps the right base.
        epochs: Total epochs, ``> warmup_epoch``.
        eta_min: Floor of the cosine as a ratio of the base lr, in ``[0, 1]``.
        steps: Milestone epochs of the restarts. Not modified. Milestones outside
            ``(warmup_epoch, epochs)`` are dropped with a warning; duplicates count once.
        step_scale: Factor applied to the peak at each restart, ``>= 0``.
        lf: Custom curve ``lf(t, gap) -> ratio`` used instead of the cosine.
        batchs: Batches per epoch (the original's spelling). Required for a warmup; taken from the
            counter when ``0``.
        warmup_epoch: Epochs of per-batch linear warmup from 0.
        epoch_scale: Added to the gap of every segment but the last, ``>= 0``.
        counter: A :class:`~fastresize.StepCounter` to drive the lr from.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 2)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> scheduler = CosineAnnealingWarmbootingLR(
        ...     optimizer, epochs=10, steps=[4], batchs=100, warmup_epoch=1)
        >>> for epoch in range(10):
        ...     for batch in range(100):
        ...         _ = scheduler.step_batch()  # before the update: warmup
        ...         optimizer.step()
        ...     _ = scheduler.step()  # after the epoch
        >>> [round(lr, 6) for lr in scheduler.get_last_lr()]
        [0.009091]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        epochs: int,
        eta_min: float = 0.05,
        steps: Iterable[int] = (),
        step_scale: float = 0.8,
        lf: CurveFn | None = None,
        batchs: int = 0,
        warmup_epoch: int = 0,
        epoch_scale: float = 1.0,
        *,
        counter: StepCounter | None = None,
    ) -> None:
        # LRScheduler.__init__ is not called on purpose: it takes a first step() at construction
        # (the "-1" start) and patches optimizer.step to warn when step_batch() precedes it, which
        # is this scheduler's documented call order.
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.epochs = check_int("epochs", epochs, minimum=1)
        self.warmup_epoch = check_int("warmup_epoch", warmup_epoch, minimum=0)
        if self.epochs <= self.warmup_epoch:
            raise ValueError(
                f"epochs must be greater than warmup_epoch, got epochs={epochs!r} and warmup_epoch={warmup_epoch!r}"
            )
        self.eta_min = check_float("eta_min", eta_min, minimum=0.0, maximum=1.0)
        self.step_scale = check_float("step_scale", step_scale, minimum=0.0)
        self.epoch_scale = check_float("epoch_scale", epoch_scale, minimum=0.0)
        if lf is not None and not callable(lf):
            raise TypeError(f"lf must be a callable lf(t, gap) or None, got {lf!r}")
        self.lf = lf
        if counter is not None and not isinstance(counter, StepCounter):
            raise TypeError(f"counter must be a StepCounter or None, got {type(counter).__name__}")
        self.counter = counter
        self.batchs = self._resolve_batchs(batchs, counter)
        if self.warmup_epoch > 0 and self.batchs == 0:
            raise ValueError(
                f"warmup_epoch={warmup_epoch!r} needs batchs (batches per epoch) > 0, got batchs={batchs!r}"
            )
        self.warmup_iters = self.batchs * self.warmup_epoch
        self.boundaries = (self.warmup_epoch, *self._milestones(steps), self.epochs)

        self.base_lrs: list[float] = []  # type: ignore[assignment]  # always floats here
        self._sync_param_groups()
        self._epochs_done = 0
        self._batches_done = 0
        current = [float(group["lr"]) for group in optimizer.param_groups]
        self._last_lr: list[float] = current  # type: ignore[assignment]
        if counter is not None:
            self._apply_position(counter)

    @staticmethod
    def _resolve_batchs(batchs: Any, counter: StepCounter | None) -> int:
        given = check_int("batchs", batchs, minimum=0)
        if counter is None or given == 0:
            return given if counter is None else counter.steps_per_epoch
        if given != counter.steps_per_epoch:
            raise ValueError(
                f"batchs={given} disagrees with counter.steps_per_epoch={counter.steps_per_epoch}; "
                "pass batchs=0 to take it from the counter"
            )
        return given

    def _milestones(self, steps: Iterable[int]) -> list[int]:
        if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
            raise TypeError(f"steps must be an iterable of ints (milestone epochs), got {steps!r}")
        given = [check_int(f"steps[{i}]", step) for i, step in enumerate(steps)]
        unique = sorted(set(given))
        if len(unique) != len(given):
            duplicates = sorted({s for s in given if given.count(s) > 1})
            warnings.warn(f"duplicate milestones {duplicates} in steps count once", UserWarning, stacklevel=3)
        dropped = [s for s in unique if not self.warmup_epoch < s < self.epochs]
        if dropped:
            warnings.warn(
                f"milestones {dropped} are outside (warmup_epoch, epochs) = "
                f"({self.warmup_epoch}, {self.epochs}) and are ignored",
                UserWarning,
                stacklevel=3,
            )
        return [s for s in unique if self.warmup_epoch < s < self.epochs]

    def _sync_param_groups(self) -> None:
        """Give groups added since the last call a base lr (their ``initial_lr``, else ``lr``)."""
        for group in self.optimizer.param_groups[len(self.base_lrs) :]:
            group.setdefault("initial_lr", group["lr"])
            self.base_lrs.append(float(group["initial_lr"]))

    # ---------------------------------------------------------------------------- the closed form
    def _segment(self, k: int) -> tuple[float, float, float]:
        """Return ``(gamma, t, gap)`` for epoch counter ``k`` (see the class docstring)."""
        k = min(k, self.epochs)  # hold the final value instead of rising again past the end
        scale = 1.0
        last = len(self.boundaries) - 2
        for i in range(last):
            if k <= self.boundaries[i + 1]:
                break
            scale *= self.step_scale
        else:
            i = last
        gap = self.boundaries[i + 1] - self.boundaries[i] + (self.epoch_scale if i != last else 0.0)
        return scale, k - self.boundaries[i], gap

    def _curve(self, t: float, gap: float) -> float:
        if self.lf is not None:
            return float(self.lf(t, gap))
        return ((1 + math.cos(t * math.pi / gap)) / 2) * (1.0 - self.eta_min) + self.eta_min

    def epoch_lrs(self, k: int) -> list[float]:
        """Return every group's :math:`f_g(k)`: what the original's ``step()`` sets at epoch counter ``k``."""
        self._sync_param_groups()
        scale, t, gap = self._segment(k)
        curve = self._curve(t, gap)
        # (scale * base) * curve: the original's order of operations, so the rounding matches it
        return [scale * base * curve for base in self.base_lrs]

    def _warmup_lrs(self, n: int) -> list[float]:
        self._sync_param_groups()
        rate = n / self.warmup_iters
        return [base * rate for base in self.base_lrs]

    def lr_at(self, epoch: int, batch: int) -> list[float]:
        """Return every group's lr for batch ``batch`` of epoch ``epoch`` (the formula above).

        Args:
            epoch: The epoch, ``>= 0``.
            batch: The batch inside the epoch, ``>= 0``.
        """
        epoch = check_int("epoch", epoch, minimum=0)
        batch = check_int("batch", batch, minimum=0)
        n = epoch * self.batchs + batch
        if n < self.warmup_iters:
            return self._warmup_lrs(n)
        if epoch == 0:
            self._sync_param_groups()
            return list(self.base_lrs)
        return self.epoch_lrs(epoch - 1)

    # ------------------------------------------------------------------------------ stepping
    def _apply(self, lrs: list[float]) -> float:
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = list(lrs)
        return lrs[0]

    def _apply_position(self, counter: StepCounter) -> float:
        return self._apply(self.lr_at(counter.epoch, counter.batch))

    def step(self, external_iter: int | None = None) -> float:  # type: ignore[override]
        """Set the lr for the next epoch; call it after each epoch's last batch.

        Args:
            external_iter: Set the epoch counter to this value first, as the original does: the lr
                becomes :math:`f(\\text{external\\_iter})`, the lr of epoch ``external_iter + 1``.

        Returns:
            The lr of the first param group.
        """
        if self.counter is not None:
            if external_iter is not None:
                raise ValueError(
                    f"step(external_iter={external_iter!r}) conflicts with counter=...: the counter "
                    "owns the position; move the counter instead"
                )
            return self._apply_position(self.counter)
        if external_iter is None:
            self._epochs_done += 1
        else:
            self._epochs_done = check_int("external_iter", external_iter, minimum=-1) + 1
        return self._apply(self.epoch_lrs(self._epochs_done - 1))

    def step_batch(self) -> float | None:
        """Apply the warmup lr; call it before each batch's update.

        Returns:
            The lr of the first param group while warming up (always in counter mode), else
            ``None`` as in the original.
        """
        if self.counter is not None:
            return self._apply_position(self.counter)
        n = self._batches_done
        self._batches_done += 1
        if n < self.warmup_iters:
            return self._apply(self._warmup_lrs(n))
        return None

    @property  # type: ignore[override]
    def last_epoch(self) -> int:
        """Epochs completed: the counter's epoch, or the number of :meth:`step` calls."""
        return self.counter.epoch if self.counter is not None else self._epochs_done

    @last_epoch.setter
    def last_epoch(self, value: int) -> None:
        if self.counter is not None:
            raise ValueError("last_epoch is the counter's epoch in counter mode; load the counter's state instead")
        self._epochs_done = check_int("last_epoch", value, minimum=0)
        self._batches_done = self._epochs_done * self.batchs

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Return the lrs last applied (this scheduler computes from positions: see :meth:`lr_at`)."""
        return list(self._last_lr)

    def get_last_lr(self) -> list[float]:  # type: ignore[override]
        """Return the lrs last applied, one per param group."""
        return list(self._last_lr)

    # ---------------------------------------------------------------------------------- state
    def _state_keys(self) -> tuple[str, ...]:
        position = () if self.counter is not None else ("last_epoch", "batches_done")
        return ("base_lrs", "last_lr", *position)

    def state_dict(self) -> dict[str, Any]:
        """Return the state as plain Python values (``lf`` and the counter are not included).

        Counter-driven, the position lives in the counter: save the counter's state beside this.
        """
        state: dict[str, Any] = {"base_lrs": list(self.base_lrs), "last_lr": list(self._last_lr)}
        if self.counter is None:
            state.update(last_epoch=self._epochs_done, batches_done=self._batches_done)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a saved state and re-apply its lrs to the optimizer, warmup position included.

        Raises:
            ValueError: the keys or values are wrong, or the state's base lrs differ from the optimizer's.
        """
        check_state_keys(type(self).__name__, state_dict, self._state_keys())
        base_lrs = [check_float(f"base_lrs[{i}]", lr, minimum=0.0) for i, lr in enumerate(state_dict["base_lrs"])]
        last_lr = [check_float(f"last_lr[{i}]", lr, minimum=0.0) for i, lr in enumerate(state_dict["last_lr"])]
        groups = len(self.optimizer.param_groups)
        if len(base_lrs) != groups or len(last_lr) != groups:
            raise ValueError(
                f"the state holds {len(base_lrs)} param groups but the optimizer has {groups}; "
                "add the same param groups before loading"
            )
        self._sync_param_groups()
        if base_lrs != self.base_lrs:
            raise ValueError(
                f"the state was saved with base_lrs={base_lrs} but this scheduler's optimizer has base lrs "
                f"{self.base_lrs} (each group's initial_lr); the base lr is configuration: build the optimizer with "
                "the saved lr, or load the optimizer's state before building the scheduler"
            )
        if self.counter is None:
            epochs_done = check_int("last_epoch", state_dict["last_epoch"], minimum=0)
            batches_done = check_int("batches_done", state_dict["batches_done"], minimum=0)
            self._epochs_done, self._batches_done = epochs_done, batches_done
        self._apply(last_lr)
