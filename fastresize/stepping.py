"""Driving an lr scheduler from the loader: one small protocol, and adapters for the common kinds.

A :class:`~fastresize.ResizeLoader` calls three hooks around every batch it delivers:

* ``before_batch()``: before the batch is handed to the training loop;
* ``after_batch()``: once the training loop comes back for the next batch (or leaves the epoch),
  that is after the batch's ``optimizer.step()``;
* ``after_epoch()``: after the epoch's last batch, following its ``after_batch()``.

So inside the loop, the lr of batch ``i`` is what a hand-written loop that calls
``scheduler.step()`` after each ``optimizer.step()`` sees: the lr after ``i`` steps.

The adapters for the warmboot scheduler, torch's schedulers and timm's are :class:`Watched`: the
loader drives the scheduler, so a scheduler that moved between two of its hooks was also stepped by
the training loop (the original CAWB loop calls ``step_batch()`` and ``step()`` itself) and would
run at the wrong learning rates; the next hook raises a ``RuntimeError`` that names the call to
remove. An object with the three hooks of its own is used as it is, unwatched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from fastresize.counter import StepCounter
from fastresize.scheduler import CosineAnnealingWarmbootingLR


@runtime_checkable
class Stepper(Protocol):
    """What the loader calls around each batch. Implement it to drive any other kind of scheduler."""

    def before_batch(self) -> None:
        """Called before a batch is handed to the training loop."""

    def after_batch(self) -> None:
        """Called after a batch's update: when the loop asks for the next batch or leaves the epoch."""

    def after_epoch(self) -> None:
        """Called after the epoch's last batch (after its :meth:`after_batch`)."""


class Watched:
    """An adapter that raises when its scheduler was stepped outside the loader's hooks.

    Each hook first compares the scheduler's :meth:`progress` with what it was when the previous
    hook ended; a difference means the training loop stepped the scheduler too. Subclasses drive
    the scheduler in ``_before_batch``, ``_after_batch`` and ``_after_epoch``.

    Args:
        scheduler: The scheduler the adapter drives.
    """

    calls = "scheduler.step()"
    """The calls the message asks to remove from the training loop."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._seen: Any = None

    def progress(self) -> Any:
        """The scheduler's progress: what a step outside the loader changes."""
        raise NotImplementedError

    def forget(self) -> None:
        """Accept the scheduler's progress as it is (after its state was loaded)."""
        self._seen = None

    def _watch(self, hook: Callable[[], None]) -> None:
        if self._seen is not None and self.progress() != self._seen:
            self._seen = None
            raise RuntimeError(
                f"the {type(self.scheduler).__name__} was stepped outside the loader: wrap(scheduler=...) "
                f"(ResizeLoader) already steps it for every batch, so remove {self.calls} from the training "
                "loop, or leave scheduler= out of wrap and step it yourself"
            )
        hook()
        self._seen = self.progress()

    def before_batch(self) -> None:
        self._watch(self._before_batch)

    def after_batch(self) -> None:
        self._watch(self._after_batch)

    def after_epoch(self) -> None:
        self._watch(self._after_epoch)

    def _before_batch(self) -> None:
        pass

    def _after_batch(self) -> None:
        pass

    def _after_epoch(self) -> None:
        pass


class WarmbootStepper(Watched):
    """:class:`~fastresize.CosineAnnealingWarmbootingLR` in its own call order.

    ``step_batch()`` before each batch (the per-batch warmup), ``step()`` after each epoch. A
    counter-driven scheduler reads the loader's counter and gets the same calls (both are
    idempotent, so extra calls change nothing and are not refused).
    """

    calls = "scheduler.step_batch() and scheduler.step()"

    def progress(self) -> Any:
        scheduler = self.scheduler
        return None if scheduler.counter is not None else (scheduler._epochs_done, scheduler._batches_done)

    def _before_batch(self) -> None:
        self.scheduler.step_batch()

    def _after_epoch(self) -> None:
        self.scheduler.step()


class PerBatchStepper(Watched):
    """A torch ``LRScheduler`` stepped once per batch: ``OneCycleLR``, ``LambdaLR``, ``CosineAnnealingLR``..."""

    def progress(self) -> Any:
        return self.scheduler.last_epoch

    def _after_batch(self) -> None:
        self.scheduler.step()


class TimmStepper(Watched):
    """A timm ``Scheduler``: ``step_update(num_updates)`` after each batch, ``step(epoch)`` after each epoch.

    The update count and the epoch come from the loader's counter, so timm's per-update and
    per-epoch schedules (``t_in_epochs``) both follow the loader's position, resumed runs included.
    A timm scheduler keeps no count of its own: a step outside the loader shows in the learning
    rates it sets.
    """

    calls = "scheduler.step_update() and scheduler.step()"

    def __init__(self, scheduler: Any, counter: StepCounter) -> None:
        super().__init__(scheduler)
        self.counter = counter

    def progress(self) -> Any:
        field = getattr(self.scheduler, "param_group_field", "lr")
        groups = getattr(getattr(self.scheduler, "optimizer", None), "param_groups", [])
        return [group.get(field) for group in groups]

    def _after_batch(self) -> None:
        # Called once the counter has moved past the batch: absolute_step is the updates done.
        self.scheduler.step_update(num_updates=self.counter.absolute_step)

    def _after_epoch(self) -> None:
        self.scheduler.step(epoch=self.counter.epoch)


def stepper_for(scheduler: Any, counter: StepCounter) -> Stepper:
    """Return the hooks that drive ``scheduler`` from a loader whose position is ``counter``.

    Args:
        scheduler: A :class:`~fastresize.CosineAnnealingWarmbootingLR`, a torch ``LRScheduler`` meant
            to be stepped once per batch, a timm ``Scheduler``, or any object with the
            :class:`Stepper` hooks.
        counter: The loader's step counter.

    Raises:
        TypeError: ``scheduler`` is none of these kinds, or a ``ReduceLROnPlateau`` (it needs a metric).
        ValueError: ``scheduler`` is counter-driven by another counter, or its length disagrees
            with the counter's epoch (see :func:`check_length`).
    """
    if isinstance(scheduler, CosineAnnealingWarmbootingLR):
        if scheduler.counter is not None and scheduler.counter is not counter:
            raise ValueError(
                "the scheduler is driven by another StepCounter than the loader's; build the scheduler with "
                "counter=loader.counter, or build the loader with counter=scheduler.counter"
            )
        if scheduler.batchs not in (0, counter.steps_per_epoch):
            raise ValueError(
                f"the scheduler's batchs={scheduler.batchs} disagrees with the loader's {counter.steps_per_epoch} "
                "batches per epoch; build the scheduler with batchs=len(loader)"
            )
        return WarmbootStepper(scheduler)
    if isinstance(scheduler, ReduceLROnPlateau):
        raise TypeError(
            "scheduler=ReduceLROnPlateau needs a metric at each step, which the loader does not have; "
            "leave it out of the loader and call scheduler.step(metric) yourself"
        )
    if isinstance(scheduler, LRScheduler):
        return PerBatchStepper(scheduler)
    if isinstance(scheduler, Stepper):
        return scheduler
    if callable(getattr(scheduler, "step_update", None)) and callable(getattr(scheduler, "step", None)):
        return TimmStepper(scheduler, counter)
    raise TypeError(
        f"scheduler must be a CosineAnnealingWarmbootingLR, a torch LRScheduler stepped per batch, a timm "
        f"Scheduler (step_update/step) or an object with before_batch/after_batch/after_epoch, "
        f"got {type(scheduler).__name__}"
    )


def check_length(scheduler: Any, batches: int) -> None:
    """Refuse an epoch of ``batches`` steps that would run a scheduler past its fixed length.

    ``OneCycleLR`` knows its ``total_steps`` and fails on the step after them; checking at the start
    of the epoch turns a crash in the middle of it into a clear error before any work.

    Raises:
        ValueError: the scheduler has ``total_steps`` and fewer than ``batches`` of them are left.
    """
    total = getattr(scheduler, "total_steps", None)
    if isinstance(scheduler, LRScheduler) and isinstance(total, int):
        left = total - scheduler.last_epoch
        if batches > left:
            raise ValueError(
                f"{type(scheduler).__name__} has total_steps={total} and has taken {scheduler.last_epoch}, so "
                f"{left} are left, but this epoch has {batches} batches; build it with "
                "steps_per_epoch=len(loader) and the number of epochs you train"
            )
