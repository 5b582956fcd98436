"""The loader wrapper: moves each batch to the device, resizes it at the step's size, and keeps time."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset

from fastresize._batch import BatchFormat, Parts
from fastresize._checks import check_choice, check_device, check_int, check_loader, check_state_keys
from fastresize.collate import ResizeCollate
from fastresize.counter import StepCounter
from fastresize.policy import MultiScalePolicy, SizePolicy
from fastresize.prefetch import DevicePrefetcher, PassThrough
from fastresize.resample import resample_blocker, stamped_loader
from fastresize.stepping import Stepper, Watched, check_length, stepper_for
from fastresize.transform import BatchResize

_STATE_KEYS = ("counter", "scheduler", "policy", "crop")
RESAMPLE_SIDES = ("auto", "device", "workers")


def epoch_length(loader: Any, steps_per_epoch: Any = None, *, source: str = "steps_per_epoch") -> int:
    """Return the batches in one epoch of ``loader``: ``steps_per_epoch``, checked against ``len(loader)``.

    Args:
        loader: The loader; its ``len()`` is used where it has one.
        steps_per_epoch: The epoch length, or ``None`` to take ``len(loader)``. Required for a loader
            without ``len()``. For an ``IterableDataset`` it may differ from ``len(loader)``, which
            is only an estimate there (with workers, each worker ends with its own partial batch).
        source: The name ``steps_per_epoch`` goes by in the messages.

    Raises:
        TypeError: ``loader`` is not iterable.
        ValueError: the loader is empty, has no ``len()`` and no ``steps_per_epoch`` was given, or
            the two disagree (map-style datasets).
    """
    check_loader(loader)
    try:
        length: int | None = len(loader)
    except TypeError:
        length = None
    if length == 0:
        raise ValueError(
            f"the loader is empty (len(loader) == 0): its dataset has {_dataset_size(loader)} samples; "
            "check the dataset, batch_size and drop_last"
        )
    if steps_per_epoch is None:
        if length is None:
            raise ValueError(f"the loader has no len() ({_kind(loader)}); pass steps_per_epoch=... (batches per epoch)")
        return length
    steps = check_int(source, steps_per_epoch, minimum=1)
    if length is not None and length != steps and not _iterable_dataset(loader):
        raise ValueError(f"{source}={steps} disagrees with len(loader)={length}")
    return steps


def _iterable_dataset(loader: Any) -> bool:
    return isinstance(getattr(loader, "dataset", None), IterableDataset)


def _kind(loader: Any) -> str:
    if _iterable_dataset(loader):
        return "its dataset is an IterableDataset"
    if isinstance(loader, Iterator):
        return f"it is a one-pass iterator, a {type(loader).__name__}"
    return f"a {type(loader).__name__}"


def _given_counter(counter: Any, scheduler: Any) -> StepCounter | None:
    """``counter``, else a counter-driven scheduler's counter, else ``None`` (make a new one)."""
    if counter is None:
        own = getattr(scheduler, "counter", None)
        return own if isinstance(own, StepCounter) else None
    if not isinstance(counter, StepCounter):
        raise TypeError(f"counter must be a StepCounter or None, got {type(counter).__name__}")
    return counter


def _has_state(scheduler: Any) -> bool:
    """Whether a scheduler saves and loads its progress (a custom stepper may have none)."""
    return callable(getattr(scheduler, "state_dict", None)) and callable(getattr(scheduler, "load_state_dict", None))


def _collate_format(loader: Any) -> BatchFormat | None:
    """The batch format of the loader's :class:`ResizeCollate`, if it has one."""
    collate = getattr(loader, "collate_fn", None)
    return collate.format if isinstance(collate, ResizeCollate) else None


def _dataset_size(loader: Any) -> str:
    try:
        return str(len(loader.dataset))
    except (AttributeError, TypeError):
        return "an unknown number of"


class ResizeLoader(PassThrough):
    """Wraps a DataLoader: moves each batch to the device, resizes it there, and keeps time.

    The loader owns the time: for batch ``i`` of the counter's epoch it reads the counter and gives
    its step to the transform, whose policy picks the size (the largest while
    ``global_step < max_first_steps``, then a draw that depends only on ``(seed, absolute_step)``).
    In order:

    1. take the next batch from the :class:`~fastresize.DevicePrefetcher` (on CUDA its copy ran on
       a side stream while the previous batch trained);
    2. the scheduler's ``after_batch`` hook for the previous batch, whose update is done now;
    3. the scheduler's ``before_batch`` hook;
    4. resize at the counter's step, advance the counter, and yield.

    So inside the loop the counter already points at the next batch (a counter-driven scheduler
    stepped after ``optimizer.step()`` sets the next batch's lr), and a scheduler stepped once per
    batch gives batch ``i`` the lr after ``i`` steps, as a hand-written ``optimizer.step();
    scheduler.step()`` loop does. Leaving the loop (``break``) or saving :meth:`state_dict` also
    completes the batch in hand. See :mod:`fastresize.stepping` for the kinds of scheduler it drives.

    Under Lightning, let Lightning step the scheduler (``"interval": "step"``) and leave
    ``scheduler`` out, and add :class:`fastresize.lightning.LoaderCheckpoint` to the trainer's
    callbacks so that ``Trainer.fit(ckpt_path=...)`` continues the counter.

    One iteration is one epoch of ``steps_per_epoch`` batches, from a new pass over the loader, as
    ``for batch in loader`` starts one: an ``IterableDataset`` starts again from its beginning unless
    it keeps its own position (or draws by the epoch it is given through ``set_epoch``), and the
    batches it has beyond ``steps_per_epoch`` are not used. If the previous iteration was left
    early (``break``), the next one yields only the batches left in the counter's epoch, so the
    counter and the scheduler stay on epoch boundaries. The sampler's ``set_epoch`` is called with
    the counter's epoch at the start of each iteration (``DistributedSampler`` shuffles by it).

    Args:
        loader: The DataLoader to wrap (any iterable of batches works; ``len`` and the sampler
            attributes are passed through when it has them).
        transform: The :class:`BatchResize` to apply on the device: its policy picks each step's
            size, or every batch gets its fixed size.
        counter: The step counter; defaults to a counter-driven scheduler's, else a new one.
        device: Where batches go; CUDA when available, else CPU.
        scheduler: An lr scheduler to drive per batch (see :func:`fastresize.stepping.stepper_for`).
        steps_per_epoch: Batches per epoch. Needed when the loader has no ``len()``; for an
            ``IterableDataset`` it replaces ``len(loader)``, an estimate there; otherwise it must
            equal ``len(loader)``.
        ring: Whether workers collate into the preallocated batch ring (see
            :class:`~fastresize.DevicePrefetcher`); ``None`` uses it where it applies.
        resample_in: Where a batch that needs a crop (images of different sizes, or a transform
            with a ``crop`` rule) is cropped and resized, once per image: ``"device"`` (the
            transform does it, in one launch on CUDA), ``"workers"`` (the DataLoader's workers do
            it at the step's size and hand over a dense batch of it; see
            :mod:`fastresize.resample`) or ``"auto"``: the workers when batches stay on the CPU,
            where they resize in parallel and the "device" is one thread, else the device. The
            sizes, boxes and learning rates are the same either way.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = TensorDataset(torch.randint(0, 256, (8, 3, 40, 40), dtype=torch.uint8))
        >>> loader = wrap(DataLoader(data, batch_size=4), lower=32, upper=64, device="cpu")
        >>> [tuple(images.shape) for (images,) in loader]
        [(4, 3, 64, 64), (4, 3, 64, 64)]
    """

    def __init__(
        self,
        loader: Any,
        transform: BatchResize,
        *,
        counter: StepCounter | None = None,
        device: str | torch.device | None = None,
        scheduler: Any = None,
        steps_per_epoch: int | None = None,
        ring: bool | None = None,
        resample_in: str = "auto",
    ) -> None:
        if not isinstance(transform, BatchResize):
            raise TypeError(f"transform must be a BatchResize, got {type(transform).__name__}")
        counter = _given_counter(counter, scheduler)
        if counter is None:
            counter = StepCounter(epoch_length(loader, steps_per_epoch))
        else:
            source = "steps_per_epoch" if steps_per_epoch is not None else "counter.steps_per_epoch"
            if steps_per_epoch is not None:
                steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, minimum=1)
            if steps_per_epoch is not None and steps_per_epoch != counter.steps_per_epoch:
                raise ValueError(
                    f"steps_per_epoch={steps_per_epoch} disagrees with counter.steps_per_epoch="
                    f"{counter.steps_per_epoch}; give one of them"
                )
            epoch_length(loader, counter.steps_per_epoch, source=source)
        collate_format = _collate_format(loader)
        if collate_format is not None and collate_format != transform.format:
            raise ValueError(
                f"the transform's format {transform.format!r} differs from the loader's ResizeCollate format "
                f"{collate_format!r}; give one BatchFormat to both"
            )
        self.loader = loader
        self.transform = transform
        self.policy = transform.policy
        self.counter = counter
        self.scheduler = scheduler
        self.stepper: Stepper | None = None if scheduler is None else stepper_for(scheduler, counter)
        self.device = check_device(device)
        check_choice("resample_in", resample_in, RESAMPLE_SIDES)
        blocker = resample_blocker(loader)
        if resample_in == "workers" and blocker is not None:
            raise ValueError(f"resample_in='workers', but the workers cannot resample: {blocker}; pass 'auto'")
        if resample_in == "auto":
            resample_in = "workers" if self.device.type == "cpu" and blocker is None else "device"
        self.resample_in = resample_in
        self.prefetcher = DevicePrefetcher(
            stamped_loader(loader, counter, transform) if resample_in == "workers" else loader, self.device, ring=ring
        )
        # The latest iteration, if its caller still holds it; a new one closes it.
        self._run: weakref.ref[EpochRun] | None = None

    # ---------------------------------------------------------------------------- pass-through
    def __len__(self) -> int:
        return self.counter.steps_per_epoch

    # ------------------------------------------------------------------------------- iteration
    def __iter__(self) -> EpochRun:
        previous = self._running()
        if previous is not None:
            previous.close()  # one pass at a time: the previous one ends, its batch in hand done
        run = EpochRun(self)
        self._run = weakref.ref(run)
        return run

    def _running(self) -> EpochRun | None:
        return None if self._run is None else self._run()

    def _ran_out(self, index: int, remaining: int) -> str:
        message = (
            f"the loader ran out after {index} of {remaining} batches; steps_per_epoch="
            f"{self.counter.steps_per_epoch} must not exceed the batches the loader yields per epoch"
        )
        if _iterable_dataset(self.loader):
            return message + (
                " (len() of a DataLoader over an IterableDataset is an estimate: with workers, each ends with "
                "its own partial batch, or drops it under drop_last); pass steps_per_epoch=... explicitly"
            )
        if isinstance(self.loader, Iterator):
            return message + f" (the loader is a one-pass iterator, a {type(self.loader).__name__}: it yields once)"
        return message

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Return the progress: the counter's and the scheduler's state, and the policy's settings to check.

        Inside the loop, the batch in hand counts as done (save after its ``optimizer.step()``): the
        scheduler gets its ``after_batch`` hook now, not again later. The policy's settings
        are configuration, not state: they are saved only so that :meth:`load_state_dict` can refuse
        a run built differently.
        """
        run = self._running()
        if run is not None:
            run.finish()
        return {
            "counter": self.counter.state_dict(),
            "scheduler": self.scheduler.state_dict() if _has_state(self.scheduler) else None,
            "policy": None if self.policy is None else self.policy.state_dict(),
            "crop": None if self.transform.crop is None else self.transform.crop.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: restore the counter (as a new process, so max-size-first runs again) and the scheduler.

        Raises:
            ValueError: the keys are wrong, a value is out of range, or the state was saved under other
                settings (the policy's bounds, multiple, seed, side, interval, sizes, weights or ramp, the
                crop rule and its settings, or the steps per epoch): build the loader as the saved one was
                built. Nothing is loaded then. (A state saved before crops were saved has no ``"crop"``.)
        """
        if isinstance(state, dict) and "crop" not in state:
            state = {**state, "crop": None if self.transform.crop is None else self.transform.crop.state_dict()}
        check_state_keys("ResizeLoader", state, _STATE_KEYS)
        scheduler = self.scheduler if _has_state(self.scheduler) else None
        crop = self.transform.crop
        for name, component in (("scheduler", scheduler), ("policy", self.policy), ("crop", crop)):
            if (state[name] is None) != (component is None):
                raise ValueError(
                    f"the state {'has no' if state[name] is None else 'has a'} {name} but this loader "
                    f"{'has one' if component is not None else 'has none'}; build it as the saved one was built"
                )
        # Check everything before changing anything, so a bad state leaves nothing half-loaded
        # (the scheduler validates all of its state before it changes).
        copy.copy(self.counter).load_state_dict(state["counter"])
        if self.policy is not None:
            self.policy.load_state_dict(state["policy"])
        if crop is not None:
            crop.load_state_dict(state["crop"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        run = self._running()
        if run is not None:
            run.pending = False  # the loaded state's batches are all done
        if isinstance(self.stepper, Watched):
            self.stepper.forget()  # the scheduler moved by loading, not by a stray step
        self.counter.load_state_dict(state["counter"])


class EpochRun:
    """One iteration of a :class:`ResizeLoader`: the batches left in the counter's epoch.

    It reads the counter at its first batch, not when it is made: Lightning creates the iterator
    before it restores a checkpoint's state into the loader. :meth:`close` ends it early (``break``,
    an exception, a newer iteration): the batch in hand counts as done.
    """

    def __init__(self, loader: ResizeLoader) -> None:
        self.loader = loader
        self.batches: Any = None  # the prefetcher's pass, opened at the first batch
        self.index = 0
        self.remaining = 0
        self.pending = False  # a batch was delivered and has not had its after_batch hook yet
        self.closed = False

    def __iter__(self) -> EpochRun:
        return self

    def __next__(self) -> Any:
        if self.closed:
            if self.loader._running() is not self:
                raise RuntimeError(
                    "this iterator was closed: a newer iter() over the same ResizeLoader started a new pass; "
                    "iterate one pass at a time"
                )
            raise StopIteration
        loader, counter = self.loader, self.loader.counter
        try:
            if self.batches is None:
                loader.set_epoch(counter.epoch)
                self.remaining = counter.steps_per_epoch - counter.batch
                if loader.scheduler is not None:
                    check_length(loader.scheduler, self.remaining)
                self.batches = loader.prefetcher.open(parts=True)
            self.finish()
            if self.index == self.remaining:
                raise StopIteration
            batch = next(self.batches, None)
            if batch is None:
                raise RuntimeError(loader._ran_out(self.index, self.remaining))
            if loader.stepper is not None:
                loader.stepper.before_batch()
            parts = batch if isinstance(batch, Parts) else loader.transform.format.split(batch)
            resized = loader.transform.resize(
                **parts.fields,
                step=counter.absolute_step,
                global_step=counter.global_step,
                resampled=loader.resample_in == "workers",
            )
        except BaseException:
            self.close()
            raise
        counter.advance()
        self.index += 1
        self.pending = True
        return parts.join({field: getattr(resized, field) for field in parts.fields if field != "crops"})

    def finish(self) -> None:
        """The delivered batch's update is done: tell the scheduler, and end the epoch after its last batch."""
        if not self.pending:
            return
        self.pending = False
        stepper = self.loader.stepper
        if stepper is not None:
            stepper.after_batch()
            if self.loader.counter.batch == 0:
                stepper.after_epoch()

    def close(self) -> None:
        """End the iteration: the batch in hand counts as done, and the prefetcher's pass closes."""
        if self.closed:
            return
        self.closed = True
        try:
            self.finish()
        finally:
            if self.batches is not None:
                self.batches.close()

    def __del__(self) -> None:
        self.close()  # a loop left by `break` drops its iterator: the batch in hand is done, the workers stop


def wrap(
    loader: Any,
    lower: int | tuple[int, int] | None = None,
    upper: int | tuple[int, int] | None = None,
    *,
    device: str | torch.device | None = None,
    multiple: int = 16,
    max_first_steps: int = 5,
    seed: int = 0,
    side: str = "square",
    scheduler: Any = None,
    counter: StepCounter | None = None,
    steps_per_epoch: int | None = None,
    epoch_to_start: int = 0,
    format: BatchFormat | None = None,  # noqa: A002
    ring: bool | None = None,
    resample_in: str = "auto",
    interval: int = 1,
    sizes: Any = None,
    weights: Any = None,
    ramp: tuple[int, int] | None = None,
    ramp_epochs: tuple[int, int] | None = None,
    policy: SizePolicy | None = None,
    **transform_kwargs: Any,
) -> ResizeLoader:
    """Wrap ``loader`` for multi-scale training in one call.

    Builds a :class:`MultiScalePolicy` from ``lower``, ``upper``, ``multiple``, ``max_first_steps``,
    ``seed``, ``side`` and the schedule options (``interval``, ``sizes``, ``weights``, ``ramp``),
    or takes ``policy``; a :class:`BatchResize` with ``transform_kwargs`` (e.g.
    ``value_range=(0, 1), dtype=torch.float32``) and the :class:`ResizeLoader` around them.

    Args:
        loader: The DataLoader to wrap.
        lower: Smallest side length of the policy (a ``(start, end)`` pair for a ramp).
        upper: Largest side length of the policy (a ``(start, end)`` pair for a ramp).
        device: Where batches go; CUDA when available, else CPU.
        multiple: Every side is a multiple of this.
        max_first_steps: Steps of each process that use the largest size.
        seed: Seed of the size draw; share it across ranks.
        side: ``"square"``, ``"short"`` or ``"long"`` (see :class:`MultiScalePolicy`).
        scheduler: An lr scheduler to drive per batch (see :func:`fastresize.stepping.stepper_for`).
        counter: The step counter, e.g. one a counter-driven scheduler under Lightning also reads.
            Defaults to the scheduler's counter, else a new one.
        steps_per_epoch: Batches per epoch, for loaders without ``len()`` or over an ``IterableDataset``.
        epoch_to_start: The epoch this process starts at (a resumed run), for a new counter.
        format: Where the images and targets are and their layout; defaults to the format of the
            loader's :class:`ResizeCollate`, else ``BatchFormat()``.
        ring: Whether workers collate into the batch ring; ``None`` uses it where it applies.
        resample_in: Where images of different sizes are cropped and resized: ``"auto"``,
            ``"device"`` or ``"workers"`` (see :class:`ResizeLoader`).
        interval: Steps each size is held for (see :class:`MultiScalePolicy`).
        sizes: An explicit list of sizes (ints or ``(height, width)``) instead of ``lower``/``upper``.
        weights: One weight per entry of ``sizes``.
        ramp: ``(first, last)`` steps between which a ramp's bounds move.
        ramp_epochs: The same in epochs of this loader.
        policy: A size policy of your own (any :class:`~fastresize.policy.SizePolicy`), instead of
            the arguments above that build one.
        **transform_kwargs: Passed to :class:`BatchResize` (e.g. ``crop="center"``).

    Returns:
        The :class:`ResizeLoader`.

    Raises:
        ValueError: ``format`` differs from the loader's collate's, or ``epoch_to_start`` is given
            with an existing counter.
    """
    if format is not None and not isinstance(format, BatchFormat):
        raise TypeError(f"format must be a BatchFormat or None, got {format!r}")
    collate_format = _collate_format(loader)
    counter = _given_counter(counter, scheduler)
    if counter is None:
        counter = StepCounter(epoch_length(loader, steps_per_epoch), epoch_to_start)
    elif epoch_to_start != 0:
        raise ValueError(
            f"epoch_to_start={epoch_to_start} is for a new counter, but a counter was given "
            f"({counter!r}); build that counter with epoch_to_start instead"
        )
    if ramp is not None and ramp_epochs is not None:
        raise ValueError(f"give ramp={ramp!r} (steps) or ramp_epochs={ramp_epochs!r}, not both")
    if ramp_epochs is not None and not (
        isinstance(ramp_epochs, (tuple, list)) and len(ramp_epochs) == 2 and 0 <= ramp_epochs[0] <= ramp_epochs[1]
    ):
        raise ValueError(f"ramp_epochs must be (first, last) epochs with 0 <= first <= last, got {ramp_epochs!r}")
    if policy is not None:
        building = {"lower": lower, "upper": upper, "sizes": sizes, "weights": weights, "ramp": ramp,
                    "ramp_epochs": ramp_epochs}  # fmt: skip
        defaults = {"multiple": 16, "max_first_steps": 5, "seed": 0, "side": "square", "interval": 1}
        settings = {"multiple": multiple, "max_first_steps": max_first_steps, "seed": seed, "side": side,
                    "interval": interval}  # fmt: skip
        given = [name for name, value in building.items() if value is not None]
        given += [name for name, value in settings.items() if value != defaults[name]]
        if given:
            raise ValueError(
                f"policy= is a policy of its own; it excludes {', '.join(given)}, which build one: set them in the "
                "policy instead"
            )
    else:
        policy = MultiScalePolicy(
            lower,
            upper,
            multiple,
            max_first_steps,
            seed,
            side,
            interval=interval,
            sizes=sizes,
            weights=weights,
            ramp=ramp or ramp_epochs,
            steps_per_epoch=counter.steps_per_epoch if ramp_epochs is not None else None,
        )
    transform = BatchResize(policy=policy, format=format or collate_format or BatchFormat(), **transform_kwargs)
    return ResizeLoader(
        loader,
        transform,
        counter=counter,
        device=device,
        scheduler=scheduler,
        steps_per_epoch=steps_per_epoch,
        ring=ring,
        resample_in=resample_in,
    )
