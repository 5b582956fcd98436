"""Moving a loader's batches to the device, one batch ahead."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import Any

import torch

from fastresize._checks import check_device, check_loader
from fastresize.collate import ResizeCollate
from fastresize.ring import BatchRing, SlotHandle, ring_blocker, ring_loader


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


class _Copies:
    """The slots whose copies to the device may still run; each goes back to the ring once its copy is done."""

    def __init__(self, ring: BatchRing, stream: torch.cuda.Stream | None) -> None:
        self.ring = ring
        self.stream = stream
        self.running: list[tuple[SlotHandle, torch.cuda.Event | None]] = []

    def copy(self, handle: SlotHandle, device: torch.device) -> torch.Tensor:
        """Start copying ``handle``'s images to ``device``; on the CPU the copy is done on return."""
        if self.stream is None:
            try:
                # The slot is reused: the batch must own its memory.
                return self.ring.open(handle).clone()
            finally:
                self.ring.release(handle)
        self.running.append((handle, None))
        moved = self.ring.open(handle).to(device, non_blocking=True)
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(self.stream)
        self.running[-1] = (handle, event)
        return moved

    def release(self) -> None:
        """Wait for the running copies and give their slots back."""
        for handle, event in self.running:
            if event is not None:
                event.synchronize()  # type: ignore[no-untyped-call]
            elif self.stream is not None:
                self.stream.synchronize()  # type: ignore[no-untyped-call]
            self.ring.release(handle)
        self.running.clear()


class DevicePrefetcher:
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
        self._source = loader
        if ring:
            self._source, self.ring = ring_loader(loader, pin=self.device.type == "cuda")
        self._format = loader.collate_fn.format if self.ring is not None else None
        self._running: weakref.ref[Generator[Any, None, None]] | None = None

    # ---------------------------------------------------------------------------- pass-through
    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset(self) -> Any:
        """The loader's dataset."""
        return self.loader.dataset

    @property
    def sampler(self) -> Any:
        """The loader's sampler."""
        return self.loader.sampler

    @property
    def batch_sampler(self) -> Any:
        """The loader's batch sampler."""
        return self.loader.batch_sampler

    def set_epoch(self, epoch: int) -> None:
        """Pass ``epoch`` to the sampler (e.g. a ``DistributedSampler``), the batch sampler (e.g. one that
        buckets by aspect ratio), the batch sampler's sampler and the dataset, where they take it."""
        targets = [
            getattr(self.loader, "sampler", None),
            getattr(self.loader, "batch_sampler", None),
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
        previous = self._running() if self._running is not None else None
        if previous is not None:
            previous.close()  # one pass at a time: its slots go back before the next pass starts
        run = self._run()
        self._running = weakref.ref(run)
        return run

    def _run(self) -> Generator[Any, None, None]:
        # (copy stream, consumer stream) on CUDA; the CPU runs the same path without streams.
        streams = (
            (torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device))  # type: ignore[no-untyped-call]
            if self.device.type == "cuda"
            else None
        )
        copies = None if self.ring is None else _Copies(self.ring, None if streams is None else streams[0])
        source = iter(self._source)
        try:
            upcoming = self._fetch(source, streams, copies)
            while upcoming is not _END:
                batch = upcoming
                if streams is not None:
                    _hand_over(batch, *streams)
                try:
                    upcoming = self._fetch(source, streams, copies)
                except Exception:
                    # The next batch failed (a worker raised): deliver this one first, then raise
                    # where the loop asks for the failed one, as the DataLoader itself would.
                    yield batch
                    raise
                yield batch
        finally:
            if copies is not None:
                copies.release()
                if not getattr(self._source, "persistent_workers", True):
                    # Now, not when the last reference goes: a traceback the caller keeps holds the
                    # iterator, and its workers would go on writing to the ring beside the next pass's.
                    getattr(source, "_shutdown_workers", lambda: None)()
            del source  # without persistent workers, this shuts the workers down now

    def _fetch(self, source: Iterator[Any], streams: tuple[Any, Any] | None, copies: _Copies | None) -> Any:
        try:
            raw = next(source)
        except StopIteration:
            return _END
        handle = None
        if copies is not None:
            # The copies started at the previous fetch had the wait for this batch to finish in.
            copies.release()
            images = self._format.get(raw)["images"]  # type: ignore[union-attr]
            if isinstance(images, SlotHandle):
                handle = images
            else:
                copies.ring.counts["plain"] += 1
        # On CUDA, page-locked memory lets the copy run asynchronously, on the side stream.
        with contextlib.nullcontext() if streams is None else torch.cuda.stream(streams[0]):
            if streams is None:
                batch = _map_tensors(raw, lambda t: t.to(self.device))
            else:
                batch = _map_tensors(raw, lambda t: _pinned(t).to(self.device, non_blocking=True))
            if handle is not None and copies is not None:
                batch = self._format.put(batch, {"images": copies.copy(handle, self.device)})  # type: ignore[union-attr]
        return batch


_END = object()


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in page-locked memory, so that its copy to the GPU is asynchronous.

    Only dense CPU tensors can be pinned; a tensor already on a GPU (a dataset held in GPU memory)
    or a sparse one goes as it is.
    """
    if tensor.device.type != "cpu" or tensor.layout != torch.strided or tensor.is_pinned():
        return tensor
    return tensor.pin_memory()
