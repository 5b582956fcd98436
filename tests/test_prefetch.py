import warnings
from collections import namedtuple

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fastresize import DevicePrefetcher, ResizeCollate
from tests.conftest import DEVICES

Pair = namedtuple("Pair", ["image", "label"])


def _data(n=10):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n))


@pytest.mark.parametrize("device", DEVICES)
def test_every_tensor_of_every_batch_goes_to_the_device(device):
    images = [torch.full((2, 3, 4, 4), i, dtype=torch.uint8) for i in range(3)]
    batches = [
        images[0],
        {"image": images[1], "boxes": [torch.ones(2, 4)], "caption": ["a", "b"]},
        Pair(images[2], torch.tensor([7, 8])),
    ]
    out = list(DevicePrefetcher(batches, device))
    assert len(out) == 3
    assert out[0].device.type == device and torch.equal(out[0].cpu(), images[0])
    assert out[1]["image"].device.type == device and out[1]["boxes"][0].device.type == device
    assert out[1]["caption"] == ["a", "b"] and torch.equal(out[1]["image"].cpu(), images[1])
    assert type(out[2]) is Pair and out[2].label.device.type == device and out[2].label.tolist() == [7, 8]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ring", [False, True], ids=["plain", "ring"])
def test_dataloader_batches_in_order(device, ring):
    data = _data()
    loader = DataLoader(data, batch_size=4, num_workers=2, collate_fn=ResizeCollate())
    prefetcher = DevicePrefetcher(loader, device, ring=ring)
    for _ in range(2):
        batches = list(prefetcher)
        assert [labels.tolist() for _, labels in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert torch.equal(torch.cat([images.cpu() for images, _ in batches]), data.tensors[0])
        assert all(images.device.type == device for images, _ in batches)


def test_the_batches_own_their_memory():
    loader = DataLoader(_data(), batch_size=2, collate_fn=ResizeCollate())
    kept = [images for images, _ in DevicePrefetcher(loader, "cpu", ring=True)]  # slots are reused
    assert torch.equal(torch.cat(kept), _data().tensors[0])


def test_pass_through_and_set_epoch():
    data = _data()
    sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=1)
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    prefetcher = DevicePrefetcher(loader, "cpu")
    assert len(prefetcher) == len(loader) == 3
    assert prefetcher.dataset is data and prefetcher.sampler is sampler
    assert prefetcher.batch_sampler is loader.batch_sampler
    prefetcher.set_epoch(7)
    assert sampler.epoch == 7
    with pytest.raises(TypeError, match=r"has no len\(\)"):
        len(DevicePrefetcher(iter([torch.zeros(1)]), "cpu"))


class _EpochBatches(torch.utils.data.Sampler):
    """A batch sampler that orders its batches by epoch, as bucketing batch samplers do."""

    def __init__(self, n, batch_size):
        self.n, self.batch_size, self.epoch = n, batch_size, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist()
        return iter([order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)])

    def __len__(self):
        return -(-self.n // self.batch_size)


class _FailsAt(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        if i == 6:
            raise ValueError("sample 6 is corrupt")
        return torch.full((3, 8, 8), i, dtype=torch.uint8), i


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("ring", [False, True], ids=["plain", "ring"])
def test_a_failing_batch_raises_after_the_batches_before_it(workers, ring):
    loader = DataLoader(_FailsAt(), batch_size=2, num_workers=workers, collate_fn=ResizeCollate())
    delivered = []
    with pytest.raises(ValueError, match="sample 6 is corrupt"):
        for _, labels in DevicePrefetcher(loader, "cpu", ring=ring if workers else False):
            delivered.append(labels.tolist())
    assert delivered == [[0, 1], [2, 3], [4, 5]]


def test_set_epoch_reaches_a_batch_sampler():
    batch_sampler = _EpochBatches(10, 5)
    prefetcher = DevicePrefetcher(DataLoader(_data(), batch_sampler=batch_sampler), "cpu")
    orders = []
    for epoch in range(2):
        prefetcher.set_epoch(epoch)
        orders.append([labels.tolist() for _, labels in prefetcher])
    assert batch_sampler.epoch == 1 and orders[0] != orders[1]


@pytest.mark.parametrize("device", DEVICES)
def test_pin_memory_loader(device):
    loader = DataLoader(_data(), batch_size=5, pin_memory=True, num_workers=1, collate_fn=ResizeCollate())
    prefetcher = DevicePrefetcher(loader, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "pin_memory without an accelerator" on CPU-only machines
        assert [images.shape for images, _ in prefetcher] == [(5, 3, 8, 8)] * 2
    assert prefetcher.ring.counts == {"ring": 2, "plain": 0}  # the slot handles passed the pin thread


@pytest.mark.parametrize("ring", [False, True], ids=["plain", "ring"])
def test_leaving_early_closes_the_pass(ring):
    loader = DataLoader(_data(), batch_size=2, num_workers=1, persistent_workers=True, collate_fn=ResizeCollate())
    prefetcher = DevicePrefetcher(loader, "cpu", ring=ring)
    first = iter(prefetcher)
    assert next(first)[1].tolist() == [0, 1]
    assert next(labels.tolist() for _, labels in prefetcher) == [0, 1]  # a new pass closes the open one
    with pytest.raises(StopIteration):
        next(first)
    for _ in prefetcher:
        break
    assert [labels.tolist() for _, labels in prefetcher] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_bad_inputs():
    with pytest.raises(TypeError, match=r"loader must be an iterable of batches \(a DataLoader\), got int"):
        DevicePrefetcher(3)
    with pytest.raises(TypeError, match=r"ring must be True, False or None \(where it applies\), got 'yes'"):
        DevicePrefetcher([], "cpu", ring="yes")
    with pytest.raises(ValueError, match=r"device must be a torch device such as 'cuda' or 'cpu', got 'gpu0'"):
        DevicePrefetcher([], "gpu0")
    with pytest.raises(
        ValueError, match=r"ring=True, but the batch ring cannot serve this loader: the loader is a list, not"
    ):
        DevicePrefetcher([], "cpu", ring=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda' was asked for, but CUDA is not available"):
            DevicePrefetcher([], "cuda")


@pytest.mark.cuda
def test_cuda_copies_run_on_a_side_stream_and_the_consumer_waits():
    loader = DataLoader(_data(64), batch_size=8, num_workers=2, collate_fn=ResizeCollate())
    for ring in (False, True):
        prefetcher = DevicePrefetcher(loader, "cuda", ring=ring)
        total = torch.zeros((), device="cuda", dtype=torch.int64)
        for images, labels in prefetcher:
            assert images.is_cuda and labels.is_cuda
            total += images.long().sum()  # on the current stream, which waited for the copy
        assert int(total) == int(_data(64).tensors[0].long().sum())


@pytest.mark.cuda
def test_batches_already_on_the_gpu_pass_through():
    data = [torch.ones(2, 3, 4, 4, device="cuda"), torch.zeros(2, 3, 4, 4, device="cuda")]
    batches = list(DevicePrefetcher(data, "cuda"))
    assert [b.is_cuda for b in batches] == [True, True] and torch.equal(batches[0], data[0])
