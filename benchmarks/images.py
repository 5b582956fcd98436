"""A generated folder of JPEGs of mixed sizes, for the loader benchmarks: ``python -m benchmarks.images DIR``.

Each image is a colour gradient with a few rectangles and discs, a soft texture and a little grain:
structure a JPEG encoder treats as it treats photos, so the files' sizes and decode times are
realistic (pure noise would be far larger and slower, flat colours far smaller and faster). The
images are a pure function of ``(seed, index)``: the same arguments give the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _pixels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One image: uint8 ``(height, width, 3)``."""
    y = (np.arange(height, dtype=np.float32) / height)[:, None, None]  # broadcast, never a full grid
    x = (np.arange(width, dtype=np.float32) / width)[None, :, None]
    corner = rng.uniform(0, 255, (4, 3)).astype(np.float32)  # a bilinear gradient between four colours
    image = corner[0] * (1 - x) * (1 - y) + corner[1] * x * (1 - y) + corner[2] * (1 - x) * y + corner[3] * x * y
    for _ in range(int(rng.integers(2, 6))):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        cy, cx = rng.uniform(0, 1, 2).tolist()
        ry, rx = rng.uniform(0.05, 0.3, 2).tolist()
        if rng.random() < 0.5:
            inside = (np.abs(y - cy) < ry) & (np.abs(x - cx) < rx)
        else:
            inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
        image = np.where(inside, 0.3 * image + 0.7 * colour, image)
    frequency, phase = rng.uniform(4, 40, 2), rng.uniform(0, 2 * np.pi, 2)
    texture = 12 * np.sin(frequency[0] * x + phase[0]) * np.sin(frequency[1] * y + phase[1])
    grain = 3 * rng.standard_normal((height, width, 1), dtype=np.float32)  # luminance grain, as a sensor's
    return np.clip(image + texture + grain + 0.5, 0, 255).astype(np.uint8)


def make_jpeg_folder(
    root: str | Path,
    count: int = 400,
    low: int = 300,
    high: int = 600,
    seed: int = 0,
    quality: int = 90,
    *,
    classes: int = 4,
) -> list[Path]:
    """Write ``count`` JPEGs of mixed sizes into class folders under ``root`` and return their paths.

    Image ``i`` goes to ``root/class_{i % classes}/{i:05d}.jpg``, so that both
    ``fastresize.ImageFolder(root)`` (class folders) and a plain list of the files read it. Its
    height and width are drawn independently and uniformly from ``[low, high]``. Existing files of
    those names are overwritten.

    Args:
        root: The folder (created if need be).
        count: The number of images, ``>= 1``.
        low: The smallest side, ``>= 8``.
        high: The largest side, ``>= low``.
        seed: Seed of the images: the same arguments give the same files.
        quality: JPEG quality, 1..95 (Pillow's scale).
        classes: The number of class folders, ``>= 1``.

    Returns:
        The files, in the order ``fastresize.ImageFolder(root)`` reads them.

    Raises:
        ValueError: an argument out of range.
        ImportError: Pillow is not installed.
    """
    if count < 1 or classes < 1 or not 8 <= low <= high or not 1 <= quality <= 95:
        raise ValueError(
            f"need count >= 1, classes >= 1, 8 <= low <= high and 1 <= quality <= 95; got count={count}, "
            f"classes={classes}, low={low}, high={high}, quality={quality}"
        )
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError('make_jpeg_folder needs Pillow: pip install "fastresize[data]"') from error
    root = Path(root)
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        height, width = (int(v) for v in rng.integers(low, high + 1, 2))
        path = root / f"class_{i % classes}" / f"{i:05d}.jpg"
        Image.fromarray(_pixels(rng, height, width)).save(path, format="JPEG", quality=quality)
        paths.append(path)
    return sorted(paths)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("root", type=Path, help="the folder to write into")
    parser.add_argument("--count", type=int, default=400, help="number of images (default 400)")
    parser.add_argument("--low", type=int, default=300, help="smallest side (default 300)")
    parser.add_argument("--high", type=int, default=600, help="largest side (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images (default 0)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    parser.add_argument("--classes", type=int, default=4, help="number of class folders (default 4)")
    args = parser.parse_args(argv)
    paths = make_jpeg_folder(args.root, args.count, args.low, args.high, args.seed, args.quality, classes=args.classes)
    total = sum(p.stat().st_size for p in paths)
    print(
        f"wrote {len(paths)} JPEGs ({total / 2**20:.1f} MiB, {total / len(paths) / 1024:.0f} KiB each) to {args.root}"
    )


if __name__ == "__main__":
    main()
