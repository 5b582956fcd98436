"""Moving a loader's batches to the device, one batch ahead."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Generator
from typing import Any

import torch

from fastresize._batch import Parts
from fastresize._checks import check_device, check_loader
from fastresize.collate import ResizeCollate
from fastresize.ragged import RaggedImages
from fastresize.ring import BatchRing, Release, RingPass, ring_blocker, ring_loader


def _map_tensors(data: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor of a batch (tensors, ragged images, dicts, lists, tuples, named tuples)."""
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, RaggedImages):
        return data._like(fn(data.data))
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

    def record(tensor: torch.Tensor) -> torch.Tensor:
        tensor.record_stream(consumer)
        return tensor  # the walk rebuilds containers (ragged images) from what this returns

    _map_tensors(batch, record)


class PrefetchPass:
    """One pass over a prefetcher's loader: each batch copied to the device, one batch ahead.

    A batch from the ring comes with the function that releases its slot; the slot goes back once
    the batch's copy has finished (on CUDA, when the next batch is fetched, which the copy had the
    previous training step to finish in). :meth:`close` waits for the copies in flight, gives their
    slots back and ends the loader's pass; it runs when the pass ends, and when the prefetcher
    starts a new one.
    """

    def __init__(self, prefetcher: DevicePrefetcher, *, parts: bool = False) -> None:
        self.device = prefetcher.device
        self.parts = parts
        # (copy stream, consumer stream) on CUDA; the CPU runs the same path without streams.
        self.streams = (
            (torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device))  # type: ignore[no-untyped-call]
            if self.device.type == "cuda"
            else None
        )
        self.source: Generator[tuple[Any, Release | None], None, None] | RingPass | None = (
            ((batch, None) for batch in prefetcher.loader)
            if prefetcher.ring is None
            else RingPass(prefetcher.source, prefetcher.ring)
        )
        self.copying: list[tuple[Release, torch.cuda.Event]] = []
        self.upcoming: Any = _START  # the next batch, already on its way to the device
        self.failure: Exception | None = None  # raised where the loop asks for the batch that failed

    def __iter__(self) -> PrefetchPass:
        return self

    def __next__(self) -> Any:
        if self.source is None:
            raise StopIteration
        try:
            batch = self._fetch() if self.upcoming is _START else self.upcoming
            if batch is _END:
                raise StopIteration
            if self.streams is not None:
                _hand_over(batch, *self.streams)
            try:
                self.upcoming = self._fetch()
            except Exception as error:
                # The next batch failed (a worker raised): deliver this one first, as the DataLoader would.
                self.upcoming, self.failure = _START, error
            return batch.join() if isinstance(batch, Parts) and not self.parts else batch
        except BaseException:
            self.close()
            raise

    def _fetch(self) -> Any:
        if self.failure is not None:
            raise self.failure
        self._release()  # the copies started at the previous fetch had the wait for this batch to finish in
        raw, release = next(self.source, (_END, None))  # type: ignore[arg-type]
        if raw is _END:
            return _END
        try:
            return self._copy(raw, release)
        except BaseException:
            if release is not None:  # the slot goes back once no copy can still read it
                if self.streams is not None:
                    self.streams[0].synchronize()  # type: ignore[no-untyped-call]
                release()
            raise

    def _copy(self, raw: Any, release: Release | None) -> Any:
        """Start copying ``raw`` to the device; ``release`` (its slot's) is called once the copy is done."""
        if self.streams is None:
            # The CPU: the batch must own its memory when its images sit in a reused slot.
            batch = _map_tensors(raw, lambda t: t.to(self.device))
            if release is not None:
                batch.fields["images"] = _map_tensors(batch.fields["images"], torch.clone)
                release()
            return batch
        # On CUDA, page-locked memory lets the copy run asynchronously, on the side stream.
        with torch.cuda.stream(self.streams[0]):
            batch = _map_tensors(raw, lambda t: _pinned(t).to(self.device, non_blocking=True))
            if release is not None:
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(self.streams[0])
                self.copying.append((release, event))
        return batch

    def _release(self) -> None:
        for release, event in self.copying:
            event.synchronize()  # type: ignore[no-untyped-call]
            release()
        self.copying.clear()

    def close(self) -> None:
        """Wait for the copies in flight, give their slots back, and end the loader's pass."""
        source, self.source, self.upcoming = self.source, None, _END
        self._release()
        if source is not None:
            source.close()  # without persistent workers, this shuts the workers down now

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit, the modules may be gone
            self.close()


class PassThrough:
    """The wrapped ``loader``'s attributes that samplers, trainers and training loops look for."""

    loader: Any

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
        """Pass ``epoch`` to the wrapped loader's sampler, batch sampler and dataset (see :func:`set_epoch`)."""
        set_epoch(self.loader, epoch)


class DevicePrefetcher(PassThrough):
    """Moves every tensor of each batch of ``loader`` to ``device``, one batch ahead.

    Like timm's ``PrefetchLoader``: on CUDA, batch ``i + 1`` is copied from page-locked memory with
    ``non_blocking`` on a side stream while batch ``i`` is in use; the current stream waits for that
    copy before it gets the batch. On the CPU the same code path runs without streams.

    With a DataLoader whose ``collate_fn`` is a :class:`~fastresize.ResizeCollate`, the workers
    stack each batch's images into a ring of preallocated shared slots (see :mod:`fastresize.ring`)
    and hand over only the slot's index: no fresh shared memory per batch and, on CUDA, no pin copy
    (the slots are page-locked once). For this the prefetcher iterates a private copy of ``loader``
    with the same dataset, samplers and settings, and its own workers. What arrives is the same as
    without the ring: the same values, shapes, dtypes and order.

    One ``for`` loop is one pass of ``loader``. Leaving it early (``break``, an exception, closing
    the iterator) waits for the copies in flight and gives their slots back; starting a new pass
    closes the previous one first.

    Args:
        loader: The iterable of batches (a DataLoader, or any iterable of tensors and dicts, lists,
            tuples and named tuples of them).
        device: Where batches go; CUDA when available, else CPU.
        ring: Use the batch ring: ``None`` where it applies and helps (a DataLoader that batches
            with a ResizeCollate, with workers or to CUDA), ``True`` to insist (``ValueError`` where
            it cannot apply), ``False`` never.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = TensorDataset(torch.zeros(6, 3, 8, 8, dtype=torch.uint8), torch.arange(6))
        >>> prefetcher = DevicePrefetcher(DataLoader(data, batch_size=4, collate_fn=ResizeCollate()), "cpu")
        >>> [(tuple(images.shape), labels.tolist()) for images, labels in prefetcher]
        [((4, 3, 8, 8), [0, 1, 2, 3]), ((2, 3, 8, 8), [4, 5])]
    """

    def __init__(self, loader: Any, device: str | torch.device | None = None, *, ring: bool | None = None) -> None:
        check_loader(loader)
        if ring is not None and not isinstance(ring, bool):
            raise TypeError(f"ring must be True, False or None (where it applies), got {ring!r}")
        self.loader = loader
        self.device = check_device(device)
        if isinstance(getattr(loader, "collate_fn", None), ResizeCollate) and loader.batch_sampler is None:
            raise ValueError(
                "the DataLoader has batch_size=None, so its ResizeCollate would get one sample at a time "
                "instead of a list; set batch_size=... (an int) on the DataLoader"
            )
        blocker = ring_blocker(loader)
        if ring and blocker is not None:
            raise ValueError(f"ring=True, but the batch ring cannot serve this loader: {blocker}; pass ring=None")
        if ring is None:
            # With 0 workers on the CPU there is no hand-over to save, only a copy out of the slot to add.
            ring = blocker is None and (self.device.type == "cuda" or loader.num_workers > 0)
        self.ring: BatchRing | None = None
        self.source = loader  # what a pass iterates: the ring's own copy of the loader, where it applies
        if ring:
            self.source, self.ring = ring_loader(loader, pin=self.device.type == "cuda")
        # The pass in progress, if any; each pass belongs to its caller, who may drop it mid-way.
        self._pass: weakref.ref[PrefetchPass] | None = None

    # ---------------------------------------------------------------------------- pass-through
    def __len__(self) -> int:
        return len(self.loader)

    # ------------------------------------------------------------------------------- iteration
    def __iter__(self) -> PrefetchPass:
        return self.open()

    def open(self, *, parts: bool = False) -> PrefetchPass:
        """Start a pass, closing the previous one first: its slots go back before the next pass starts.

        Args:
            parts: Yield the ring's batches taken apart (:class:`~fastresize._batch.Parts`), for a
                consumer that puts them together itself, as :class:`~fastresize.ResizeLoader` does.
        """
        previous = self._pass() if self._pass is not None else None
        if previous is not None:
            previous.close()
        current = PrefetchPass(self, parts=parts)
        self._pass = weakref.ref(current)
        return current


_START, _END = object(), object()


def set_epoch(loader: Any, epoch: int) -> None:
    """Pass ``epoch`` to ``loader``'s sampler (e.g. a ``DistributedSampler``), its batch sampler (e.g. one
    that buckets by aspect ratio), the batch sampler's sampler and its dataset, where they take it."""
    targets = [
        getattr(loader, "sampler", None),
        getattr(loader, "batch_sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
        getattr(loader, "dataset", None),
    ]
    done: list[Any] = []
    for target in targets:
        if target is not None and hasattr(target, "set_epoch") and not any(target is d for d in done):
            target.set_epoch(epoch)
            done.append(target)


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in page-locked memory, so that its copy to the GPU is asynchronous.

    Only dense CPU tensors can be pinned; a tensor already on a GPU (a dataset held in GPU memory)
    or a sparse one goes as it is.
    """
    if tensor.device.type != "cpu" or tensor.layout != torch.strided or tensor.is_pinned():
        return tensor
    return tensor.pin_memory()
