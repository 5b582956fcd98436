import os
import pickle
import signal
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, get_worker_info

from fastresize import BatchFormat, DevicePrefetcher, ResizeCollate
from fastresize.ragged import RaggedImages
from fastresize.ring import RAGGED_HEADROOM, BatchRing, RingCollate, SlotHandle, ring_blocker, ring_loader
from tests.conftest import DEVICES


class Images(Dataset):
    """uint8 CHW images and a label; ``sides`` gives each image's side (module level: picklable for spawn)."""

    def __init__(self, n=10, sides=None, fail_flag=None):
        self.n, self.sides, self.fail_flag = n, sides, fail_flag

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.fail_flag is not None and i == 5 and Path(self.fail_flag).exists():
            raise ValueError(f"sample {i} is broken")
        side = 8 if self.sides is None else self.sides[i]
        g = torch.Generator().manual_seed(i)
        return torch.randint(0, 256, (3, side, side), generator=g, dtype=torch.uint8), i


class Records(Dataset):
    """NHWC uint8 images with a mask, per-image boxes and a caption, in dicts."""

    def __len__(self):
        return 9

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {
            "image": torch.randint(0, 256, (12, 10, 3), generator=g, dtype=torch.uint8),
            "mask": torch.full((12, 10), i, dtype=torch.int64),
            "boxes": torch.tensor([[0.0, 1.0, 2.0, 3.0]] * (i % 3 + 1)),
            "caption": f"image {i}",
        }


class Stream(IterableDataset):
    """Each worker yields its own share of 14 float images."""

    def __iter__(self):
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(start, 14, step):
            yield torch.full((2, 4, 4), float(i))


def _cpu(batch):
    if isinstance(batch, torch.Tensor):
        return batch.cpu()
    if isinstance(batch, dict):
        return {k: _cpu(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_cpu(v) for v in batch)
    return batch


def _same(a, b):
    """Equal values, dtypes, shapes and structure."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _epochs(make_loader, ring, device="cpu", epochs=2, stop_after=None):
    """Batches of ``epochs`` passes (the first one left after ``stop_after`` batches), the prefetcher,
    and the addresses of the ring's slots after each pass."""
    torch.manual_seed(0)
    prefetcher = DevicePrefetcher(make_loader(), device, ring=ring)
    seen, slots = [], []
    for epoch in range(epochs):
        prefetcher.set_epoch(epoch)
        for index, batch in enumerate(prefetcher):
            if epoch == 0 and index == stop_after:
                break
            assert next(iter(_images(batch))).device.type == torch.device(device).type
            seen.append(_cpu(batch))
        if prefetcher.ring is not None:
            slots.append(
                {
                    (w, s): b.data_ptr()
                    for w, row in enumerate(prefetcher.ring.buffers)
                    for s, b in enumerate(row)
                    if b is not None
                }
            )
    return seen, prefetcher, slots


def _images(batch):
    return [batch["image"]] if isinstance(batch, dict) else [batch[0]] if isinstance(batch, list) else [batch]


def _assert_equivalent(make_loader, device="cpu", epochs=2, stop_after=None, make_plain=None):
    plain, _, _ = _epochs(make_plain or make_loader, False, device, epochs, stop_after)
    ringed, prefetcher, slots = _epochs(make_loader, True, device, epochs, stop_after)
    assert prefetcher.ring is not None
    assert len(plain) == len(ringed) and all(map(_same, plain, ringed))
    assert int(prefetcher.ring.busy.sum()) == 0  # every slot went back
    # A slot is made once: later epochs (and their new workers) reuse it.
    assert slots[0] and all(slots[-1][key] == address for key, address in slots[0].items())
    return ringed, prefetcher.ring


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("workers", "persistent", "context"),
    [(0, False, None), (2, False, None), (2, True, None), (2, False, "spawn")],
    ids=["workers0", "fork", "fork-persistent", "spawn"],
)
def test_ring_delivers_what_the_plain_path_does(device, workers, persistent, context):
    def make(context=context):
        return DataLoader(
            Images(n=10), batch_size=4, shuffle=True, num_workers=workers, persistent_workers=persistent,
            multiprocessing_context=context, collate_fn=ResizeCollate(),
        )  # fmt: skip

    epochs = 2 if context == "spawn" else 3  # each epoch starts workers that import torch afresh
    # Spawn's workers are slow to start: compare with the plain path under fork, which delivers the same.
    batches, ring = _assert_equivalent(make, device, epochs, make_plain=lambda: make(None))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2] * epochs  # the last, smaller batch uses slot[:2]
    assert ring.counts == {"ring": 3 * epochs, "plain": 0}


@pytest.mark.parametrize("device", DEVICES)
def test_dict_batches_with_nhwc_images_and_per_image_boxes(device):
    fmt = BatchFormat(layout="NHWC", mask_key="mask", boxes_key="boxes")

    def make():
        return DataLoader(Records(), batch_size=4, num_workers=2, collate_fn=ResizeCollate(format=fmt))

    batches, ring = _assert_equivalent(make, device)
    assert batches[0]["image"].shape == (4, 12, 10, 3)  # handed over in the format's layout
    assert [b.shape[0] for b in batches[0]["boxes"]] == [1, 2, 3, 1]
    assert ring.counts["plain"] == 0


def test_distributed_sampler_and_an_interrupted_epoch_with_persistent_workers():
    def make():
        data = Images(n=20)
        sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=3)
        return DataLoader(data, batch_size=3, sampler=sampler, num_workers=2, persistent_workers=True,
                          prefetch_factor=1, collate_fn=ResizeCollate())  # fmt: skip

    # The first epoch is left after one batch; the DataLoader then drains what the workers still
    # had outstanding, whose slots the main process never sees. The next epochs stay complete.
    batches, ring = _assert_equivalent(make, epochs=3, stop_after=1)
    assert len(batches) == 1 + 4 + 4
    assert ring.counts["plain"] == 0


def test_iterable_dataset():
    def make():
        return DataLoader(Stream(), batch_size=3, num_workers=2, collate_fn=ResizeCollate(format=BatchFormat("NCHW")))

    batches, ring = _assert_equivalent(make)
    assert sorted(int(v) for b in batches[:6] for v in b[:, 0, 0, 0]) == list(range(14))
    assert ring.counts == {"ring": 12, "plain": 0}


def test_batches_that_do_not_fit_take_the_plain_path():
    # Every batch has larger images than the last: the three slots of the main process are made
    # for the first three, and the rest fit none of them.
    sides = [4] * 2 + [6] * 2 + [8] * 2 + [10] * 2 + [12] * 2

    def make():
        return DataLoader(Images(n=10, sides=sides), batch_size=2, collate_fn=ResizeCollate())

    _, ring = _assert_equivalent(make, epochs=1)
    assert ring.counts == {"ring": 3, "plain": 2}


def _ragged_batches(ring, sides, workers=2, device="cpu"):
    """(sizes, images, labels) of each batch, on the CPU, and the ring."""
    loader = DataLoader(
        Images(n=len(sides), sides=sides), batch_size=2, num_workers=workers, collate_fn=ResizeCollate()
    )
    prefetcher = DevicePrefetcher(loader, device, ring=ring)
    batches = []
    for images, labels in prefetcher:
        assert images.device.type == torch.device(device).type
        images, labels = images.to("cpu"), labels.cpu()
        if isinstance(images, RaggedImages):
            batches.append((images.sizes, [images.image(i) for i in range(len(images))], labels))
        else:
            batches.append(([tuple(images.shape[-2:])] * len(images), list(images), labels))
    return batches, prefetcher.ring


@pytest.mark.parametrize("device", DEVICES)
def test_ragged_batches_arrive_alike_through_the_ring_and_the_plain_path(device):
    sides = [8, 10, 8, 8, 12, 6, 9, 9]
    plain, _ = _ragged_batches(False, sides, device=device)
    ringed, ring = _ragged_batches(True, sides, device=device)
    assert [sizes for sizes, _, _ in ringed] == [[(8, 8), (10, 10)], [(8, 8), (8, 8)], [(12, 12), (6, 6)], [(9, 9)] * 2]
    for (_, a, la), (_, b, lb) in zip(plain, ringed, strict=True):
        assert torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # The second batch is a dense one; a ragged batch's slot has headroom for larger ones.
    assert ring.counts == {"ring": 4, "plain": 0} and int(ring.busy.sum()) == 0


@pytest.mark.parametrize("persistent", [False, True], ids=["fresh-workers", "persistent"])
def test_a_worker_that_raises_leaves_the_ring_consistent(tmp_path, persistent):
    flag = tmp_path / "fail"
    flag.touch()
    loader = DataLoader(
        Images(n=12, fail_flag=str(flag)), batch_size=2, num_workers=2, persistent_workers=persistent,
        collate_fn=ResizeCollate(),
    )  # fmt: skip
    prefetcher = DevicePrefetcher(loader, "cpu")
    with pytest.raises(ValueError, match=r"sample 5 is broken") as raised:
        list(prefetcher)
    del raised  # its traceback holds the failed pass's DataLoader iterator, and so its workers
    flag.unlink()
    before = dict(prefetcher.ring.counts)
    batches = list(prefetcher)
    assert [b[1].tolist() for b in batches] == [[2 * i, 2 * i + 1] for i in range(6)]
    assert prefetcher.ring.counts["ring"] - before["ring"] == 6 and prefetcher.ring.counts["plain"] == 0
    assert int(prefetcher.ring.busy.sum()) == 0


def test_a_worker_that_dies_mid_batch_raises_the_dataloaders_error(tmp_path, monkeypatch):
    flag = tmp_path / "die"
    flag.touch()
    split = ResizeCollate.split

    def dying(self, samples, allocate=None):
        """Kills its worker after the images went into a slot, while the flag file exists."""
        parts = split(self, samples, allocate)
        if flag.exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return parts

    # Forked workers inherit the patched method; the ring applies (torch's default collate inside).
    monkeypatch.setattr(ResizeCollate, "split", dying)
    loader = DataLoader(
        Images(n=8), batch_size=2, num_workers=2, multiprocessing_context="fork", collate_fn=ResizeCollate()
    )
    prefetcher = DevicePrefetcher(loader, "cpu")
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid\(s\) [\d, ]+\) exited unexpectedly"):
        list(prefetcher)
    assert int(prefetcher.ring.busy.sum()) > 0  # the dead workers' slots
    flag.unlink()
    assert [b[1].tolist() for b in prefetcher] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert int(prefetcher.ring.busy.sum()) == 0 and prefetcher.ring.counts["ring"] == 4


def test_leaving_early_and_starting_over_gives_every_slot_back():
    loader = DataLoader(Images(n=12), batch_size=2, num_workers=2, persistent_workers=True, collate_fn=ResizeCollate())
    prefetcher = DevicePrefetcher(loader, "cpu")
    for stop in (1, 3, 0):
        for index, _ in enumerate(prefetcher):
            if index == stop:
                break
    first = iter(prefetcher)
    next(first)
    labels = [b[1].tolist() for b in prefetcher]  # closes the pass still open
    assert labels == [[2 * i, 2 * i + 1] for i in range(6)]
    with pytest.raises(StopIteration):
        next(first)
    assert int(prefetcher.ring.busy.sum()) == 0


def test_ring_collate_releases_its_slot_when_the_collate_fails():
    ring = BatchRing(workers=0, depth=2, batch_size=2)
    collate = RingCollate(ResizeCollate(format=BatchFormat(layout=None)), ring)
    nhwc = [torch.zeros(8, 8, 3, dtype=torch.uint8)] * 2
    with pytest.raises(ValueError, match=r"look like NHWC"):
        collate(nhwc)
    assert int(ring.busy.sum()) == 0 and ring.buffers[0][0] is not None
    parts = collate([torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2)
    assert isinstance(parts.fields["images"], SlotHandle) and int(ring.busy.sum()) == 1


def test_batch_ring_slots():
    ring = BatchRing(workers=0, depth=2, batch_size=4)
    images = torch.stack([torch.full((2, 3), i, dtype=torch.float32) for i in range(4)])
    worker, slot, buffer = ring.take(images.nbytes, 4)
    assert (worker, slot) == (0, 0) and buffer.numel() == 4 * 2 * 3 * 4 and buffer.is_shared()
    buffer.view(torch.float32).view(4, 2, 3).copy_(images)
    first = ring.handle(worker, slot, images)
    assert (first.shape, first.dtype) == ((4, 2, 3), torch.float32) and first.buffer is buffer
    _, second, other = ring.take(images.nbytes * 3 // 4, 3)  # slot 0 is busy; slot 1 is made for a full batch too
    assert second == 1 and other.numel() == buffer.numel()
    assert ring.take(images.nbytes, 4) is None  # no free slot: the plain path
    assert torch.equal(ring.open(first), images)
    assert int(ring.held[0, 0]) == 1  # the main process holds the buffer: the worker stops sending it
    ring.release(first)
    assert ring.take(images.nbytes, 4)[1] == 0 and ring.handle(0, 0, images).buffer is None
    ring.reset()
    assert int(ring.busy.sum()) == 0
    assert ring.take(images.nbytes * 2, 4) is None  # larger than every slot
    assert ring.take(0, 4) is None  # nothing to hold


def test_a_ragged_slot_has_headroom_and_opens_as_ragged_images():
    ring = BatchRing(workers=0, depth=1, batch_size=2)
    images = RaggedImages.pack([torch.ones(3, 4, 5, dtype=torch.uint8), torch.zeros(3, 2, 2, dtype=torch.uint8)])
    assert ring.take(images.data.nbytes // 2, 1, ragged=True) is None  # a partial batch makes no slot
    _, _, buffer = ring.take(images.data.nbytes, 2, ragged=True)
    assert buffer.numel() == int(images.data.nbytes * RAGGED_HEADROOM)  # a full batch's bytes, with headroom
    buffer[: images.data.nbytes].copy_(images.data)
    opened = ring.open(ring.handle(0, 0, images))
    assert opened.sizes == [(4, 5), (2, 2)] and torch.equal(opened.image(0), images.image(0))


def test_a_full_dev_shm_is_named_with_the_fix(monkeypatch):
    def full(self):
        raise RuntimeError("unable to write to file </torch_1_2_3>: No space left on device (28)")

    ring = BatchRing(workers=0, depth=1, batch_size=1)
    monkeypatch.setattr(torch.Tensor, "share_memory_", full)
    with pytest.raises(RuntimeError, match=r"could not allocate a slot of 96 bytes: /dev/shm, .* --shm-size"):
        ring.take(96, 1)


def test_state_sent_to_workers_is_the_shared_part():
    ring = BatchRing(workers=2, depth=3, batch_size=2, pin=True)
    ring.counts["ring"] = 5
    copy = pickle.loads(ForkingPickler.dumps(ring))  # how spawn sends it: shared memory stays shared
    assert copy.pin is False and copy.counts == {"ring": 0, "plain": 0} and copy.depth == 3
    copy.busy[1, 2] = 1
    assert int(ring.busy[1, 2]) == 1
    handle = pickle.loads(pickle.dumps(SlotHandle(1, 2, (2, 3, 4, 4), torch.uint8, None)))
    assert repr(handle) == "SlotHandle(worker=1, slot=2, shape=(2, 3, 4, 4), dtype=torch.uint8)"


def test_where_the_ring_applies():
    data = Images()
    assert ring_blocker(DataLoader(data, batch_size=2, collate_fn=ResizeCollate())) is None
    assert ring_blocker([torch.zeros(1)]) == "the loader is a list, not a torch.utils.data.DataLoader"
    default = DataLoader(data, batch_size=2)
    assert ring_blocker(default) == "the DataLoader's collate_fn is not a fastresize.ResizeCollate"
    unbatched = DataLoader(data, batch_size=None, collate_fn=ResizeCollate())
    assert ring_blocker(unbatched) == "the DataLoader does not batch (batch_size=None)"
    # On by default with workers, or to CUDA; with 0 workers on the CPU it would only add a copy.
    assert DevicePrefetcher(DataLoader(data, batch_size=2, collate_fn=ResizeCollate()), "cpu").ring is None
    workers = DataLoader(data, batch_size=2, num_workers=1, collate_fn=ResizeCollate())
    assert DevicePrefetcher(workers, "cpu").ring is not None
    assert DevicePrefetcher(workers, "cpu", ring=False).ring is None
    with pytest.raises(ValueError, match=r"ring=True, but the batch ring cannot serve this loader: the DataLoader's"):
        DevicePrefetcher(DataLoader(data, batch_size=2), "cpu", ring=True)


def test_the_users_loader_is_left_as_it_was():
    loader = DataLoader(Images(), batch_size=4, num_workers=2, persistent_workers=True, collate_fn=ResizeCollate())
    collate, batch_sampler = loader.collate_fn, loader.batch_sampler
    clone, ring = ring_loader(loader, pin=False)
    assert loader.collate_fn is collate and loader.batch_sampler is batch_sampler
    assert clone.dataset is loader.dataset and clone.sampler is loader.sampler and len(clone) == len(loader) == 3
    assert isinstance(clone.collate_fn, RingCollate) and clone.collate_fn.ring is ring
    assert (clone.num_workers, clone.persistent_workers, ring.depth) == (2, True, 4)


class _FakeCudart:
    """Stands in for ``torch.cuda.cudart()`` on machines without CUDA: records what is registered."""

    def __init__(self, error=0):
        self.error, self.registered = error, {}

    def cudaHostRegister(self, pointer, nbytes, flags):
        if not self.error:
            self.registered[pointer] = (nbytes, flags)
        return self.error

    def cudaHostUnregister(self, pointer):
        del self.registered[pointer]
        return 0


def test_slots_are_page_locked_once_when_the_main_process_takes_them_over(monkeypatch):
    cudart = _FakeCudart()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    ring = BatchRing(workers=0, depth=2, batch_size=2, pin=True)
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    for _ in range(3):
        handle = ring.handle(*ring.take(images.nbytes, 2)[:2], images)
        ring.open(handle)
        ring.release(handle)
    buffer = ring.buffers[0][0]
    assert cudart.registered == {buffer.data_ptr(): (buffer.numel(), 1)}  # once, portable, the whole slot
    ring.close()
    assert cudart.registered == {} and ring.pin is False


def test_a_slot_that_cannot_be_page_locked_warns_and_still_works(monkeypatch):
    monkeypatch.setattr(torch.cuda, "cudart", lambda: _FakeCudart(error=2))
    ring = BatchRing(workers=0, depth=2, batch_size=2, pin=True)
    images = torch.ones(2, 3, 4, 4)
    worker, slot, buffer = ring.take(images.nbytes, 2)
    buffer.view(torch.float32).fill_(1)
    handle = ring.handle(worker, slot, images)
    with pytest.warns(RuntimeWarning, match=r"could not page-lock a slot of 384 bytes \(cudaError 2\)"):
        assert ring.open(handle).sum() == 96


@pytest.mark.cuda
def test_cuda_slots_are_page_locked_once():
    loader = DataLoader(Images(n=16), batch_size=4, num_workers=2, persistent_workers=True, collate_fn=ResizeCollate())
    prefetcher = DevicePrefetcher(loader, "cuda")
    for _ in range(3):
        assert [b[1].tolist() for b in prefetcher] == [list(range(i, i + 4)) for i in range(0, 16, 4)]
    ring = prefetcher.ring
    buffers = [buffer for row in ring.buffers for buffer in row if buffer is not None]
    assert buffers and all(buffer.is_pinned() for buffer in buffers)
    assert len(ring._registered) == len(buffers)  # registered once each, over three epochs
    ring.close()
    assert not any(buffer.is_pinned() for buffer in buffers)


def _mixup(samples):
    """A custom collate that changes the images: the ring must not bypass it."""
    images = torch.stack([image for image, _ in samples]).float()
    labels = torch.tensor([label for _, label in samples])
    return (images * 0.5 + images.flip(0) * 0.5).round().to(torch.uint8), labels.flip(0)


class _Labelled(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.full((3, 8, 8), i * 10, dtype=torch.uint8), i


def test_a_custom_collate_keeps_the_plain_path():
    loader = DataLoader(_Labelled(), batch_size=4, num_workers=1, collate_fn=ResizeCollate(_mixup))
    assert "custom collate_fn" in ring_blocker(loader)
    assert DevicePrefetcher(loader, "cpu").ring is None  # on by default elsewhere, off here
    batches = list(DevicePrefetcher(loader, "cpu"))
    expected = [_mixup([_Labelled()[i] for i in range(start, start + 4)]) for start in (0, 4)]
    assert len(batches) == len(expected) == 2
    for got, want in zip(batches, expected, strict=True):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match=r"ring=True, but the batch ring cannot serve this loader: the ResizeCollate"):
        DevicePrefetcher(loader, "cpu", ring=True)
