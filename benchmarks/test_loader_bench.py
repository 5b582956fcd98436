"""Images per second of the whole input pipeline: the original approach against fastresize.

* ``baseline``: workers hand over float32 batches; the training loop moves them to the device and
  resizes them with a NumPy random size draw (max size for the first 5 steps), as the original did.
* ``fastresize``: workers hand over uint8 batches (``ResizeCollate``); ``ResizeLoader`` copies them
  (pinned, non-blocking, one batch ahead on CUDA), converts them to float32 in [0, 1] and resizes
  them on the device.

One benchmark round is one epoch over the same synthetic images; workers persist across rounds so
their start-up is not timed. ``extra_info["images_per_second"]`` is derived from the median.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from benchmarks.conftest import DEVICES
from fastresize import ResizeCollate, wrap

IMAGES, SIDE, BATCH, LOWER, UPPER = 128, 256, 16, 128, 256


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


def _fastresize(workers: int, device: str):
    loader = DataLoader(
        Images(as_float=False), batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0,
        pin_memory=device == "cuda", collate_fn=ResizeCollate(),
    )  # fmt: skip
    wrapped = wrap(loader, LOWER, UPPER, device=device, value_range=(0, 1), dtype=torch.float32)

    def epoch() -> int:
        seen = sum(batch.shape[0] for batch in wrapped)
        if device == "cuda":
            torch.cuda.synchronize()
        return seen

    return epoch


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("pipeline", ["baseline", "fastresize"])
def test_pipeline(benchmark, pipeline, workers, device):
    benchmark.group = f"pipeline-{device}-workers{workers}"
    epoch = {"baseline": _baseline, "fastresize": _fastresize}[pipeline](workers, device)
    epoch()  # warm-up: workers start, allocator and kernels settle
    seen = benchmark.pedantic(epoch, rounds=5, iterations=1)
    assert seen == IMAGES
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_second"] = IMAGES / benchmark.stats.stats.median
