"""The step counter: the one owner of training time.

Every other component (the size policy, the transform, the scheduler, the loader) is *given* a step
by the counter and keeps no clock of its own.
"""

from __future__ import annotations

from typing import Any

from fastresize._checks import check_int, check_state_keys

_STATE_KEYS = ("steps_per_epoch", "epoch", "batch")


class StepCounter:
    """Counts batches and epochs of one training process.

    Two step numbers are derived from the position ``(epoch, batch)``:

    * ``global_step = (epoch - epoch_to_start) * steps_per_epoch + batch - batch_to_start``: the steps
      taken since *this process* started. It drives max-size-first, because a restarted process starts
      with an empty allocator and has to see the largest size first again. ``(epoch_to_start,
      batch_to_start)`` is where the process started: ``(epoch_to_start, 0)`` for a new counter, the
      loaded position after :meth:`load_state_dict` (mid-epoch too).
    * ``absolute_step = epoch * steps_per_epoch + batch``: the steps since the whole training began.
      It drives the size draw and the learning rate, so a resumed run continues exactly as an
      uninterrupted one would.

    Args:
        steps_per_epoch: Batches in one epoch, ``>= 1``.
        epoch_to_start: The epoch this process starts at (``0`` for a fresh run).

    Example:
        >>> counter = StepCounter(steps_per_epoch=3)
        >>> for _ in range(4):
        ...     counter.advance()
        >>> counter.epoch, counter.batch, counter.global_step
        (1, 1, 4)
        >>> resumed = StepCounter(steps_per_epoch=3, epoch_to_start=1)
        >>> resumed.global_step, resumed.absolute_step
        (0, 3)
    """

    def __init__(self, steps_per_epoch: int, epoch_to_start: int = 0) -> None:
        self.steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        self.epoch_to_start = check_int("epoch_to_start", epoch_to_start, minimum=0)
        self.batch_to_start = 0
        self._epoch = self.epoch_to_start
        self._batch = 0

    @property
    def epoch(self) -> int:
        """The epoch of the batch about to run."""
        return self._epoch

    @property
    def batch(self) -> int:
        """The index, inside its epoch, of the batch about to run."""
        return self._batch

    @property
    def global_step(self) -> int:
        """Steps since this process started:
        ``(epoch - epoch_to_start) * steps_per_epoch + batch - batch_to_start``."""
        return (self._epoch - self.epoch_to_start) * self.steps_per_epoch + self._batch - self.batch_to_start

    @property
    def absolute_step(self) -> int:
        """Steps since the training began: ``epoch * steps_per_epoch + batch``."""
        return self._epoch * self.steps_per_epoch + self._batch

    def advance(self) -> None:
        """Move to the next batch, rolling over into the next epoch after the last batch."""
        self._batch += 1
        if self._batch == self.steps_per_epoch:
            self._epoch += 1
            self._batch = 0

    def state_dict(self) -> dict[str, Any]:
        """Return the position as a dict of plain ints."""
        return {"steps_per_epoch": self.steps_per_epoch, "epoch": self._epoch, "batch": self._batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position, as a new process.

        Loading starts a new run: ``(epoch_to_start, batch_to_start)`` becomes the saved position, so
        ``global_step`` counts from 0 again and max-size-first runs again (a new process starts with
        an empty allocator, so the largest size must come first again), at an epoch boundary or in
        the middle of an epoch. ``absolute_step`` continues.

        Raises:
            ValueError: the keys are wrong, a value is out of range, or ``steps_per_epoch`` differs
                from this counter's (the epoch length cannot change in the middle of a run).
        """
        check_state_keys("StepCounter", state, _STATE_KEYS)
        steps_per_epoch = check_int("state['steps_per_epoch']", state["steps_per_epoch"], minimum=1)
        if steps_per_epoch != self.steps_per_epoch:
            raise ValueError(
                f"state['steps_per_epoch'] is {steps_per_epoch} but this counter has "
                f"steps_per_epoch={self.steps_per_epoch}; build the counter with the saved epoch length"
            )
        epoch = check_int("state['epoch']", state["epoch"], minimum=0)
        batch = check_int("state['batch']", state["batch"], minimum=0)
        if batch >= steps_per_epoch:
            raise ValueError(f"state['batch'] must be < steps_per_epoch={steps_per_epoch}, got {batch}")
        self.epoch_to_start, self.batch_to_start, self._epoch, self._batch = epoch, batch, epoch, batch

    def __repr__(self) -> str:
        return (
            f"StepCounter(steps_per_epoch={self.steps_per_epoch}, epoch_to_start={self.epoch_to_start}, "
            f"batch_to_start={self.batch_to_start}, epoch={self._epoch}, batch={self._batch})"
        )
