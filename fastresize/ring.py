"""The batch ring: DataLoader workers stack each batch's images into reusable shared, page-locked slots.

Without the ring, every batch costs a fresh shared-memory segment: the worker stacks the images into
new pages, the main process maps them, touches them page by page and, for CUDA, copies them once more
into pinned memory before the copy to the device. With the ring, each worker stacks the images into
one of its own preallocated slots and hands over only a small :class:`SlotHandle`; the main process
copies the images to the device straight from the slot (page-locked once, on CUDA) and hands the slot
back when that copy has finished.

When the ring applies: the loader is a ``torch.utils.data.DataLoader`` that batches (``batch_size``
is not ``None``) with a :class:`~fastresize.ResizeCollate` as its ``collate_fn``
(:func:`ring_blocker` says why not otherwise). ``DevicePrefetcher(ring=None)``, the default, then
uses it when the batches go to CUDA or come from worker processes: with 0 workers on the CPU there is
no hand-over to save, only a copy out of the slot to add. Within a loader, a batch takes a slot when
its images are CPU tensors of one shape and dtype that fit a free slot of its worker; the slots are
sized by each worker's first such batch, for ``batch_size`` images (a smaller last batch uses
``slot[:n]``). Any other batch (larger images than the slots were made for, no free slot) takes the
plain path, so what arrives is the same either way; images of different shapes within one batch
raise the same error as without the ring.

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
import os
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

from fastresize.collate import ResizeCollate


class SlotHandle:
    """What a worker hands over in place of a batch's images: which slot holds them, and their shape.

    Attributes:
        worker: The worker's id (0 for the main process).
        slot: The slot's index among the worker's slots.
        shape: The images' shape.
        dtype: The images' dtype.
        buffer: The slot's shared buffer, sent along until the main process has taken it over.
    """

    __slots__ = ("buffer", "dtype", "shape", "slot", "worker")

    def __init__(
        self, worker: int, slot: int, shape: tuple[int, ...], dtype: torch.dtype, buffer: torch.Tensor | None
    ) -> None:
        self.worker, self.slot, self.shape, self.dtype, self.buffer = worker, slot, shape, dtype, buffer

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.worker, self.slot, self.shape, self.dtype, self.buffer)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.worker, self.slot, self.shape, self.dtype, self.buffer = state

    def __repr__(self) -> str:
        return f"SlotHandle(worker={self.worker}, slot={self.slot}, shape={self.shape}, dtype={self.dtype})"


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
    def take(self, images: list[Any]) -> tuple[SlotHandle, torch.Tensor] | None:
        """Reserve a free slot for ``images`` and return its handle and the view to stack them into.

        Returns ``None`` (the plain path) when the images are not CPU tensors of one shape and
        dtype, or when no slot of this worker is free and large enough.
        """
        first = images[0]
        if not isinstance(first, torch.Tensor) or first.device.type != "cpu" or first.nbytes == 0:
            return None
        for image in images:
            if not isinstance(image, torch.Tensor) or image.shape != first.shape or image.dtype != first.dtype:
                return None
            if image.device.type != "cpu" or image.is_sparse:
                return None
        info = get_worker_info()
        worker = 0 if info is None else info.id
        nbytes = first.nbytes * len(images)
        buffers = self.buffers[worker]
        for slot, buffer in enumerate(buffers):
            if buffer is None:
                # Sized once, for a full batch: a smaller last batch reuses it as slot[:n].
                capacity = max(len(images), self.batch_size) * first.nbytes
                buffer = buffers[slot] = torch.empty(capacity, dtype=torch.uint8).share_memory_()  # type: ignore[no-untyped-call]
            elif self.busy[worker, slot].item() or buffer.numel() < nbytes:
                continue
            self.busy[worker, slot] = 1
            sent = None if self.held[worker, slot].item() else buffer
            handle = SlotHandle(worker, slot, (len(images), *first.shape), first.dtype, sent)
            return handle, self._view(buffer, handle)
        return None

    @staticmethod
    def _view(buffer: torch.Tensor, handle: SlotHandle) -> torch.Tensor:
        count = 1
        for side in handle.shape:
            count *= side
        return buffer[: count * handle.dtype.itemsize].view(handle.dtype).view(handle.shape)

    def release(self, handle: SlotHandle) -> None:
        """Hand ``handle``'s slot back: its images have been copied (or were never used)."""
        self.busy[handle.worker, handle.slot] = 0

    def reset(self) -> None:
        """Mark every slot free; only when no batch written to the ring can still be received."""
        self.busy.zero_()

    # ----------------------------------------------------------------------------- main side
    def open(self, handle: SlotHandle) -> torch.Tensor:
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
        return self._view(buffer, handle)

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
    """The ``collate_fn`` of a ring loader: a :class:`~fastresize.ResizeCollate` that stacks into a slot.

    The images are stacked straight into a free slot of this worker and replaced by the slot's
    :class:`SlotHandle`; everything else goes through the wrapped collate as before. A batch that
    cannot take a slot is collated by the wrapped collate alone.

    Args:
        collate: The DataLoader's :class:`~fastresize.ResizeCollate`.
        ring: The ring to stack into.
    """

    def __init__(self, collate: ResizeCollate, ring: BatchRing) -> None:
        self.collate = collate
        self.ring = ring

    def __call__(self, samples: list[Any]) -> Any:
        """Collate ``samples``, their images into a slot where one is free."""
        images = self.collate.images_of(samples)
        taken = self.ring.take(images)
        if taken is None:
            return self.collate(samples)
        handle, slot = taken
        try:
            torch.stack(images, out=slot)
            batch = self.collate.collate(samples, images=slot)
        except BaseException:
            self.ring.release(handle)
            raise
        return self.collate.format.put(batch, {"images": handle})


class _ResetOnStart:
    """A batch sampler that marks the ring's slots free when an epoch draws its first batch.

    The DataLoader draws the first batch of an epoch only after its workers have finished (and it
    has discarded) every batch a previous, interrupted epoch left outstanding.
    """

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
    if loader.collate_fn.collate_fn is not default_collate:
        # The ring stacks the images itself: a custom collate (MixUp, CutMix, normalisation) would
        # then see stand-ins instead of the images, and its changes to them would be lost.
        return "the ResizeCollate wraps a custom collate_fn, which must see the images (the ring stacks them itself)"
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
    ring = BatchRing(loader.num_workers, depth, loader.batch_size or 0, pin=pin)
    clone = copy.copy(loader)
    # DataLoader refuses to set these after construction; the copy is still private here.
    object.__setattr__(clone, "_iterator", None)
    object.__setattr__(clone, "batch_sampler", _ResetOnStart(loader.batch_sampler, ring))
    clone.collate_fn = RingCollate(loader.collate_fn, ring)  # type: ignore[arg-type]
    return clone, ring
