"""Wrapping an existing DataLoader: a worker-side collate and a device-side loader."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, default_collate

from fastresize._batch import LAYOUTS, BatchFields, Key
from fastresize._checks import check_choice, check_device, check_int, check_state_keys
from fastresize.counter import StepCounter
from fastresize.policy import MultiScalePolicy
from fastresize.scheduler import CosineAnnealingWarmbootingLR
from fastresize.transform import BatchResize


class ResizeCollate:
    """Collate function for DataLoader workers: a compact, contiguous batch, ready for the device.

    It wraps the user's collate function and runs in the workers, so it does no CUDA work. uint8
    images stay uint8 (4x fewer bytes to move than float32); the device converts and resizes.

    * The images are ``batch["image"]`` of a dict batch and ``batch[0]`` of a tuple/list batch
      (``image_key`` says otherwise), or the whole batch when it is a tensor.
    * ``layout="NHWC"`` turns NHWC images (as decoded by PIL or NumPy) into contiguous NCHW.
    * Boxes and keypoints (``boxes_key``, ``keypoints_key``) hold a different count per image, so
      they are kept as a list of per-image tensors instead of being stacked; masks (``mask_key``)
      are stacked and made contiguous. Every other entry passes through the wrapped collate as is.

    Args:
        collate_fn: The collate function to wrap; ``torch.utils.data.default_collate`` when ``None``.
            It must be picklable for the ``spawn`` start method (a module-level function).
        layout: The layout of the images the samples hold, ``"NCHW"`` or ``"NHWC"``.
        image_key: Where the images are in a sample (str key of a dict, int index of a tuple).
        mask_key: Where the masks are, if any.
        boxes_key: Where the boxes are, if any.
        keypoints_key: Where the keypoints are, if any.

    Example:
        >>> collate = ResizeCollate()
        >>> samples = [(torch.zeros(3, 8, 8, dtype=torch.uint8), 1), (torch.ones(3, 8, 8, dtype=torch.uint8), 0)]
        >>> images, labels = collate(samples)
        >>> images.shape, images.dtype, labels.tolist()
        (torch.Size([2, 3, 8, 8]), torch.uint8, [1, 0])
    """

    def __init__(
        self,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        *,
        layout: str = "NCHW",
        image_key: Key | None = None,
        mask_key: Key | None = None,
        boxes_key: Key | None = None,
        keypoints_key: Key | None = None,
    ) -> None:
        if collate_fn is not None and not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable or None, got {collate_fn!r}")
        self.collate_fn = collate_fn if collate_fn is not None else default_collate
        self.layout = check_choice("layout", layout, LAYOUTS)
        self.fields = BatchFields(image_key, mask_key, boxes_key, keypoints_key)

    def __call__(self, samples: list[Any]) -> Any:
        """Collate ``samples`` and hand over a contiguous NCHW batch."""
        if not samples:
            raise ValueError("ResizeCollate got an empty list of samples")
        # Boxes and keypoints differ in count per image: keep them per image, out of the collate.
        ragged = [f for f in ("boxes", "keypoints") if self.fields.keys[f] is not None]
        lists = {field: [self.fields.get(sample)[field] for sample in samples] for field in ragged}
        if ragged:
            # A stand-in that every collate function stacks; the lists replace it afterwards.
            samples = [self.fields.put(sample, dict.fromkeys(ragged, 0)) for sample in samples]
        try:
            batch = self.collate_fn(samples)
        except RuntimeError as error:
            shapes = sorted({tuple(getattr(self.fields.get(s)["images"], "shape", ())) for s in samples})
            if len(shapes) > 1:
                raise ValueError(
                    f"the images of one batch must share a shape to be stacked, got shapes {shapes}; "
                    "crop or resize them to one size in the dataset (the device resizes afterwards)"
                ) from error
            raise ValueError(
                f"the wrapped collate_fn could not collate the samples ({error}); an entry with a different "
                "count per sample (boxes, keypoints) must be declared with boxes_key=... or keypoints_key=..."
            ) from error
        values = self.fields.get(batch)
        images = values["images"]
        if not isinstance(images, torch.Tensor):
            raise TypeError(
                f"the images must collate into a torch.Tensor, got {type(images).__name__}; "
                "have the dataset return tensors (e.g. torch.from_numpy or torchvision's pil_to_tensor)"
            )
        if images.ndim != 4:
            raise ValueError(f"the images must collate into a 4-D batch, got shape {tuple(images.shape)}")
        if self.layout == "NHWC":
            images = images.permute(0, 3, 1, 2)
        values["images"] = images.contiguous()
        if "masks" in values and isinstance(values["masks"], torch.Tensor):
            values["masks"] = values["masks"].contiguous()
        values.update(lists)
        return self.fields.put(batch, values)


def _map_tensors(data: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor of a batch (tensors, dicts, lists, tuples, named tuples)."""
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, dict):
        return {key: _map_tensors(value, fn) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        items = [_map_tensors(value, fn) for value in data]
        return type(data)(*items) if hasattr(data, "_fields") else type(data)(items)
    return data


def _hand_over(batch: Any, copy: torch.cuda.Stream, consumer: torch.cuda.Stream) -> None:
    """Make ``consumer`` wait for ``batch``'s copy on ``copy``.

    The batch's memory was allocated on the copy stream: recording the consumer keeps the caching
    allocator from reusing it while the consumer may still read it.
    """
    consumer.wait_stream(copy)
    _map_tensors(batch, lambda t: t.record_stream(consumer))


class ResizeLoader:
    """Wraps a DataLoader: moves each batch to the device, resizes it there, and keeps time.

    For every batch it (1) applies the scheduler's per-batch lr (``step_batch()``), (2) waits for
    the batch's copy to the device and starts the next batch's copy, (3) resizes the batch with
    ``transform`` at the counter's current step, (4) advances the counter, and yields the batch.
    After the epoch's last batch it calls the scheduler's ``step()``. That is the scheduler's
    original call order, so the training loop needs no step bookkeeping of its own.

    On CUDA, batches are pinned and copied with ``non_blocking`` on a side stream, one batch ahead,
    so the copy overlaps the training step. On CPU the same code path runs without streams.

    One iteration is one epoch of ``steps_per_epoch`` batches. If the previous iteration was left
    early (``break``), the next one yields only the batches left in the counter's epoch, so the
    counter and the scheduler stay on epoch boundaries. The sampler's ``set_epoch`` is called with
    the counter's epoch at the start of each iteration (``DistributedSampler`` shuffles by it).

    Args:
        loader: The DataLoader to wrap (any iterable of batches works; ``len`` and the sampler
            attributes are passed through when it has them).
        transform: The :class:`BatchResize` to apply on the device.
        counter: The step counter. Defaults to the transform's counter (multi-scale) or a new one.
            The transform and a counter-driven scheduler must share it: one owner of time.
        device: Where batches go; CUDA when available, else CPU.
        scheduler: A :class:`CosineAnnealingWarmbootingLR` to drive. Its ``batchs`` must equal
            ``steps_per_epoch`` (else ``ValueError``), since its warmup counts batches.
        steps_per_epoch: Batches per epoch. Needed when ``len(loader)`` is unknown (an
            ``IterableDataset``); otherwise it must equal ``len(loader)``.

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
        counter: StepCounter | None = None,
        device: str | torch.device | None = None,
        scheduler: CosineAnnealingWarmbootingLR | None = None,
        steps_per_epoch: int | None = None,
    ) -> None:
        if not hasattr(loader, "__iter__"):
            raise TypeError(f"loader must be an iterable of batches (a DataLoader), got {type(loader).__name__}")
        if not isinstance(transform, BatchResize):
            raise TypeError(f"transform must be a BatchResize, got {type(transform).__name__}")
        if counter is not None and not isinstance(counter, StepCounter):
            raise TypeError(f"counter must be a StepCounter or None, got {type(counter).__name__}")
        if scheduler is not None and not isinstance(scheduler, CosineAnnealingWarmbootingLR):
            raise TypeError(f"scheduler must be a CosineAnnealingWarmbootingLR or None, got {type(scheduler).__name__}")
        self.loader = loader
        self.transform = transform
        self.scheduler = scheduler
        self.device = check_device(device)
        self.steps_per_epoch = self._resolve_steps(loader, steps_per_epoch, counter or transform.counter)
        self.counter = self._resolve_counter(counter)
        if scheduler is not None and scheduler.batchs not in (0, self.steps_per_epoch):
            raise ValueError(
                f"the scheduler's batchs={scheduler.batchs} disagrees with the loader's "
                f"{self.steps_per_epoch} batches per epoch; build the scheduler with batchs=len(loader)"
            )

    @staticmethod
    def _resolve_steps(loader: Any, steps_per_epoch: int | None, counter: StepCounter | None) -> int:
        try:
            length: int | None = len(loader)
        except TypeError:
            length = None
        if steps_per_epoch is None:
            if counter is not None:
                steps_per_epoch = counter.steps_per_epoch
            elif length is None:
                dataset = getattr(loader, "dataset", None)
                kind = "an IterableDataset" if isinstance(dataset, IterableDataset) else "this loader"
                raise ValueError(f"{kind} has no len(); pass steps_per_epoch=... (batches per epoch)")
            else:
                steps_per_epoch = length
        steps = check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        if length is not None and length != steps:
            source = (
                "steps_per_epoch" if counter is None or steps != counter.steps_per_epoch else "counter.steps_per_epoch"
            )
            raise ValueError(f"{source}={steps} disagrees with len(loader)={length}")
        return steps

    def _resolve_counter(self, counter: StepCounter | None) -> StepCounter:
        owners = [c for c in (counter, self.transform.counter, getattr(self.scheduler, "counter", None)) if c]
        if any(c is not owners[0] for c in owners):
            raise ValueError(
                "the loader, the transform and the scheduler must share one StepCounter; "
                "pass the same counter to each (or let the loader take the transform's)"
            )
        resolved = owners[0] if owners else StepCounter(self.steps_per_epoch)
        if resolved.steps_per_epoch != self.steps_per_epoch:
            raise ValueError(
                f"counter.steps_per_epoch={resolved.steps_per_epoch} disagrees with the loader's "
                f"{self.steps_per_epoch} batches per epoch"
            )
        return resolved

    # ---------------------------------------------------------------------------- pass-through
    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def dataset(self) -> Any:
        """The wrapped loader's dataset."""
        return self.loader.dataset

    @property
    def sampler(self) -> Any:
        """The wrapped loader's sampler."""
        return self.loader.sampler

    @property
    def batch_sampler(self) -> Any:
        """The wrapped loader's batch sampler."""
        return self.loader.batch_sampler

    def set_epoch(self, epoch: int) -> None:
        """Pass ``epoch`` to the sampler (e.g. a ``DistributedSampler``) and the dataset, where they take it."""
        targets = [
            getattr(self.loader, "sampler", None),
            getattr(getattr(self.loader, "batch_sampler", None), "sampler", None),
            getattr(self.loader, "dataset", None),
        ]
        done: list[Any] = []
        for target in targets:
            if target is not None and hasattr(target, "set_epoch") and not any(target is d for d in done):
                target.set_epoch(epoch)
                done.append(target)

    # ------------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Any]:
        self.set_epoch(self.counter.epoch)
        remaining = self.steps_per_epoch - self.counter.batch
        # (copy stream, consumer stream) on CUDA; CPU runs the same path without streams.
        streams = (
            (torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device))  # type: ignore[no-untyped-call]
            if self.device.type == "cuda"
            else None
        )
        source = iter(self.loader)

        def fetch() -> Any:
            try:
                raw = next(source)
            except StopIteration:
                return None
            if streams is None:
                return _map_tensors(raw, lambda t: t.to(self.device))
            # Page-locked memory lets the copy run asynchronously, on the side stream.
            with torch.cuda.stream(streams[0]):
                return _map_tensors(
                    raw, lambda t: (t if t.is_pinned() else t.pin_memory()).to(self.device, non_blocking=True)
                )

        upcoming = fetch()
        epoch_delivered = False
        try:
            for index in range(remaining):
                if upcoming is None:
                    raise RuntimeError(
                        f"the loader ran out after {index} of {remaining} batches; steps_per_epoch="
                        f"{self.steps_per_epoch} must not exceed the batches the loader yields per epoch"
                    )
                batch = upcoming
                if streams is not None:
                    _hand_over(batch, *streams)
                upcoming = fetch() if index + 1 < remaining else None
                if self.scheduler is not None:
                    self.scheduler.step_batch()
                batch = self.transform(batch)
                self.counter.advance()
                epoch_delivered = index + 1 == remaining
                yield batch
        finally:
            # Also when the loop leaves right after the epoch's last batch (break, return): the
            # epoch is complete, so the scheduler must see its end.
            if epoch_delivered and self.scheduler is not None:
                self.scheduler.step()

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Return the counter's, the scheduler's and the policy's state, nested."""
        policy = self.transform.policy
        return {
            "counter": self.counter.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "policy": None if policy is None else policy.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: restore the counter (as a new run, so max-size-first runs again), scheduler and policy."""
        check_state_keys("ResizeLoader", state, ("counter", "scheduler", "policy"))
        for name, component in (
            ("scheduler", self.scheduler),
            ("policy", self.transform.policy),
        ):
            if (state[name] is None) != (component is None):
                raise ValueError(
                    f"the state {'has no' if state[name] is None else 'has a'} {name} but this loader "
                    f"{'has one' if component is not None else 'has none'}; build it as the saved one was built"
                )
        # Validate the counter's and the policy's parts on throwaway copies first, so that a bad
        # state leaves nothing half-loaded (the scheduler validates everything before it changes).
        StepCounter(self.counter.steps_per_epoch).load_state_dict(state["counter"])
        if self.transform.policy is not None:
            MultiScalePolicy(1, 1, multiple=1).load_state_dict(state["policy"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.counter.load_state_dict(state["counter"])
        if self.transform.policy is not None:
            self.transform.policy.load_state_dict(state["policy"])


def wrap(
    loader: Any,
    lower: int,
    upper: int,
    *,
    device: str | torch.device | None = None,
    multiple: int = 16,
    max_first_steps: int = 5,
    seed: int = 0,
    side: str = "square",
    scheduler: CosineAnnealingWarmbootingLR | None = None,
    steps_per_epoch: int | None = None,
    epoch_to_start: int = 0,
    **transform_kwargs: Any,
) -> ResizeLoader:
    """Wrap ``loader`` for multi-scale training in one call.

    Builds a :class:`MultiScalePolicy` from ``lower``, ``upper``, ``multiple``, ``max_first_steps``,
    ``seed`` and ``side``, a :class:`StepCounter` (shared with a counter-driven ``scheduler``), a
    :class:`BatchResize` with ``transform_kwargs`` (e.g. ``value_range=(0, 1), dtype=torch.float32``)
    and the :class:`ResizeLoader` around them.

    Args:
        loader: The DataLoader to wrap.
        lower: Smallest side length of the policy.
        upper: Largest side length of the policy.
        device: Where batches go; CUDA when available, else CPU.
        multiple: Every side is a multiple of this.
        max_first_steps: Steps of each process that use the largest size.
        seed: Seed of the size draw; share it across ranks.
        side: ``"square"``, ``"short"`` or ``"long"`` (see :class:`MultiScalePolicy`).
        scheduler: A :class:`CosineAnnealingWarmbootingLR` to drive.
        steps_per_epoch: Batches per epoch, for loaders without ``len()``.
        epoch_to_start: The epoch this process starts at (a resumed run).
        **transform_kwargs: Passed to :class:`BatchResize`.

    Returns:
        The :class:`ResizeLoader`.
    """
    policy = MultiScalePolicy(lower, upper, multiple, max_first_steps, seed, side)
    counter = getattr(scheduler, "counter", None)
    if counter is None:
        steps = ResizeLoader._resolve_steps(loader, steps_per_epoch, None)
        counter = StepCounter(steps, epoch_to_start)
    transform = BatchResize(policy=policy, counter=counter, **transform_kwargs)
    return ResizeLoader(loader, transform, counter, device, scheduler, steps_per_epoch)
