"""The batch ring: DataLoader workers stack each batch's images into reusable shared, page-locked slots.

Without the ring, every batch costs a fresh shared-memory segment: the worker stacks the images into
new pages, the main process maps them, touches them page by page and, for CUDA, copies them once more
into pinned memory before the copy to the device. With the ring, each worker stacks the images into
one of its own preallocated slots and hands over only a small :class:`SlotHandle`; the main process
copies the images to the device straight from the slot (page-locked once, on CUDA) and hands the slot
back when that copy has finished.

When the ring applies: the loader is a ``torch.utils.data.DataLoader`` that batches (``batch_size``
is not ``None``) with a :class:`~fastresize.ResizeCollate` around torch's default collate as its
``collate_fn`` (:func:`ring_blocker` says why not otherwise). ``DevicePrefetcher(ring=None)``, the
default, then uses it when the batches go to CUDA or come from worker processes: with 0 workers on
the CPU there is no hand-over to save, only a copy out of the slot to add. Within a loader, a batch
takes a slot when its images fit a free slot of its worker. Slots are sized in bytes by each
worker's first batch, for ``batch_size`` images: exactly for images of one size (a smaller last
batch uses the slot's start), with :data:`RAGGED_HEADROOM` for a full ragged batch (images of
different sizes, whose bytes vary from batch to batch; a partial one makes no slot). Any other
batch (larger than the slots, or no free slot) takes the plain path, so what arrives is the same
either way.

How the slots are shared: each worker owns ``depth`` slots (``prefetch_factor + 2``: the DataLoader
keeps at most ``prefetch_factor`` batches outstanding per worker, and the main process holds at most
two whose copies may still run). A worker creates a slot on first use and sends its buffer along
until the main process has taken it over; later workers (a new epoch without ``persistent_workers``)
inherit the main process's buffers, so slots are created once. A shared flag per slot marks it busy
from the worker's write until the main process's copy finished; a worker that finds no free slot
takes the plain path instead of waiting, so nothing can hang. The flags are cleared when an epoch
draws its first batch: the DataLoader has then finished or discarded everything the previous epoch
left outstanding (``persistent_workers`` after a ``break``), and the main process holds no slot.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, get_worker_info

from fastresize._batch import Parts
from fastresize.collate import SHM_ADVICE, ResizeCollate, shm_error
from fastresize.ragged import RaggedImages

RAGGED_HEADROOM = 1.5
"""A slot made by a full ragged batch holds this many times that batch's bytes."""

Release = Callable[[], None]


class SlotHandle:
    """What a worker hands over in place of a batch's images: which slot holds them, and how to read it.

    Attributes:
        worker: The worker's id (0 for the main process).
        slot: The slot's index among the worker's slots.
        shape: The images' shape; for a ragged batch, ``(elements,)`` of its packed data.
        dtype: The images' dtype.
        ragged: For a ragged batch, its ``(table, channels, layout)``; else ``None``.
        buffer: The slot's shared buffer, sent along until the main process has taken it over.
    """

    __slots__ = ("buffer", "dtype", "ragged", "shape", "slot", "worker")

    def __init__(
        self,
        worker: int,
        slot: int,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        buffer: torch.Tensor | None,
        ragged: tuple[torch.Tensor, int, str] | None = None,
    ) -> None:
        self.worker, self.slot, self.shape, self.dtype, self.buffer = worker, slot, shape, dtype, buffer
        self.ragged = ragged

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.worker, self.slot, self.shape, self.dtype, self.buffer, self.ragged)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.worker, self.slot, self.shape, self.dtype, self.buffer, self.ragged = state

    def __repr__(self) -> str:
        kind = ", ragged" if self.ragged is not None else ""
        return f"SlotHandle(worker={self.worker}, slot={self.slot}, shape={self.shape}, dtype={self.dtype}{kind})"


def _unregister(registered: dict[int, torch.Tensor], owner: int) -> None:
    if os.getpid() != owner:
        return  # a forked worker's copy of the ring: the registration is the main process's
    cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
    for pointer in registered:
        cudart.cudaHostUnregister(pointer)
    registered.clear()


class BatchRing:
    """The slots of one loader: ``depth`` per worker, their busy flags, and the main process's view.

    Built by :class:`~fastresize.DevicePrefetcher` (through :func:`ring_loader`) in the main process;
    the workers get it inside their ``collate_fn`` (inherited with ``fork``, pickled with ``spawn``:
    the flags and the slot buffers are shared memory either way).

    Args:
        workers: The DataLoader's ``num_workers`` (0: the main process collates).
        depth: Slots per worker.
        batch_size: Images a slot is sized for (the first batch's count when larger or unknown).
        pin: Page-lock each slot once in the main process (for CUDA copies).

    Attributes:
        counts: How many batches the main process received through a slot (``"ring"``) and by the
            plain path (``"plain"``), over the ring's life.
    """

    def __init__(self, workers: int, depth: int, batch_size: int = 0, *, pin: bool = False) -> None:
        shape = (max(workers, 1), depth)
        self.batch_size = batch_size
        # 1: a worker wrote the slot and the main process has not finished copying from it.
        self.busy = torch.zeros(shape, dtype=torch.int32).share_memory_()  # type: ignore[no-untyped-call]
        # 1: the main process holds the slot's buffer, so the worker stops sending it.
        self.held = torch.zeros(shape, dtype=torch.int32).share_memory_()  # type: ignore[no-untyped-call]
        self.buffers: list[list[torch.Tensor | None]] = [[None] * depth for _ in range(shape[0])]
        self.pin = pin
        self.counts = {"ring": 0, "plain": 0}
        self._registered: dict[int, torch.Tensor] = {}
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def depth(self) -> int:
        """Slots per worker."""
        return len(self.buffers[0])

    # --------------------------------------------------------------------------- worker side
    def take(self, nbytes: int, count: int, ragged: bool = False) -> tuple[int, int, torch.Tensor] | None:
        """Reserve a free slot of this worker for ``nbytes`` of ``count`` images.

        Returns:
            ``(worker, slot, buffer)``, or ``None`` (the plain path) when no slot is free and large enough.

        Raises:
            RuntimeError: a new slot could not be allocated in shared memory (``/dev/shm`` is full).
        """
        if nbytes <= 0:
            return None
        info = get_worker_info()
        worker = 0 if info is None else info.id
        buffers = self.buffers[worker]
        for slot, buffer in enumerate(buffers):
            if buffer is None:
                if ragged and count < self.batch_size:
                    return None  # a partial ragged batch says little of a full one's bytes: no slot from it
                # Sized once, for a full batch: a smaller batch uses the slot's start.
                capacity = math.ceil(nbytes * RAGGED_HEADROOM) if ragged else nbytes * self.batch_size // count
                buffer = buffers[slot] = self._allocate(max(capacity, nbytes))
            elif self.busy[worker, slot].item() or buffer.numel() < nbytes:
                continue
            self.busy[worker, slot] = 1
            return worker, slot, buffer
        return None

    @staticmethod
    def _allocate(nbytes: int) -> torch.Tensor:
        try:
            buffer: torch.Tensor = torch.empty(nbytes, dtype=torch.uint8).share_memory_()  # type: ignore[no-untyped-call]
            return buffer
        except (RuntimeError, OSError) as error:
            if shm_error(error):
                message = f"the batch ring could not allocate a slot of {nbytes} bytes: {SHM_ADVICE}"
                raise RuntimeError(message) from error
            raise

    def handle(self, worker: int, slot: int, images: torch.Tensor | RaggedImages) -> SlotHandle:
        """The handle that stands for ``images``, which were put into ``slot`` of ``worker``."""
        sent = None if self.held[worker, slot].item() else self.buffers[worker][slot]
        if isinstance(images, RaggedImages):
            ragged = (images.table, images.channels, images.layout)
            return SlotHandle(worker, slot, (images.data.numel(),), images.dtype, sent, ragged)
        return SlotHandle(worker, slot, tuple(images.shape), images.dtype, sent)

    def release(self, handle: SlotHandle) -> None:
        """Hand ``handle``'s slot back: its images have been copied (or were never used)."""
        self.free(handle.worker, handle.slot)

    def free(self, worker: int, slot: int) -> None:
        """Mark ``slot`` of ``worker`` free."""
        self.busy[worker, slot] = 0

    def reset(self) -> None:
        """Mark every slot free; only when no batch written to the ring can still be received."""
        self.busy.zero_()

    # ----------------------------------------------------------------------------- main side
    def open(self, handle: SlotHandle) -> torch.Tensor | RaggedImages:
        """Return the images ``handle`` points to: a view of the slot, valid until :meth:`release`."""
        if handle.buffer is not None:
            self._hold(handle.worker, handle.slot, handle.buffer)
        buffer = self.buffers[handle.worker][handle.slot]
        if buffer is None:
            raise RuntimeError(
                f"{handle!r} points to a slot whose buffer never reached the main process; "
                "report this as a bug, and pass ring=False to work around it"
            )
        self.counts["ring"] += 1
        view = buffer[: math.prod(handle.shape) * handle.dtype.itemsize].view(handle.dtype).view(handle.shape)
        return view if handle.ragged is None else RaggedImages(view, *handle.ragged)

    def _hold(self, worker: int, slot: int, buffer: torch.Tensor) -> None:
        old = self.buffers[worker][slot]
        if old is not None and self._registered.pop(old.data_ptr(), None) is not None:
            torch.cuda.cudart().cudaHostUnregister(old.data_ptr())  # type: ignore[no-untyped-call]
        self.buffers[worker][slot] = buffer
        if self.pin:
            self._page_lock(buffer)
        self.held[worker, slot] = 1

    def _page_lock(self, buffer: torch.Tensor) -> None:
        # The buffer is shared memory, so it cannot come from the pinned allocator: register it
        # with CUDA instead (as torch's distributed checkpoint stager does), once, so that copies
        # from it run asynchronously. 1 is cudaHostRegisterPortable: pinned for every context.
        pointer, nbytes = buffer.data_ptr(), buffer.untyped_storage().nbytes()
        error = int(torch.cuda.cudart().cudaHostRegister(pointer, nbytes, 1))  # type: ignore[no-untyped-call]
        if error != 0:
            warnings.warn(
                f"the batch ring could not page-lock a slot of {nbytes} bytes (cudaError {error}); copies "
                "from it will not overlap the training step. Check `ulimit -l`, or pass ring=False",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        self._registered[pointer] = buffer
        if self._finalizer is None:
            # Unregister before the buffers are unmapped; at interpreter exit the OS does it.
            self._finalizer = weakref.finalize(self, _unregister, self._registered, os.getpid())
            self._finalizer.atexit = False

    def close(self) -> None:
        """Unregister the page-locked slots (the ring stays usable, unpinned)."""
        if self._registered:
            _unregister(self._registered, os.getpid())
        self.pin = False

    def __getstate__(self) -> dict[str, Any]:
        # Workers need the shared parts only; page-locking is the main process's.
        state = dict(self.__dict__)
        state.update(pin=False, counts={"ring": 0, "plain": 0}, _registered={}, _finalizer=None)
        return state


class RingCollate:
    """The ``collate_fn`` of a ring loader: a :class:`~fastresize.ResizeCollate` whose images go into a slot.

    The collate puts the images straight into a free slot of this worker, and a :class:`SlotHandle`
    takes their place in the :class:`~fastresize._batch.Parts` handed over. A batch that finds no
    slot is handed over as the collate made it.

    Args:
        collate: The DataLoader's :class:`~fastresize.ResizeCollate`.
        ring: The ring to put the images into.
    """

    def __init__(self, collate: ResizeCollate, ring: BatchRing) -> None:
        self.collate = collate
        self.ring = ring

    def __call__(self, samples: list[Any]) -> Parts:
        """Collate ``samples``, their images into a slot where one is free."""
        taken: list[tuple[int, int]] = []

        def allocate(nbytes: int, count: int, ragged: bool) -> torch.Tensor | None:
            reserved = self.ring.take(nbytes, count, ragged)
            if reserved is None:
                return None
            taken.append(reserved[:2])
            return reserved[2]

        try:
            parts = self.collate.split(samples, allocate)
        except BaseException:
            for worker, slot in taken:
                self.ring.free(worker, slot)
            raise
        if taken:
            parts.fields["images"] = self.ring.handle(*taken[0], parts.fields["images"])
        return parts


class RingPass:
    """One pass over a ring loader in the main process: each batch, with its images opened from their slot.

    Iterating yields ``(parts, release)``: the :class:`~fastresize._batch.Parts` of a batch, whose
    images are a view of their slot (valid until ``release()`` is called) when they came through
    the ring, and the function that gives the slot back (``None`` for a batch that took the plain
    path). :meth:`close` ends the pass: without persistent workers they are shut down now.

    Args:
        loader: The ring's loader (see :func:`ring_loader`).
        ring: Its ring.
    """

    def __init__(self, loader: DataLoader[Any], ring: BatchRing) -> None:
        self.loader = loader
        self.ring = ring
        self.source: Iterator[Any] | None = iter(loader)

    def __iter__(self) -> RingPass:
        return self

    def __next__(self) -> tuple[Parts, Release | None]:
        if self.source is None:
            raise StopIteration
        parts = next(self.source)
        images = parts.fields["images"]
        if not isinstance(images, SlotHandle):
            self.ring.counts["plain"] += 1
            return parts, None
        parts.fields["images"] = self.ring.open(images)
        return parts, functools.partial(self.ring.release, images)

    def close(self) -> None:
        """End the pass; without persistent workers, shut them down now."""
        source, self.source = self.source, None
        if source is not None and not self.loader.persistent_workers:
            # Now, not when the last reference goes: a traceback the caller keeps holds the
            # iterator, and its workers would go on writing to the ring beside the next pass's.
            getattr(source, "_shutdown_workers", lambda: None)()


class _ResetOnStart:
    """A batch sampler that marks the ring's slots free when an epoch draws its first batch (see the module)."""

    def __init__(self, batch_sampler: Any, ring: BatchRing) -> None:
        self.batch_sampler = batch_sampler
        self.sampler = getattr(batch_sampler, "sampler", None)
        self.ring = ring

    def __iter__(self) -> Iterator[Any]:
        self.ring.reset()
        yield from self.batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)


def ring_blocker(loader: Any) -> str | None:
    """Return why the batch ring cannot serve ``loader``, or ``None`` when it can."""
    if not isinstance(loader, DataLoader):
        return f"the loader is a {type(loader).__name__}, not a torch.utils.data.DataLoader"
    if not isinstance(loader.collate_fn, ResizeCollate):
        return "the DataLoader's collate_fn is not a fastresize.ResizeCollate"
    if loader.collate_fn.custom:
        # The ring stacks the images itself: a custom collate (MixUp, CutMix, normalisation) would
        # then see stand-ins instead of the images, and its changes to them would be lost.
        return "the ResizeCollate wraps a custom collate_fn, which must see the images as the dataset gives them"
    if loader.batch_sampler is None:
        return "the DataLoader does not batch (batch_size=None)"
    return None


def ring_loader(loader: DataLoader[Any], *, pin: bool) -> tuple[DataLoader[Any], BatchRing]:
    """Return a copy of ``loader`` whose workers collate into a new :class:`BatchRing`, and the ring.

    The copy shares the dataset, the sampler, the batch sampler and every setting with ``loader``
    (which stays untouched); its ``collate_fn`` is a :class:`RingCollate` around ``loader``'s, and
    it starts its own workers.
    """
    depth = (loader.prefetch_factor or 1) + 2
    ring = BatchRing(loader.num_workers, depth, loader.batch_size or 1, pin=pin)
    collate = RingCollate(loader.collate_fn, ring)  # type: ignore[arg-type]  # ring_blocker checked it
    return private_copy(loader, batch_sampler=_ResetOnStart(loader.batch_sampler, ring), collate_fn=collate), ring


def private_copy(loader: DataLoader[Any], **replaced: Any) -> DataLoader[Any]:
    """A copy of ``loader`` with the attributes in ``replaced`` set, and no iterator of its own yet.

    It shares everything else (dataset, samplers, settings) with ``loader``, which stays untouched,
    and starts its own workers.
    """
    clone = copy.copy(loader)
    # DataLoader refuses to set some of these after construction; the copy is still private here.
    object.__setattr__(clone, "_iterator", None)
    for name, value in replaced.items():
        object.__setattr__(clone, name, value)
    return clone
