"""The main job: train a small conv autoencoder with multi-scale batches through a wrapped DataLoader."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fastresize._batch import BatchFormat
from fastresize._checks import check_int
from fastresize.collate import ResizeCollate
from fastresize.counter import StepCounter
from fastresize.folder import ImageFolder, find_images
from fastresize.loader import wrap
from fastresize.scheduler import CosineAnnealingWarmbootingLR


class SyntheticImages(Dataset[torch.Tensor]):
    """Deterministic uint8 CHW images: a colour gradient with a bright rectangle and a disc.

    Args:
        count: Number of images.
        size: Side length of every image.
    """

    def __init__(self, count: int = 64, size: int = 128) -> None:
        self.count, self.size = count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} is out of range for {self.count} images")
        g = torch.Generator().manual_seed(index)
        ramp = torch.linspace(0, 1, self.size)
        colours = torch.rand(2, 3, 1, 1, generator=g)
        image = colours[0] * ramp.view(1, -1, 1) + colours[1] * ramp.view(1, 1, -1)
        y0, x0 = (torch.randint(0, self.size // 2, (2,), generator=g)).tolist()
        image[:, y0 : y0 + self.size // 3, x0 : x0 + self.size // 4] = torch.rand(3, 1, 1, generator=g)
        yy, xx = torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")
        cy, cx = torch.randint(self.size // 4, 3 * self.size // 4, (2,), generator=g).tolist()
        image[:, (yy - cy) ** 2 + (xx - cx) ** 2 < (self.size // 6) ** 2] = torch.rand(3, 1, generator=g)
        return (image.clamp(0, 1) * 255).round().to(torch.uint8)


class ConvAutoencoder(nn.Module):
    """A small conv autoencoder (downsamples by 4): any side that is a multiple of 16 round-trips."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))  # type: ignore[no-any-return]


@dataclass
class StepRecord:
    """What one training step saw."""

    step: int
    epoch: int
    size: tuple[int, int]
    lr: float
    loss: float
    images_per_second: float


def run_demo(
    steps: int = 48,
    batch_size: int = 8,
    workers: int = 2,
    lower: int = 64,
    upper: int = 128,
    image_size: int = 128,
    images: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | None = None,
    data: str | None = None,
    ramp: tuple[int, int] | None = None,
    progress: bool = True,
) -> list[StepRecord]:
    """Train the autoencoder for ``steps`` steps and return what every step saw.

    With ``data``, the workers decode the folder's images (:class:`~fastresize.ImageFolder`, each
    at its own size) and every image is centre-cropped and resized once, straight to the step's
    size: by the workers on the CPU, by the device on CUDA. Synthetic images are one size, handed
    over as uint8 NCHW batches and resized on the device. Either way the loader converts them to
    float in ``[-1, 1]``, and drives the warmboot scheduler. With ``ramp=(first, last)`` (epochs)
    the size grows from ``lower`` to ``upper`` between those epochs, a progressive resize, and the
    first steps still use ``upper``, the largest size of the whole run.
    """
    check_int("steps", steps, minimum=1)
    check_int("image_size", image_size, minimum=1)
    torch.manual_seed(seed)
    dataset: Dataset[Any]
    if data is not None:
        dataset, layout, crop = _images_of(data), "NHWC", "center"
    else:
        dataset, layout, crop = SyntheticImages(images, image_size), "NCHW", None
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=ResizeCollate(format=BatchFormat(layout=layout)),
        generator=torch.Generator().manual_seed(seed),
    )
    steps_per_epoch = len(loader)
    epochs = max(2, math.ceil(steps / steps_per_epoch))
    model = ConvAutoencoder()
    counter = StepCounter(steps_per_epoch)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = CosineAnnealingWarmbootingLR(
        optimizer, epochs, steps=[max(2, epochs // 2)] if epochs > 3 else [], warmup_epoch=1, counter=counter
    )
    bounds = (lower, upper) if ramp is None else ((lower, upper), (lower, upper))
    wrapped = wrap(
        loader,
        *bounds,
        ramp_epochs=None if ramp is None else (ramp[0], ramp[1]),
        device=device,
        seed=seed,
        scheduler=scheduler,
        value_range=(-1, 1),
        dtype=torch.float32,
        crop=crop,
    )
    model.to(wrapped.device)
    records: list[StepRecord] = []
    bar = tqdm(total=steps, disable=not progress, unit="step", dynamic_ncols=True)
    while len(records) < steps:
        start = time.perf_counter()
        for batch in wrapped:
            batch = batch[0] if isinstance(batch, list) else batch  # an image folder's (images, labels)
            current_lr = optimizer.param_groups[0]["lr"]
            loss = nn.functional.mse_loss(model(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            elapsed = time.perf_counter() - start
            record = StepRecord(
                len(records),
                len(records) // steps_per_epoch,
                tuple(batch.shape[-2:]),
                current_lr,
                loss.item(),
                batch.shape[0] / elapsed,
            )
            records.append(record)
            bar.set_postfix(
                size=f"{record.size[0]}x{record.size[1]}",
                lr=f"{record.lr:.2e}",
                loss=f"{record.loss:.4f}",
                img_s=f"{record.images_per_second:.0f}",
            )
            bar.update(1)
            if len(records) == steps:
                break
            start = time.perf_counter()
    bar.close()
    return records


def _images_of(data: str) -> ImageFolder:
    """The images of the folder ``data``, recursively (no class folders needed)."""
    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"--data must be a folder of images, got {data!r}")
    files = find_images(root)
    if not files:
        raise ValueError(f"no images found under {data!r}")
    return ImageFolder(files=files, on_error="skip")  # a demo goes on past a bad file, with a warning


def print_table(records: list[StepRecord], device: str, file: TextIO) -> None:
    """Print one row per step: its size, learning rate, loss and throughput."""
    print(f"device: {device}", file=file)
    print(f"{'step':>5} {'epoch':>5} {'size':>9} {'lr':>10} {'loss':>8} {'img/s':>8}", file=file)
    for r in records:
        size = f"{r.size[0]}x{r.size[1]}"
        print(f"{r.step:>5} {r.epoch:>5} {size:>9} {r.lr:>10.3e} {r.loss:>8.4f} {r.images_per_second:>8.1f}", file=file)


def add_arguments(parser: Any) -> None:
    """Declare the demo's command-line options on an ``argparse`` parser."""
    parser.add_argument("--steps", type=int, default=48, help="training steps")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--lower", type=int, default=64, help="smallest training size")
    parser.add_argument("--upper", type=int, default=128, help="largest training size, used for the first steps")
    parser.add_argument("--image-size", type=int, default=128, help="side length of the synthetic images")
    parser.add_argument("--images", type=int, default=64, help="number of synthetic images (without --data)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the warmboot scheduler")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sizes, the shuffling and the model")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument(
        "--data",
        default=None,
        help="train on this folder of images, each at its own size, centre-cropped and resized once (JPEG through "
        "kornia-rs; other formats need Pillow) instead of synthetic ones",
    )
    parser.add_argument(
        "--ramp",
        type=int,
        nargs=2,
        metavar=("FIRST", "LAST"),
        default=None,
        help="a progressive resize: the size grows from --lower to --upper between these epochs",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
