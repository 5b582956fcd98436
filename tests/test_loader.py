import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, TensorDataset

import fastresize
from fastresize import (
    BatchFormat,
    BatchResize,
    CosineAnnealingWarmbootingLR,
    MultiScalePolicy,
    ResizeCollate,
    ResizeLoader,
    StepCounter,
    wrap,
)
from tests.conftest import assert_round_trip

ROOT = Path(__file__).resolve().parents[1]


class DictImages(Dataset):
    """uint8 NHWC images with a mask, per-image boxes and a caption (module level: picklable for spawn)."""

    def __init__(self, n=10, size=24):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        image = torch.randint(0, 256, (self.size, self.size, 3), generator=g, dtype=torch.uint8)
        return {
            "image": image,
            "mask": torch.full((self.size, self.size), i % 3, dtype=torch.int64),
            "boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]] * (i % 3 + 1)),
            "caption": f"image {i}",
        }


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(7):
            yield torch.full((3, 16, 16), i, dtype=torch.uint8)


class Mixed(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.zeros(3, 16 + 8 * i, 16, dtype=torch.uint8)


class Listy(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return ([[1, 2], [3, 4]], i)


def _tensor_data(n=10, size=24):
    return TensorDataset(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8), torch.arange(n))


@pytest.mark.parametrize("workers", [0, 2])
def test_tuple_batches_get_the_policy_sizes(workers):
    policy = MultiScalePolicy(16, 64, max_first_steps=2, seed=3)
    counter = StepCounter(steps_per_epoch=3)
    loader = DataLoader(_tensor_data(), batch_size=4, num_workers=workers, collate_fn=ResizeCollate())
    wrapped = ResizeLoader(loader, BatchResize(policy=policy), counter=counter, device="cpu")
    seen = []
    for _ in range(2):
        for images, labels in wrapped:
            seen.append((tuple(images.shape), labels.tolist()))
    expected_sizes = [policy.size_for(s, s) for s in range(6)]
    assert [shape[2:] for shape, _ in seen] == expected_sizes
    assert [shape[0] for shape, _ in seen] == [4, 4, 2] * 2  # the last batch is smaller
    assert seen[0][1] == [0, 1, 2, 3] and seen[0][0][2:] == (64, 64)  # max size first
    assert (counter.epoch, counter.batch) == (2, 0)


@pytest.mark.parametrize(
    ("workers", "persistent", "context"), [(0, False, None), (2, True, None), (2, False, "spawn")], ids=str
)
def test_dict_batches_with_targets(workers, persistent, context):
    fmt = BatchFormat(layout="NHWC", mask_key="mask", boxes_key="boxes")
    collate = ResizeCollate(format=fmt)
    loader = DataLoader(
        DictImages(),
        batch_size=4,
        num_workers=workers,
        persistent_workers=persistent,
        multiprocessing_context=context,
        collate_fn=collate,
        pin_memory=False,
    )
    transform = BatchResize(48, value_range=(0, 1), dtype=torch.float32, format=fmt)
    batches = list(ResizeLoader(loader, transform, device="cpu"))
    first = batches[0]
    assert first["image"].shape == (4, 3, 48, 48) and first["image"].dtype == torch.float32  # NHWC in, NCHW out
    expected = BatchResize(48, value_range=(0, 1), dtype=torch.float32, format=BatchFormat(layout="NHWC"))(
        torch.stack([DictImages()[i]["image"] for i in range(4)])
    )
    assert torch.equal(first["image"], expected)
    assert first["mask"].shape == (4, 48, 48) and first["mask"].dtype == torch.int64
    assert [b.tolist() for b in first["boxes"]][2] == [[0.0, 0.0, 8.0, 8.0]] * 3  # 24 -> 48 doubles them
    assert first["caption"] == ["image 0", "image 1", "image 2", "image 3"]
    assert [len(b["caption"]) for b in batches] == [4, 4, 2]


def test_iterable_dataset_needs_steps_per_epoch():
    loader = DataLoader(Stream(), batch_size=2, collate_fn=ResizeCollate())
    with pytest.raises(
        ValueError, match=r"the loader has no len\(\) \(its dataset is an IterableDataset\); pass steps_per_epoch"
    ):
        ResizeLoader(loader, BatchResize(32), device="cpu")
    wrapped = ResizeLoader(loader, BatchResize(32), device="cpu", steps_per_epoch=3)
    assert len(wrapped) == 3
    assert [b[:, 0, 0, 0].tolist() for b in wrapped] == [[0, 1], [2, 3], [4, 5]]
    too_long = ResizeLoader(loader, BatchResize(32), device="cpu", steps_per_epoch=5)
    with pytest.raises(RuntimeError, match=r"the loader ran out after 4 of 5 batches.* an estimate"):
        list(too_long)


class SizedStream(IterableDataset):
    """An IterableDataset with a len(), sharded over the workers: each worker yields its own last batch."""

    def __len__(self):
        return 12

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        first, step = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(first, 12, step):
            yield torch.full((3, 16, 16), i, dtype=torch.uint8)


def test_steps_per_epoch_replaces_the_estimated_len_of_an_iterable_dataset():
    # 2 workers x 6 samples, batches of 4, drop_last: 2 batches, although len(loader) says 3.
    loader = DataLoader(SizedStream(), batch_size=4, num_workers=2, drop_last=True, collate_fn=ResizeCollate())
    assert len(loader) == 3
    with pytest.raises(RuntimeError, match=r"ran out after 2 of 3 batches.*pass steps_per_epoch=\.\.\. explicitly"):
        list(ResizeLoader(loader, BatchResize(32), device="cpu"))
    wrapped = ResizeLoader(loader, BatchResize(32), device="cpu", steps_per_epoch=2)
    assert len(wrapped) == 2
    for _ in range(2):
        assert sorted(b[:, 0, 0, 0].tolist() for b in wrapped) == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_one_pass_at_a_time():
    wrapped = wrap(DataLoader(_tensor_data(), batch_size=2), 16, 16, device="cpu")
    first = iter(wrapped)
    next(first)
    second = iter(wrapped)
    next(second)
    with pytest.raises(RuntimeError, match=r"this iterator was closed: a newer iter\(\) over the same ResizeLoader"):
        next(first)
    once = wrap(
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8) for _ in range(3)), 16, 16, device="cpu", steps_per_epoch=3
    )
    assert len(list(once)) == 3
    with pytest.raises(RuntimeError, match=r"ran out after 0 of 3 batches.*a one-pass iterator, a generator"):
        list(once)


def test_a_broken_off_epoch_is_finished_by_the_next_iteration():
    counter = StepCounter(3)
    wrapped = ResizeLoader(
        DataLoader(_tensor_data(), batch_size=4), BatchResize(policy=MultiScalePolicy(16, 32)), counter=counter
    )
    for _ in wrapped:
        assert (counter.epoch, counter.batch) == (0, 1)  # the counter points at the next batch
        break
    assert len(list(wrapped)) == 2 and (counter.epoch, counter.batch) == (1, 0)


def test_drives_the_scheduler_in_the_original_call_order():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    reference_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    config = {"epochs": 4, "steps": [2], "batchs": 3, "warmup_epoch": 1}
    scheduler = CosineAnnealingWarmbootingLR(optimizer, **config)
    reference = CosineAnnealingWarmbootingLR(reference_opt, **config)
    wrapped = wrap(DataLoader(_tensor_data(), batch_size=4), 16, 32, device="cpu", scheduler=scheduler)
    seen, expected = [], []
    for _ in range(4):
        for _ in wrapped:
            seen.append(optimizer.param_groups[0]["lr"])
        for _ in range(3):
            reference.step_batch()
            expected.append(reference_opt.param_groups[0]["lr"])
        reference.step()
    assert seen == expected and len(set(seen)) == 5  # 3 warmup values, then one per epoch


def test_leaving_after_the_last_batch_still_ends_the_epoch():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=4, steps=[2])
    wrapped = wrap(DataLoader(_tensor_data(), batch_size=4), 16, 32, device="cpu", scheduler=scheduler)
    for index, _ in enumerate(wrapped):
        if index == 2:
            break  # the epoch's last batch
    assert scheduler.last_epoch == 1
    for _ in wrapped:
        break  # not the last batch: the epoch goes on
    assert scheduler.last_epoch == 1


def test_counter_driven_scheduler_shares_the_counter():
    counter = StepCounter(3)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=4, warmup_epoch=1, counter=counter)
    wrapped = wrap(DataLoader(_tensor_data(), batch_size=4), 16, 32, device="cpu", scheduler=scheduler)
    assert wrapped.counter is counter
    lrs = []
    for _ in range(2):
        for _ in wrapped:
            lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == [scheduler.lr_at(e, b)[0] for e in range(2) for b in range(3)]
    with pytest.raises(ValueError, match=r"driven by another StepCounter than the loader's"):
        ResizeLoader(wrapped.loader, BatchResize(32), counter=StepCounter(3), device="cpu", scheduler=scheduler)


def test_pass_through_and_set_epoch():
    data = _tensor_data()
    sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=1)
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    wrapped = wrap(loader, 16, 32, device="cpu")
    assert len(wrapped) == len(loader) == 3
    assert wrapped.dataset is data and wrapped.sampler is sampler and wrapped.batch_sampler is loader.batch_sampler
    wrapped.set_epoch(7)
    assert sampler.epoch == 7
    for _ in range(4):
        list(wrapped)
    assert sampler.epoch == 3  # each iteration sets the counter's epoch


def test_pin_memory_loader():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "pin_memory without an accelerator" on CPU-only machines
        loader = DataLoader(_tensor_data(), batch_size=5, pin_memory=True, collate_fn=ResizeCollate())
        assert [b[0].shape for b in wrap(loader, 32, 32, device="cpu")] == [(5, 3, 32, 32)] * 2


def test_empty_loader_is_named():
    with pytest.raises(ValueError, match=r"the loader is empty \(len\(loader\) == 0\): its dataset has 3 samples"):
        wrap(DataLoader(_tensor_data(n=3), batch_size=4, drop_last=True), 16, 32, device="cpu")


def test_format_is_taken_from_the_collate_and_must_agree():
    fmt = BatchFormat(layout="NHWC", mask_key="mask", boxes_key="boxes")
    loader = DataLoader(DictImages(n=4), batch_size=2, collate_fn=ResizeCollate(format=fmt))
    wrapped = wrap(loader, 16, 32, device="cpu")
    assert wrapped.transform.format == fmt
    assert [b["mask"].shape for b in wrapped] == [(2, 32, 32)] * 2  # the mask was resized: the format came along
    with pytest.raises(ValueError, match=r"differs from the loader's ResizeCollate format"):
        wrap(loader, 16, 32, device="cpu", format=BatchFormat(layout="NHWC"))


def test_bad_inputs():
    transform = BatchResize(32)
    with pytest.raises(ValueError, match=r"device='cuda' was asked for, but CUDA is not available"):
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        ResizeLoader([torch.zeros(1, 3, 8, 8)], transform, device="cuda")
    with pytest.raises(ValueError, match=r"device must be a torch device such as 'cuda' or 'cpu', got 'gpu0'"):
        ResizeLoader([torch.zeros(1, 3, 8, 8)], transform, device="gpu0")
    with pytest.raises(TypeError, match=r"loader must be an iterable of batches \(a DataLoader\), got int"):
        ResizeLoader(3, transform)
    with pytest.raises(TypeError, match=r"transform must be a BatchResize, got function"):
        ResizeLoader([], lambda x: x)
    with pytest.raises(ValueError, match=r"resample_in must be one of 'auto', 'device', 'workers'; got 'gpu'"):
        ResizeLoader([torch.zeros(1, 3, 8, 8)], transform, device="cpu", resample_in="gpu")
    with pytest.raises(
        ValueError, match=r"resample_in='workers', but the workers cannot resample: the loader is a list"
    ):
        ResizeLoader([torch.zeros(1, 3, 8, 8)], transform, device="cpu", resample_in="workers")
    unbatched = DataLoader(Mixed(), batch_size=None)
    with pytest.raises(ValueError, match=r"cannot resample: the DataLoader's collate_fn is not a fastresize"):
        ResizeLoader(unbatched, transform, device="cpu", resample_in="workers")
    with pytest.raises(TypeError, match=r"images must be a torch.Tensor, got list"):
        list(ResizeLoader(DataLoader(Listy(), batch_size=2), transform, device="cpu"))
    with pytest.raises(ValueError, match=r"steps_per_epoch=4 disagrees with len\(loader\)=3"):
        ResizeLoader(DataLoader(_tensor_data(), batch_size=4), transform, device="cpu", steps_per_epoch=4)
    with pytest.raises(ValueError, match=r"counter.steps_per_epoch=4 disagrees with len\(loader\)=3"):
        ResizeLoader(DataLoader(_tensor_data(), batch_size=4), transform, counter=StepCounter(4), device="cpu")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=3, batchs=5, warmup_epoch=1)
    with pytest.raises(ValueError, match=r"the scheduler's batchs=5 disagrees with the loader's 3 batches per epoch"):
        ResizeLoader(DataLoader(_tensor_data(), batch_size=4), transform, device="cpu", scheduler=scheduler)
    loader = DataLoader(_tensor_data(), batch_size=4)
    with pytest.raises(TypeError, match=r"counter must be a StepCounter or None, got int"):
        ResizeLoader(loader, transform, counter=3, device="cpu")
    with pytest.raises(TypeError, match=r"scheduler must be a CosineAnnealingWarmbootingLR, .*got int"):
        ResizeLoader(loader, transform, device="cpu", scheduler=3)
    with pytest.raises(ValueError, match=r"steps_per_epoch must be an int >= 1, got 0"):
        ResizeLoader(_Unsized(), transform, device="cpu", steps_per_epoch=0)
    with pytest.raises(ValueError, match=r"epoch_to_start=2 is for a new counter, but a counter was given"):
        wrap(loader, 16, 32, device="cpu", counter=StepCounter(3), epoch_to_start=2)
    with pytest.raises(TypeError, match=r"steps_per_epoch must be an int, got '3'"):
        ResizeLoader(loader, transform, counter=StepCounter(3), device="cpu", steps_per_epoch="3")
    with pytest.raises(TypeError, match=r"format must be a BatchFormat or None, got 'NHWC'"):
        wrap(loader, 16, 32, device="cpu", format="NHWC")
    with pytest.raises(TypeError, match=r"scheduler=ReduceLROnPlateau needs a metric at each step"):
        wrap(loader, 16, 32, device="cpu", scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer))
    with pytest.raises(TypeError, match=r"counter must be a StepCounter or None, got int"):
        wrap(loader, 16, 32, device="cpu", counter=0)
    with pytest.raises(TypeError, match=r"loader must be an iterable of batches \(a DataLoader\), got NoneType"):
        wrap(None, 16, 32, device="cpu")
    # A stepper's own counter of another kind is its business: the loader makes its own.
    assert isinstance(ResizeLoader(loader, transform, device="cpu", scheduler=_CountedStepper(3)).counter, StepCounter)


class _CountedStepper:
    """A custom stepper with a ``counter`` attribute that is not a StepCounter, and no state."""

    def __init__(self, counter):
        self.counter = counter

    def before_batch(self):
        pass

    def after_batch(self):
        pass

    def after_epoch(self):
        pass


def test_a_scheduler_without_state_saves_none():
    stepper = _CountedStepper(None)
    wrapped = wrap(DataLoader(_tensor_data(), batch_size=4), 16, 32, device="cpu", scheduler=stepper)
    list(wrapped)
    state = wrapped.state_dict()
    assert state["scheduler"] is None and state["counter"]["epoch"] == 1
    other = wrap(DataLoader(_tensor_data(), batch_size=4), 16, 32, device="cpu", scheduler=_CountedStepper(None))
    other.load_state_dict(state)
    assert other.counter.epoch == 1


class _Unsized:
    def __iter__(self):
        yield torch.zeros(1, 3, 8, 8, dtype=torch.uint8)


class _Wrapped:
    """A loader with a multi-scale policy and a warmboot scheduler, built the same way every time."""

    def __init__(self, lower=16, upper=64, multiple=16, seed=9, batch_size=4, lr=0.1):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        batchs = -(-10 // batch_size)
        self.scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=5, steps=[3], batchs=batchs, warmup_epoch=1)
        loader = DataLoader(_tensor_data(), batch_size=batch_size)
        self.loader = wrap(
            loader,
            lower,
            upper,
            multiple=multiple,
            device="cpu",
            scheduler=self.scheduler,
            max_first_steps=2,
            seed=seed,
        )

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)


def _epochs(wrapped, n):
    return [
        (tuple(images.shape[2:]), wrapped.scheduler.get_last_lr()) for _ in range(n) for images, _ in wrapped.loader
    ]


def test_wrap_for_a_resumed_process():
    wrapped = wrap(DataLoader(_tensor_data(), batch_size=4), 16, 32, device="cpu", epoch_to_start=3)
    assert (wrapped.counter.epoch, wrapped.counter.global_step, wrapped.counter.absolute_step) == (3, 0, 9)
    assert [tuple(images.shape[2:]) for images, _ in wrapped] == [(32, 32)] * 3  # max size first again


def test_bad_state():
    wrapped = _Wrapped().loader
    state = wrapped.state_dict()
    with pytest.raises(ValueError, match=r"the state has no scheduler but this loader has one"):
        wrapped.load_state_dict({**state, "scheduler": None})
    with pytest.raises(ValueError, match=r"missing keys \['policy'\]"):
        wrapped.load_state_dict({"counter": state["counter"], "scheduler": state["scheduler"]})
    list(wrapped)
    before = wrapped.state_dict()
    later = {
        **before,
        "counter": {**before["counter"], "epoch": 7},
        "scheduler": {**before["scheduler"], "last_epoch": 7},
    }
    with pytest.raises(ValueError, match=r"saved with lower=8 but this policy has lower=16"):
        wrapped.load_state_dict({**later, "policy": {**before["policy"], "lower": 8}})
    assert wrapped.state_dict() == before  # nothing half-loaded
    with pytest.raises(ValueError, match=r"batches_done must be an int >= 0, got -1"):
        wrapped.load_state_dict({**later, "scheduler": {**later["scheduler"], "batches_done": -1}})
    assert wrapped.state_dict() == before


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"lower": 32}, r"saved with lower=16 but this policy has lower=32"),
        ({"upper": 128}, r"saved with upper=64 but this policy has upper=128"),
        ({"multiple": 8}, r"saved with multiple=16 but this policy has multiple=8"),
        ({"seed": 1}, r"saved with seed=9 but this policy has seed=1"),
        ({"batch_size": 2}, r"state\['steps_per_epoch'\] is 3 but this counter has steps_per_epoch=5"),
    ],
    ids=str,
)
def test_settings_are_configuration_not_state(setting, message):
    saved = _Wrapped()
    _epochs(saved, 1)
    state = saved.state_dict()
    other = _Wrapped(**setting)
    before = other.state_dict()
    with pytest.raises(ValueError, match=message):
        other.load_state_dict(state)
    assert other.state_dict() == before  # the user's settings stay, nothing was loaded


def test_base_lr_is_configuration():
    state = _Wrapped().state_dict()
    other = _Wrapped(lr=0.5)
    with pytest.raises(
        ValueError, match=r"saved with base_lrs=\[0.1\] but this scheduler's optimizer has base lrs \[0.5\]"
    ):
        other.load_state_dict(state)


def test_saving_inside_the_loop_counts_the_batch_in_hand():
    uninterrupted = _Wrapped()
    expected = _epochs(uninterrupted, 3)
    first = _Wrapped()
    seen = []
    for images, _ in first.loader:
        seen.append((tuple(images.shape[2:]), first.scheduler.get_last_lr()))
        if len(seen) == 2:
            state = first.state_dict()  # after batch 1's update: resume at batch 2
            break
    resumed = _Wrapped()
    resumed.load_state_dict(state)
    rest = _epochs(resumed, 3)  # batch 2 of epoch 0 (a resume mid-epoch finishes it), then epochs 1 and 2
    assert len(seen + rest) == len(expected)
    # The new process starts with max_first_steps=2 steps at the largest size, mid-epoch too; then
    # the sizes continue exactly, and the lrs continue exactly throughout.
    assert [size for size, _ in rest[:2]] == [(64, 64)] * 2
    assert [lr for _, lr in seen + rest] == [lr for _, lr in expected]
    assert seen + rest[2:] == expected[:2] + expected[4:]


def test_state_round_trip():
    original = _Wrapped()
    _epochs(original, 2)
    assert original.state_dict()["counter"] == {"steps_per_epoch": 3, "epoch": 2, "batch": 0}
    # After a reload the first two sizes are the max size again (a new process); the rest continue.
    assert_round_trip(_Wrapped, lambda w, n: _epochs(w, n)[2:], before=2, after=2)


def test_resume_in_a_second_process(tmp_path):
    script = textwrap.dedent(
        """
        import json, sys, torch
        from tests.test_loader import _Wrapped, _epochs
        mode, path = sys.argv[1], sys.argv[2]
        run = _Wrapped()
        if mode == "resume":
            run.load_state_dict(json.load(open(path + ".state")))
            print(json.dumps(_epochs(run, 2)))
        else:
            first = _epochs(run, 2)
            json.dump(run.state_dict(), open(path + ".state", "w"))
            print(json.dumps(first + _epochs(run, 2)))
        """
    )
    path = str(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def launch(mode):
        done = subprocess.run([sys.executable, "-c", script, mode, path], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return [(tuple(size), lr) for size, lr in json.loads(done.stdout)]

    uninterrupted = launch("full")
    resumed = launch("resume")
    assert resumed[:2] == [((64, 64), uninterrupted[6 + i][1]) for i in range(2)]  # max-size-first again
    assert resumed[2:] == uninterrupted[8:]  # then the same sizes and learning rates
    assert [lr for _, lr in resumed] == [lr for _, lr in uninterrupted[6:]]


def test_two_rank_ddp_gets_the_same_sizes(tmp_path):
    out = tmp_path / "sizes.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(ROOT / "tests" / "ddp_worker.py"),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert len(ranks) == 2 and len(ranks[0]["sizes"]) == 8
    assert ranks[0]["sizes"] == ranks[1]["sizes"]
    assert len(set(map(tuple, ranks[0]["sizes"]))) > 1  # multi-scale, not one size
    assert ranks[0]["indices"] != ranks[1]["indices"]  # the sampler split the data
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"])  # DDP kept the replicas in sync


@pytest.mark.cuda
def test_cuda_prefetch_path():
    data = DictImages(n=12, size=64)
    fmt = BatchFormat(layout="NHWC", boxes_key="boxes")
    loader = DataLoader(data, batch_size=4, num_workers=2, pin_memory=True, collate_fn=ResizeCollate(format=fmt))
    policy = MultiScalePolicy(32, 96, seed=1)
    transform = BatchResize(policy=policy, value_range=(0, 1), dtype=torch.float16, format=fmt)
    wrapped = ResizeLoader(loader, transform, device="cuda")
    for batch, index in zip(wrapped, range(3), strict=True):
        expected_size = policy.size_for(index, index)
        assert batch["image"].is_cuda and batch["image"].dtype == torch.float16
        assert tuple(batch["image"].shape[2:]) == expected_size
        assert batch["boxes"][0].is_cuda
        cpu = ResizeCollate(format=fmt)([data[i] for i in range(index * 4, index * 4 + 4)])["image"]
        reference = BatchResize(expected_size, value_range=(0, 1), dtype=torch.float32, format=fmt)(cpu)
        assert torch.allclose(batch["image"].float().cpu(), reference, atol=2e-3)


def test_wrap_takes_the_schedules_and_a_policy_of_ones_own():
    loader = DataLoader(_tensor_data(n=12, size=16), batch_size=2)  # 6 batches per epoch
    held = wrap(loader, 16, 64, device="cpu", interval=3, max_first_steps=0)
    assert [tuple(b.shape[2:]) for b, _ in held] == [held.policy.size_for(s, s) for s in range(6)]
    assert held.policy.size_for(0, 0) == held.policy.size_for(2, 2)  # held for 3 steps
    ramp = wrap(loader, (16, 32), (16, 32), device="cpu", ramp_epochs=(0, 2), max_first_steps=0, multiple=16)
    sizes = [tuple(b.shape[2:]) for _ in range(3) for b, _ in ramp]
    assert sizes[0] == (16, 16) and sizes[-1] == (32, 32) and sizes == sorted(sizes)  # a pure ramp over 2 epochs
    own = wrap(loader, device="cpu", policy=MultiScalePolicy(sizes=[32, 48], max_first_steps=0, seed=1))
    assert [tuple(b.shape[2:]) for b, _ in own] == [own.policy.size_for(s, s) for s in range(6)]
    with pytest.raises(ValueError, match=r"policy= is a policy of its own; it excludes lower, upper"):
        wrap(loader, 16, 32, device="cpu", policy=own.policy)
    with pytest.raises(ValueError, match=r"give ramp=\(0, 4\) \(steps\) or ramp_epochs=\(0, 1\), not both"):
        wrap(loader, (16, 32), (16, 32), device="cpu", ramp=(0, 4), ramp_epochs=(0, 1))


class Photos(Dataset):
    """uint8 HWC images of every size, with per-image boxes and keypoints and a label (picklable for workers)."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        height, width = (int(v) for v in torch.randint(20, 61, (2,), generator=g))
        image = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
        boxes = torch.tensor([[2.0, 3.0, width - 4.0, height - 2.0], [0.0, 0.0, 5.0, 5.0]])
        keypoints = torch.tensor([[width / 2, height / 2], [1.0, height - 1.0]])
        return {"image": image, "boxes": boxes, "keypoints": keypoints, "label": i}


PHOTOS = BatchFormat(layout="NHWC", boxes_key="boxes", keypoints_key="keypoints")


def _photo_run(workers, resample_in, crop, epochs=2, state=None, keep_state_after=None):
    """(size, images, boxes, keypoints, labels, lr) of every batch, and the loader's state where asked."""
    loader = DataLoader(Photos(), batch_size=4, num_workers=workers, collate_fn=ResizeCollate(format=PHOTOS))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=3, batchs=3, warmup_epoch=1)
    wrapped = wrap(
        loader, 16, 48, device="cpu", seed=5, max_first_steps=0, crop=crop, resample_in=resample_in,
        scheduler=scheduler, value_range=(0, 1), dtype=torch.float32,
    )  # fmt: skip
    if state is not None:
        wrapped.load_state_dict(state)
    seen, saved = [], None
    for epoch in range(epochs):
        for batch in wrapped:
            seen.append((tuple(batch["image"].shape), batch["image"], batch["boxes"], batch["keypoints"],
                         batch["label"].tolist(), optimizer.param_groups[0]["lr"]))  # fmt: skip
            optimizer.step()
        if epoch + 1 == keep_state_after:
            saved = wrapped.state_dict()
    return seen, saved


def _same_batches(a, b, atol=0.0):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x[0] == y[0] and x[4:] == y[4:]  # sizes, labels, learning rates
        assert torch.allclose(x[1], y[1], atol=atol, rtol=0)
        for p, q in zip(x[2] + x[3], y[2] + y[3], strict=True):  # boxes and keypoints
            assert torch.allclose(p, q, atol=1e-5)


@pytest.mark.parametrize("crop", ["center", "random"])
def test_images_of_every_size_train_alike_with_0_and_2_workers_on_both_sides(crop):
    workers0, _ = _photo_run(0, "workers", crop)
    workers2, _ = _photo_run(2, "workers", crop)
    device, _ = _photo_run(2, "device", crop)
    assert len({shape for shape, *_ in workers0}) > 1 and workers0[0][0][0] == 4  # multi-scale, dense NCHW
    _same_batches(workers0, workers2)  # the workers' own resample: identical
    _same_batches(workers0, device, atol=1 / 255 + 1e-6)  # uint8 from the workers: within one level


def test_images_of_every_size_resume_exactly():
    uninterrupted, _ = _photo_run(2, "workers", "random", epochs=3)
    _, state = _photo_run(2, "workers", "random", epochs=1, keep_state_after=1)
    resumed, _ = _photo_run(2, "workers", "random", epochs=2, state=state)
    _same_batches(uninterrupted[3:], resumed)


def test_a_folder_of_jpegs_trains_through_wrap(tmp_path):
    from PIL import Image

    for i, (width, height) in enumerate([(40, 30), (64, 64), (20, 50), (33, 70), (90, 41), (51, 52)]):
        pixels = torch.randint(
            0, 256, (height, width, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8
        )
        Image.fromarray(pixels.numpy()).save(tmp_path / f"{i}.jpg", quality=90)
    dataset = fastresize.ImageFolder(files=sorted(tmp_path.glob("*.jpg")))
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=ResizeCollate(format=BatchFormat("NHWC")))
    wrapped = wrap(loader, 16, 32, device="cpu", crop="center", value_range=(0, 1), dtype=torch.float32)
    shapes = [(tuple(images.shape), labels.tolist()) for images, labels in wrapped]
    assert shapes == [((3, 3, 32, 32), [-1] * 3)] * 2
    assert wrapped.resample_in == "workers"


class FloatPhotos(Photos):
    """Photos in float 0..255: declared (0, 1), they must be caught on the workers' path too."""

    def __getitem__(self, i):
        sample = super().__getitem__(i)
        return {**sample, "image": sample["image"].float()}


def test_the_range_check_sees_what_the_workers_resampled():
    loader = DataLoader(FloatPhotos(), batch_size=4, num_workers=2, collate_fn=ResizeCollate(format=PHOTOS))
    wrapped = wrap(loader, 16, 48, device="cpu", crop="center", value_range=(0, 1), dtype=torch.float32)
    assert wrapped.resample_in == "workers"
    with pytest.raises(ValueError, match=r"they look like 0..255 data"):
        list(wrapped)


def _opened(worker_id):
    assert torch.utils.data.get_worker_info().dataset.opened == "yes"  # the dataset's own attribute


class Opened(Photos):
    opened = "yes"


def test_where_the_workers_resample_and_where_they_cannot():
    def loader(**kwargs):
        return DataLoader(Opened(), batch_size=4, collate_fn=ResizeCollate(format=PHOTOS), **kwargs)

    # A worker_init_fn still reaches the dataset's attributes through the stamped copy.
    assert len(list(wrap(loader(num_workers=1, worker_init_fn=_opened), 16, 32, device="cpu", crop="full"))) == 3
    unordered = loader(num_workers=1, in_order=False)
    assert wrap(unordered, 16, 32, device="cpu", crop="full").resample_in == "device"
    with pytest.raises(ValueError, match=r"cannot resample: the DataLoader has in_order=False"):
        wrap(unordered, 16, 32, device="cpu", crop="full", resample_in="workers")
    custom = DataLoader(Opened(), batch_size=4, collate_fn=ResizeCollate(_stack_photos, format=PHOTOS))
    assert wrap(custom, 16, 32, device="cpu", crop="full").resample_in == "device"


def _stack_photos(samples):
    return torch.utils.data.default_collate(samples)


def test_a_ragged_batch_without_a_crop_rule_warns_that_it_is_centre_cropped():
    loader = DataLoader(Photos(), batch_size=4, collate_fn=ResizeCollate(format=PHOTOS))
    with pytest.warns(UserWarning, match=r"images of different sizes arrived with crop=None: .* pass crop='center'"):
        list(wrap(loader, 16, 32, device="cpu", resample_in="device"))


def test_the_crop_rule_is_checked_on_resume():
    def make(crop):
        loader = DataLoader(Photos(), batch_size=4, collate_fn=ResizeCollate(format=PHOTOS))
        return wrap(loader, 16, 32, device="cpu", crop=crop)

    state = make(fastresize.CropPolicy("random", seed=1)).state_dict()
    assert state["crop"]["rule"] == "random"
    with pytest.raises(ValueError, match=r"the state has a crop but this loader has none"):
        make(None).load_state_dict(state)
    with pytest.raises(ValueError, match=r"seed=1 .* seed=2|seed"):
        make(fastresize.CropPolicy("random", seed=2)).load_state_dict(state)
    old = {key: value for key, value in make(None).state_dict().items() if key != "crop"}
    make(None).load_state_dict(old)  # saved before crops were saved


def test_wrap_refuses_settings_a_given_policy_would_ignore():
    loader = DataLoader(_tensor_data(), batch_size=2)
    policy = MultiScalePolicy(16, 32)
    with pytest.raises(ValueError, match=r"policy= is a policy of its own; it excludes seed, side, which build one"):
        wrap(loader, device="cpu", policy=policy, seed=7, side="short")
    with pytest.raises(ValueError, match=r"ramp_epochs must be \(first, last\) epochs with 0 <= first <= last, got"):
        wrap(loader, (16, 32), (16, 32), device="cpu", ramp_epochs=(5, 2))
