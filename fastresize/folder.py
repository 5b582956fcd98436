"""An image-folder dataset that decodes in the DataLoader workers and hands over each image at its own size.

JPEG files are decoded with kornia-rs (libjpeg-turbo, installed with kornia; about 1.6x Pillow's speed
per core, with identical pixels), every other format with Pillow (``pip install "fastresize[data]"``).
Images come out as uint8 ``(H, W, 3)`` RGB tensors, channels last as decoders write them; crop and
resize happen afterwards, once, at the step's size.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fastresize._checks import check_choice, check_int

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The suffixes :class:`ImageFolder` and :func:`find_images` read by default (torchvision's list)."""
UNLABELLED = -1
"""The label of every image of a plain list of files: an int, so that the default collate batches it."""
ON_ERROR = ("raise", "skip")
_JPEG_MAGIC = b"\xff\xd8\xff"


@functools.cache
def _jpeg_decoder() -> Any:
    """kornia-rs's libjpeg-turbo decoder class, or ``None`` where this kornia-rs has none."""
    try:
        import kornia_rs
    except ImportError:  # pragma: no cover - kornia depends on kornia-rs
        return None
    io_module = getattr(kornia_rs, "io", None)
    return getattr(io_module, "ImageDecoder", None) or getattr(kornia_rs, "ImageDecoder", None)


def _decode_kornia(data: bytes) -> torch.Tensor | None:
    """Decode a JPEG with kornia-rs; ``None`` where it cannot (no decoder, or a JPEG it refuses)."""
    decoder = _jpeg_decoder()
    if decoder is None:
        return None
    try:
        # A fresh decoder per image: it costs under a microsecond, shares no state between threads,
        # and a decoder that failed on one file cannot fail the next.
        array = decoder().decode(data)
    except Exception:  # kornia-rs raises a bare Exception; CMYK JPEGs land here and Pillow reads them
        return None
    if not (isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3):
        return None
    return torch.from_numpy(array)


def _decode_pillow(data: bytes) -> torch.Tensor:
    """Decode any format Pillow reads, converted to RGB as torchvision's loader converts it."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            'decoding images other than JPEG (PNG, BMP, WebP, TIFF...) needs Pillow: pip install "fastresize[data]"'
        ) from error
    with Image.open(io.BytesIO(data)) as opened:
        if opened.mode.startswith("I"):  # 16-bit greyscale: convert("RGB") would clip it at 255
            if opened.mode == "I" and np.asarray(opened).max(initial=0) > 65535:
                raise ValueError(f"a {opened.mode!r} image with values above 65535 has no 8-bit reading")
            grey = (np.asarray(opened).astype(np.int64) >> 8).astype(np.uint8)  # the top 8 of 16 bits
            return torch.from_numpy(np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2)))
        rgb = opened.convert("RGB")
    return torch.from_numpy(np.array(rgb, dtype=np.uint8))


class UnreadableImage(OSError):
    """A file that is not an image this package can decode (corrupt, truncated, of another kind)."""


def read_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read and decode one image file to a uint8 ``(H, W, 3)`` RGB tensor at the file's own size.

    JPEG (recognised by its first bytes, whatever the file's name) is decoded by kornia-rs; a JPEG it
    refuses (CMYK) and every other format go to Pillow. Greyscale is repeated on the three
    channels, palette images take their colours, and an alpha channel is dropped (not composited),
    as torchvision's ``pil_loader`` does (``convert("RGB")``); 16-bit greyscale keeps its top 8 bits
    (``convert`` would clip it at 255). EXIF orientation is not applied, as in torchvision's
    ``ImageFolder``.

    Args:
        path: The file.

    Returns:
        The image, ``(H, W, 3)`` uint8, channels last.

    Raises:
        UnreadableImage: the file cannot be decoded, or does not exist; the message names the file.
        OSError: the file could not be read for a passing reason (too many open files, an I/O
            error): as the system raised it.
        ImportError: the file needs Pillow and Pillow is not installed.
    """
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
        raise UnreadableImage(
            f"cannot read the image {os.fspath(path)!r}: {error}; fix or remove the file, or pass "
            "on_error='skip' to ImageFolder"
        ) from error
    try:
        image = _decode_kornia(data) if data[:3] == _JPEG_MAGIC else None
        return image if image is not None else _decode_pillow(data)
    except (ImportError, MemoryError):
        raise
    except Exception as error:
        raise UnreadableImage(
            f"cannot read the image {os.fspath(path)!r}: {type(error).__name__}: {error}; "
            "fix or remove the file, or pass on_error='skip' to ImageFolder"
        ) from error


def _check_extensions(extensions: Any) -> tuple[str, ...]:
    if not isinstance(extensions, (tuple, list)) or not extensions:
        raise ValueError(
            f"extensions must be a non-empty tuple of suffixes such as ('.jpg', '.png'), got {extensions!r}"
        )
    for suffix in extensions:
        if not isinstance(suffix, str) or not suffix.startswith("."):
            raise ValueError(f"extensions must hold suffixes that start with '.', such as '.jpg'; got {suffix!r}")
    return tuple(s.lower() for s in extensions)


def find_images(root: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Return the image files under ``root``, recursively, following symbolic links, in torchvision's order.

    The folders are sorted by path and the files of each folder by name, as torchvision's
    ``make_dataset`` sorts them.

    Args:
        root: The folder.
        extensions: The suffixes to keep, compared without case.

    Raises:
        ValueError: ``root`` is not a folder, or a bad suffix.
    """
    suffixes = _check_extensions(extensions)
    if not os.path.isdir(root):
        raise ValueError(f"root must be a folder, got {os.fspath(root)!r}, which is not one")
    found: list[Path] = []
    for folder, _, names in sorted(os.walk(root, followlinks=True)):  # torchvision's order: by folder path
        found.extend(Path(folder, name) for name in sorted(names) if name.lower().endswith(suffixes))
    return found


class ImageFolder(Dataset[tuple[torch.Tensor, int]]):
    """The images of a folder of class folders, or of a list of files, as uint8 ``(H, W, 3)`` tensors.

    With ``root`` alone, it reads class folders as torchvision's ``ImageFolder`` does:
    ``root/<class>/**/<file>``, the class names sorted and numbered from 0 (``classes``,
    ``class_to_idx``), the files of each class sorted, only files with one of ``extensions``. With
    ``files``, it reads those files, in that order, each labelled :data:`UNLABELLED` (``-1``, an int,
    so that torch's default collate batches labels); ``root``, if given too, is the folder they
    are relative to. :func:`find_images` lists a folder without class folders.

    ``dataset[i]`` is ``(image, label)``: the image decoded by :func:`read_image`, uint8 ``(H, W, 3)``
    at the file's own size (declare ``layout="NHWC"``), and the label as an int.

    Unreadable files:
        * ``on_error="raise"`` (default): an ``OSError`` naming the file.
        * ``on_error="skip"``: ``dataset[i]`` returns the next readable file instead (``i + 1``,
          ``i + 2``... wrapping around: the epoch keeps its length and that file appears twice),
          warns once with the file's name and the error, and marks the file, so that it is never
          read again. The marks are in shared memory: :attr:`skipped` and :attr:`skipped_files`,
          read in the main process, count the distinct files that any process sharing this dataset
          (its DataLoader workers, fork or spawn) found unreadable so far. A dataset with no
          readable file raises ``OSError``. Only a file that cannot be decoded (or is gone) is
          skipped: a passing error (too many open files, an I/O error, out of memory) raises.

    The dataset holds no open file and no per-file Python object (the paths are one byte buffer),
    so it pickles small for spawned workers and forked workers do not copy it page by page.

    Args:
        root: The folder of class folders, or the folder ``files`` are relative to.
        files: A list of image files; their labels are ``-1``.
        extensions: The suffixes read from class folders (compared without case).
        on_error: ``"raise"`` or ``"skip"``.

    Raises:
        TypeError: ``files`` is not a list of paths, or ``root`` is not a path.
        ValueError: neither ``root`` nor ``files``; a ``root`` that is not a folder, has no class
            folder, or has a class folder without images; an empty ``files``; a bad suffix or
            ``on_error``.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("cat", "dog"):
        ...     (root / name).mkdir()
        ...     Image.new("RGB", (40, 30), (200, 10, 10)).save(root / name / "a.jpg")
        >>> dataset = ImageFolder(root)
        >>> image, label = dataset[1]
        >>> dataset.classes, tuple(image.shape), image.dtype, label
        (['cat', 'dog'], (30, 40, 3), torch.uint8, 1)
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        files: Sequence[str | os.PathLike[str]] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        on_error: str = "raise",
    ) -> None:
        self.extensions = _check_extensions(extensions)
        self.on_error = check_choice("on_error", on_error, ON_ERROR)
        if root is not None and not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a path (str or os.PathLike), got {type(root).__name__}")
        self.root = None if root is None else Path(root)
        self.classes: list[str] = []
        if files is not None:
            paths = self._check_files(files)
            labels = [UNLABELLED] * len(paths)
        elif self.root is not None:
            paths, labels = self._scan_classes(self.root)
        else:
            raise ValueError("pass root (a folder of class folders) or files (a list of image files)")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        encoded = [os.fsencode(p) for p in paths]
        self._paths = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        self._labels = np.asarray(labels, dtype=np.int64)
        # Shared memory: every worker marks the files it could not read where the main process sees them.
        self._unreadable = torch.zeros(len(paths), dtype=torch.uint8)
        if self.on_error == "skip":
            self._unreadable.share_memory_()  # type: ignore[no-untyped-call]

    def _check_files(self, files: Any) -> list[Path]:
        if isinstance(files, (str, bytes, os.PathLike)) or not isinstance(files, Sequence):
            raise TypeError(f"files must be a list of paths, got {type(files).__name__}; wrap one file as [file]")
        if not files:
            raise ValueError("files is empty; pass at least one image file")
        paths = []
        for i, file in enumerate(files):
            if not isinstance(file, (str, os.PathLike)):
                raise TypeError(f"files[{i}] must be a path (str or os.PathLike), got {type(file).__name__}")
            paths.append(Path(file) if self.root is None else self.root / file)
        return paths

    def _scan_classes(self, root: Path) -> tuple[list[Path], list[int]]:
        if not root.is_dir():
            raise ValueError(f"root must be a folder of class folders, got {str(root)!r}, which is not a folder")
        self.classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        if not self.classes:
            raise ValueError(
                f"root={str(root)!r} has no class folder (root/<class>/<image>); for a folder without classes "
                "pass files=find_images(root)"
            )
        paths: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(self.classes):
            found = find_images(root / name, self.extensions)
            if not found:
                raise ValueError(
                    f"the class folder {str(root / name)!r} holds no file ending in {', '.join(self.extensions)}; "
                    "remove it or add its images"
                )
            paths.extend(found)
            labels.extend([label] * len(found))
        return paths, labels

    def __len__(self) -> int:
        return len(self._labels)

    def path(self, index: int) -> Path:
        """The file of sample ``index``."""
        i = self._index(index)
        start = int(self._ends[i - 1]) if i > 0 else 0
        return Path(os.fsdecode(self._paths[start : int(self._ends[i])].tobytes()))

    @property
    def targets(self) -> list[int]:
        """Every sample's label, in order (``-1`` for a list of files)."""
        return [int(label) for label in self._labels]

    @property
    def skipped(self) -> int:
        """How many distinct files were found unreadable and skipped so far, by any process (``on_error="skip"``)."""
        return int(self._unreadable.sum())

    @property
    def skipped_files(self) -> list[Path]:
        """The files counted by :attr:`skipped`, in index order."""
        return [self.path(int(i)) for i in self._unreadable.nonzero().view(-1)]

    def _index(self, index: int) -> int:
        i = check_int("index", index)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for an ImageFolder of {n} images")
        return i % n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = self._index(index)
        if self.on_error == "raise":
            return read_image(self.path(i)), int(self._labels[i])
        n = len(self)
        for j in ((i + k) % n for k in range(n)):
            if self._unreadable[j]:
                continue
            try:
                return read_image(self.path(j)), int(self._labels[j])
            except UnreadableImage as error:  # not a passing error: that one raises
                self._unreadable[j] = 1
                reason = f"{error.__cause__ or error}"
                warnings.warn(
                    f"skipped the unreadable image {os.fspath(self.path(j))!r} ({reason}): sample {i} is the next "
                    "readable file instead; ImageFolder.skipped counts them",
                    stacklevel=2,
                )
        raise OSError(f"none of the {n} files of this ImageFolder can be read (on_error='skip' skipped them all)")

    def __repr__(self) -> str:
        where = f"root={str(self.root)!r}, " if self.root is not None else ""
        return f"ImageFolder({where}{len(self)} images, {len(self.classes)} classes, on_error={self.on_error!r})"
