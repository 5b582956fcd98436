"""Images per second of the input pipeline: the hand-over from the workers alone, and the whole pipeline.

``test_handover`` (loader only, uint8 batches of 32 moved to the device, nothing else done with them):

* ``baseline``: the plain DataLoader (``pin_memory`` and ``non_blocking`` copies on CUDA);
* ``prefetcher``: :class:`DevicePrefetcher` with ``ring=False``, today's plain hand-over;
* ``ring``: :class:`DevicePrefetcher` with the batch ring (forced on for 0 workers on the CPU).

The CPU cases are small enough for CI; the CUDA case has the figures of the H100 measurement (1024
images of 3x512x512, 8 workers). ``FASTRESIZE_LOADER_BENCH=IMAGES,SIDE`` changes the sizes of both.

``test_pipeline``, the original approach against fastresize:

* ``baseline``: workers hand over float32 batches; the training loop moves them to the device and
  resizes them with a NumPy random size draw (max size for the first 5 steps), as the original did.
* ``fastresize``: workers hand over uint8 batches (``ResizeCollate``, through the batch ring where it
  applies); ``ResizeLoader`` copies them (pinned, non-blocking, one batch ahead on CUDA), converts
  them to float32 in [0, 1] and resizes them on the device;
* ``noring``: the same with ``ring=False``, the plain hand-over.

One benchmark round is one epoch over the same synthetic images; workers persist across rounds so
their start-up is not timed. ``extra_info["images_per_second"]`` is derived from the median.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from benchmarks.conftest import DEVICES
from benchmarks.images import make_jpeg_folder
from fastresize import BatchFormat, DevicePrefetcher, ImageFolder, ResizeCollate, wrap
from fastresize.folder import find_images

IMAGES, SIDE, BATCH, LOWER, UPPER = 128, 256, 16, 128, 256


def _time_epochs(benchmark: Any, epoch: Callable[[], int], images: int, rounds: int) -> None:
    """Run one untimed epoch (the warm-up), then ``rounds`` timed ones; each must see every image.
    Records ``images_per_second`` from the median."""
    epoch()
    assert benchmark.pedantic(epoch, rounds=rounds, iterations=1) == images
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_second"] = images / benchmark.stats.stats.median


class Images(Dataset):
    """Random uint8 images, decoded once; ``as_float`` gives what the baseline's workers produce."""

    def __init__(self, as_float: bool) -> None:
        g = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, 256, (IMAGES, 3, SIDE, SIDE), generator=g, dtype=torch.uint8)
        self.as_float = as_float

    def __len__(self) -> int:
        return IMAGES

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.data[index].clone()
        return image.float().div_(255) if self.as_float else image


def _baseline(workers: int, device: str):
    loader = DataLoader(
        Images(as_float=True), batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0,
        pin_memory=device == "cuda",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    step = 0

    def epoch() -> int:
        nonlocal step
        seen = 0
        for x in loader:
            x = x.to(device, non_blocking=True)
            new_size = UPPER if step <= 4 else int(rng.choice(np.arange(LOWER, UPPER + 16, 16)))
            if new_size != x.shape[2]:
                x = F.interpolate(x, size=new_size, mode="bicubic")
            x = x.detach()
            seen += x.shape[0]
            step += 1
        if device == "cuda":
            torch.cuda.synchronize()
        return seen

    return epoch


def _fastresize(workers: int, device: str, ring: bool | None = None):
    loader = DataLoader(
        Images(as_float=False), batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0,
        pin_memory=device == "cuda", collate_fn=ResizeCollate(),
    )  # fmt: skip
    wrapped = wrap(loader, LOWER, UPPER, device=device, value_range=(0, 1), dtype=torch.float32, ring=ring)

    def epoch() -> int:
        seen = sum(batch.shape[0] for batch in wrapped)
        if device == "cuda":
            torch.cuda.synchronize()
        return seen

    return epoch


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("pipeline", ["baseline", "fastresize", "noring"])
def test_pipeline(benchmark, pipeline, workers, device):
    benchmark.group = f"pipeline-{device}-workers{workers}"
    if pipeline == "baseline":
        epoch = _baseline(workers, device)
    else:
        epoch = _fastresize(workers, device, ring=False if pipeline == "noring" else None)
    _time_epochs(benchmark, epoch, IMAGES, rounds=5)  # warm-up: workers start, allocator and kernels settle


def _handover_sizes(device: str) -> tuple[int, int]:
    """(images, side) of one epoch of ``test_handover``."""
    knob = os.environ.get("FASTRESIZE_LOADER_BENCH")
    if knob:
        images, side = (int(v) for v in knob.split(","))
        return images, side
    return (1024, 512) if device == "cuda" else (256, 128)


_DATA: dict[tuple[int, int], torch.Tensor] = {}


class Decoded(Dataset):
    """Random uint8 CHW images held in memory; each sample is a fresh copy, as if just decoded."""

    def __init__(self, images: int, side: int) -> None:
        if (images, side) not in _DATA:  # the CUDA case holds 0.8 GB: build it once
            g = torch.Generator().manual_seed(0)
            _DATA[images, side] = torch.randint(0, 256, (images, 3, side, side), generator=g, dtype=torch.uint8)
        self.data = _DATA[images, side]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index].clone()


@pytest.mark.parametrize(
    ("device", "workers"),
    [("cpu", 0), ("cpu", 2), pytest.param("cuda", 8, marks=pytest.mark.cuda)],
    ids=["cpu-workers0", "cpu-workers2", "cuda-workers8"],
)
@pytest.mark.parametrize("pipeline", ["baseline", "prefetcher", "ring"])
def test_handover(benchmark, pipeline, device, workers):
    images, side = _handover_sizes(device)
    benchmark.group = f"handover-{device}-workers{workers}-{images}x{side}"
    loader = DataLoader(
        Decoded(images, side), batch_size=32, num_workers=workers, persistent_workers=workers > 0,
        pin_memory=pipeline == "baseline" and device == "cuda", collate_fn=ResizeCollate(),
    )  # fmt: skip
    if pipeline == "baseline":

        def batches():
            return (batch.to(device, non_blocking=True) for batch in loader)
    else:
        prefetcher = DevicePrefetcher(loader, device, ring=pipeline == "ring")

        def batches():
            return iter(prefetcher)

    def epoch() -> int:
        seen = sum(batch.shape[0] for batch in batches())
        if device == "cuda":
            torch.cuda.synchronize()
        return seen

    _time_epochs(benchmark, epoch, images, rounds=10)  # warm-up: workers start, slots are made and page-locked
    if pipeline == "ring":
        assert prefetcher.ring is not None and prefetcher.ring.counts["plain"] == 0


def _conv_net(device: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for index in range(4):
        layers += [torch.nn.Conv2d(3 if index == 0 else 32, 32, 3, padding=1), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Conv2d(32, 3, 3, padding=1)).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=1e-3)


@pytest.mark.parametrize(
    ("device", "workers"),
    [("cpu", 2), pytest.param("cuda", 8, marks=pytest.mark.cuda)],
    ids=["cpu-workers2", "cuda-workers8"],
)
@pytest.mark.parametrize("pipeline", ["handwritten", "noring", "fastresize"])
def test_training_step(benchmark, pipeline, device, workers):
    """One epoch of a conv net's training steps: the loader must not slow the step down.

    ``handwritten`` is a careful loop without fastresize: uint8 batches, ``pin_memory``,
    ``non_blocking`` copies, the seed's ``F.interpolate(x.float() / 255)`` at the policy's sizes.
    ``noring`` and ``fastresize`` are ``wrap`` without and with the batch ring.
    """
    # The CPU case is kept small: a conv net's steps on 2 cores dwarf the loader, and CI runs it once.
    images, side = _handover_sizes(device) if device == "cuda" else (64, 64)
    benchmark.group = f"train-{device}-workers{workers}-{images}x{side}"
    loader = DataLoader(
        Decoded(images, side), batch_size=32, num_workers=workers, persistent_workers=True,
        pin_memory=pipeline == "handwritten" and device == "cuda", collate_fn=ResizeCollate(),
    )  # fmt: skip
    lower, upper = side // 2, side
    model, optimizer = _conv_net(device)
    if pipeline == "handwritten":
        policy = wrap(loader, lower, upper, device=device).policy
        step = 0

        def batches():
            nonlocal step
            for batch in loader:
                size = policy.size_for(step, step)
                step += 1
                x = batch.to(device, non_blocking=True).float() / 255
                yield F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp_(0, 1)
    else:
        wrapped = wrap(
            loader, lower, upper, device=device, value_range=(0, 1), dtype=torch.float32,
            ring=False if pipeline == "noring" else None,
        )  # fmt: skip

        def batches():
            return iter(wrapped)

    def epoch() -> int:
        seen = 0
        for batch in batches():
            loss = (model(batch) - batch).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += batch.shape[0]
        if device == "cuda":
            torch.cuda.synchronize()
        return seen

    _time_epochs(benchmark, epoch, images, rounds=5)  # warm-up: workers start, kernels and allocator settle


FOLDER_BATCH, FOLDER_SIDE = 32, 256
FOLDER_WORKERS = {"cpu": 2, "cuda": 8}


def _folder_size() -> tuple[int, int]:
    """(images, rounds) of ``test_folder_pipeline``: ``FASTRESIZE_FOLDER_BENCH=IMAGES,ROUNDS``; small for CI."""
    knob = os.environ.get("FASTRESIZE_FOLDER_BENCH")
    if knob:
        images, rounds = (int(v) for v in knob.split(","))
        return images, rounds
    return 64, 3


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jpegs")
    make_jpeg_folder(root, count=_folder_size()[0], low=300, high=600)
    return root


class PillowCropped(Dataset):
    """Today's recipe in a worker: decode with Pillow, resize the short side to ``side``, centre-crop, to HWC."""

    def __init__(self, root: Path, side: int) -> None:
        self.files, self.side = find_images(root), side

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[index]) as opened:
            image = opened.convert("RGB")
        scale = self.side / min(image.size)
        width, height = max(self.side, round(image.width * scale)), max(self.side, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = (width - self.side) // 2, (height - self.side) // 2
        image = image.crop((left, top, left + self.side, top + self.side))
        return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(self.side, self.side, 3)


def _worker_seconds() -> float:
    """CPU seconds (user + system) that this process's children, the DataLoader workers, have used so far."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as children:
            for pid in children.read().split():
                try:
                    with open(f"/proc/{pid}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except FileNotFoundError:
                    continue
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _folder_recipe(recipe: str, root: Path, device: str) -> Callable[[], int]:
    """One epoch of a folder of JPEGs, batches of 32, sizes 128..256, through ``recipe``."""
    fmt = BatchFormat(layout="NHWC")
    dataset = PillowCropped(root, FOLDER_SIDE) if recipe == "today" else ImageFolder(files=find_images(root))
    loader = DataLoader(
        dataset, batch_size=FOLDER_BATCH, num_workers=FOLDER_WORKERS[device], persistent_workers=True,
        collate_fn=ResizeCollate(format=fmt),
    )  # fmt: skip
    crop = None if recipe == "today" else "center"
    wrapped = wrap(loader, LOWER, UPPER, device=device, value_range=(0, 1), dtype=torch.float32, crop=crop)

    def epoch() -> int:
        seen = sum((batch[0] if isinstance(batch, list) else batch).shape[0] for batch in wrapped)
        if device == "cuda":
            torch.cuda.synchronize()
        return seen

    return epoch


@pytest.mark.parametrize("device", DEVICES)
def test_folder_pipeline(benchmark, device, jpeg_folder):
    """A folder of JPEGs of mixed sizes, two recipes interleaved round by round (a burst of load hits both):

    * ``today``: the workers decode with Pillow, centre-crop and resize to 256, and the device
      resizes the batch again to the step's size;
    * ``one_resample``: :class:`fastresize.ImageFolder` decodes with kornia-rs, and each image is
      cropped and resized once, straight to the step's size: by the workers on the CPU, by the
      device on CUDA (``resample_in="auto"``).

    Records, per recipe, the median images/s and its spread over the rounds, the workers' CPU time
    per image, and the ratio of the medians (``one_resample`` over ``today``).
    """
    benchmark.group = f"folder-{device}-workers{FOLDER_WORKERS[device]}"
    images, rounds = _folder_size()
    recipes = {name: _folder_recipe(name, jpeg_folder, device) for name in ("today", "one_resample")}
    for epoch in recipes.values():
        assert epoch() == images  # warm-up: workers start, slots are made
    seconds: dict[str, list[float]] = {name: [] for name in recipes}
    worker: dict[str, list[float]] = {name: [] for name in recipes}

    def both() -> None:
        order = list(recipes) if len(seconds["today"]) % 2 == 0 else list(reversed(recipes))
        for name in order:
            cpu, start = _worker_seconds(), time.perf_counter()
            assert recipes[name]() == images
            seconds[name].append(time.perf_counter() - start)
            worker[name].append((_worker_seconds() - cpu) / images)

    benchmark.pedantic(both, rounds=rounds, iterations=1)
    for name in recipes:
        rates = [images / s for s in seconds[name]]
        benchmark.extra_info[f"{name}_images_per_second"] = statistics.median(rates)
        benchmark.extra_info[f"{name}_spread"] = [min(rates), max(rates)]
        benchmark.extra_info[f"{name}_worker_ms_per_image"] = 1000 * statistics.median(worker[name])
    benchmark.extra_info["ratio"] = statistics.median(seconds["today"]) / statistics.median(seconds["one_resample"])
