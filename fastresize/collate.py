"""The worker-side collate: a compact, contiguous batch in the batch format's layout, ready for the device."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info

from fastresize._batch import BatchFormat, Parts
from fastresize.ragged import RaggedImages
from fastresize.resample import Stamp, Stamped

Allocate = Callable[[int, int, bool], torch.Tensor | None]
"""``allocate(nbytes, count, ragged)``: a 1-D uint8 buffer of at least ``nbytes`` for ``count`` images
(of different sizes where ``ragged``), or ``None``."""

# What torch says when /dev/shm is full; not "Too many open files", which is another limit.
_NO_SHM = re.compile(r"unable to allocate shared memory|No space left on device|Cannot allocate memory", re.IGNORECASE)
SHM_ADVICE = (
    "/dev/shm, where DataLoader workers hand batches over, is full: give it room (`docker run --shm-size=8g`, "
    "or a larger tmpfs on /dev/shm), or lower num_workers, prefetch_factor or batch_size"
)


def shm_error(error: BaseException) -> bool:
    """Whether ``error`` says that shared memory could not be allocated."""
    return isinstance(error, (RuntimeError, OSError)) and _NO_SHM.search(str(error)) is not None


def _shared(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A buffer for a batch: shared memory in a worker (as ``default_collate`` does), so it crosses without a copy."""
    buffer = torch.empty(numel, dtype=dtype)
    return buffer.share_memory_() if get_worker_info() is not None else buffer  # type: ignore[no-untyped-call]


def _unstamped(samples: Any) -> tuple[Stamp | None, list[Any]]:
    """Check that ``samples`` is a batch, and take off the step stamps the loader may have put on it."""
    if not isinstance(samples, list):
        raise TypeError(
            f"ResizeCollate must be given a list of samples, got {type(samples).__name__}: a DataLoader "
            "with batch_size=None hands the collate one sample at a time; set batch_size=... (an int)"
        )
    if not samples:
        raise ValueError("ResizeCollate got an empty list of samples; the DataLoader's batches must not be empty")
    if not isinstance(samples[0], Stamped):
        return None, samples
    return samples[0].stamp, [sample.item for sample in samples]


class ResizeCollate:
    """Collate function for DataLoader workers: a compact, contiguous batch, ready for the device.

    It wraps the user's collate function and runs in the workers, so it does no CUDA work. uint8
    images stay uint8 (4x fewer bytes to move than float32); the device converts and resizes.

    * ``format`` (a :class:`~fastresize.BatchFormat`, shared with the device transform) says where
      the images are and their layout. Images of one shape are stacked contiguous in that layout:
      NHWC stays NHWC, since the device resize reads it directly.
    * Images of different sizes (a folder of photos) make a *ragged* batch: they are packed back to
      back into one buffer, a :class:`~fastresize.ragged.RaggedImages` with a table of each image's
      offset, height and width, and the device crops and resizes each one to the step's size. They
      must share their channel count and dtype. A custom ``collate_fn`` cannot see ragged images,
      so it refuses them.
    * Boxes and keypoints (``format.boxes_key``, ``format.keypoints_key``) hold a different count
      per image, so they are kept as a list of per-image tensors; masks are stacked (a list of
      per-image masks in a ragged batch). Every other entry goes through the wrapped collate.
    * The DataLoader must batch (``batch_size`` not ``None``).

    Args:
        collate_fn: The collate function to wrap; ``torch.utils.data.default_collate`` when ``None``.
            It must be picklable for the ``spawn`` start method (a module-level function).
        format: Where the images and targets are in a sample, and the images' layout;
            ``BatchFormat()`` (NCHW, guarded against NHWC-looking shapes) when ``None``.

    Example:
        >>> collate = ResizeCollate()
        >>> samples = [(torch.zeros(3, 8, 8, dtype=torch.uint8), 1), (torch.ones(3, 8, 8, dtype=torch.uint8), 0)]
        >>> images, labels = collate(samples)
        >>> images.shape, images.dtype, labels.tolist()
        (torch.Size([2, 3, 8, 8]), torch.uint8, [1, 0])
        >>> ragged, _ = collate([(torch.zeros(3, 8, 8), 1), (torch.ones(3, 6, 9), 0)])  # two sizes
        >>> ragged.sizes
        [(8, 8), (6, 9)]
    """

    def __init__(
        self,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        *,
        format: BatchFormat | None = None,  # noqa: A002
    ) -> None:
        if collate_fn is not None and not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable or None, got {collate_fn!r}")
        if format is not None and not isinstance(format, BatchFormat):
            raise TypeError(
                f"format must be a BatchFormat or None, got {type(format).__name__}; "
                "build one with fastresize.BatchFormat(layout=..., image_key=...)"
            )
        self.collate_fn = collate_fn if collate_fn is not None else default_collate
        self.format = format if format is not None else BatchFormat()
        # Set by the loader on its private copy when the workers resize (see fastresize.resample).
        self.resample: Callable[[Stamp, dict[str, Any]], dict[str, Any]] | None = None

    @property
    def custom(self) -> bool:
        """Whether the wrapped collate is the user's own (it must then see the images)."""
        return self.collate_fn is not default_collate

    def __call__(self, samples: list[Any]) -> Any:
        """Collate ``samples``: a batch of the wrapped collate's form, the images contiguous in ``format.layout``."""
        return self.split(samples).join()

    def split(self, samples: list[Any], allocate: Allocate | None = None) -> Parts:
        """Collate ``samples`` into a batch taken apart: its declared fields, and the rest.

        Args:
            samples: The samples of one batch.
            allocate: Where to put the images (see :data:`Allocate`): the batch ring's slots, or
                ``None`` to allocate as usual.

        Returns:
            The :class:`~fastresize._batch.Parts`: the images (a tensor, or a ``RaggedImages`` for
            images of different sizes), masks, and boxes and keypoints as per-image lists.

        Raises:
            TypeError: not a batch of samples, or images that are not tensors.
            ValueError: an empty batch, ragged images with a custom collate, or a batch that is not
                4-D in ``format.layout`` (see :meth:`BatchFormat.nchw`).
            RuntimeError: shared memory (``/dev/shm``) is full.
        """
        stamp, samples = _unstamped(samples)
        per_sample = [self.format.get(sample) for sample in samples]
        fields = {field: [values[field] for values in per_sample] for field in per_sample[0]}
        if stamp is not None and self.resample is not None:
            fields = self.resample(stamp, fields)
        # Boxes and keypoints differ in count per image: they stay lists. A custom collate (MixUp)
        # must see the images and masks; otherwise they are stacked here, or packed when ragged.
        taken = [field for field in fields if not self.custom or field in self.format.ragged]
        shapes = sorted({tuple(getattr(image, "shape", ())) for image in fields["images"]})
        if self.custom and len(shapes) > 1:
            raise ValueError(
                f"the images of one batch have different shapes {shapes}, and ResizeCollate wraps a custom "
                "collate_fn, which would have to stack them; crop or resize them to one size in the dataset, or "
                "drop the custom collate_fn so that they travel as a ragged batch"
            )
        stand_ins = [self.format.put(sample, dict.fromkeys(taken, 0)) for sample in samples]
        try:
            rest = self.collate_fn(stand_ins)
            if "images" in taken:
                fields["images"] = self._images(fields["images"], allocate)
            if "masks" in taken:
                masks = fields["masks"]
                same = len({tuple(getattr(m, "shape", ())) for m in masks}) == 1
                fields["masks"] = default_collate(masks) if same else masks
        except RuntimeError as error:
            if SHM_ADVICE in str(error):  # the batch ring's own message
                raise
            if shm_error(error):
                raise RuntimeError(f"{SHM_ADVICE} ({error})") from error
            raise ValueError(
                f"the wrapped collate_fn could not collate the samples ({error}); an entry with a different "
                "count per sample (boxes, keypoints) must be declared with BatchFormat(boxes_key=...) or "
                "BatchFormat(keypoints_key=...)"
            ) from error
        for field in fields.keys() - taken:
            fields[field] = self.format.get(rest)[field]
        return Parts(self._contiguous(fields), self.format.put(rest, dict.fromkeys(fields)), self.format)

    def _contiguous(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Check the collated images, and make them and the masks contiguous."""
        images = fields["images"]
        if not isinstance(images, (torch.Tensor, RaggedImages)):
            raise TypeError(
                f"the images must collate into a torch.Tensor, got {type(images).__name__}; "
                "have the dataset return tensors (e.g. torch.from_numpy or torchvision's pil_to_tensor)"
            )
        if isinstance(images, torch.Tensor):
            self.format.nchw(images)  # rank and layout checks, with advice
            fields["images"] = images.contiguous()
        if isinstance(fields.get("masks"), torch.Tensor):
            fields["masks"] = fields["masks"].contiguous()
        return fields

    def _images(self, images: list[Any], allocate: Allocate | None) -> Any:
        """Stack the images, or pack them when their sizes differ, into the allocated buffer or a new one."""
        if not all(isinstance(image, torch.Tensor) for image in images):
            return default_collate(images)  # whatever it makes of them: the caller names a non-tensor
        first = images[0]
        shapes = sorted({tuple(image.shape) for image in images})
        if len({image.dtype for image in images}) > 1:
            return default_collate(images)  # it promotes them to one dtype; a slot holds one
        if first.device.type != "cpu" or first.layout != torch.strided:
            allocate = None  # shared slots hold dense CPU memory; a GPU-resident dataset stays on its device
        if len(shapes) == 1:
            nbytes = first.nbytes * len(images)
            buffer = None if allocate is None else allocate(nbytes, len(images), False)
            if buffer is None:
                return default_collate(images)
            return torch.stack(images, out=buffer[:nbytes].view(first.dtype).view(len(images), *first.shape))
        if any(image.ndim != 3 for image in images):
            raise ValueError(
                f"the images of one batch must share a shape, or be 3-D images of different sizes (a ragged "
                f"batch), got shapes {shapes}"
            )
        for image in images:
            self.format.nchw(image[None])  # the NHWC guard, image by image
        layout = self.format.layout or "NCHW"
        count = RaggedImages.numel_of(images)
        nbytes = count * first.element_size()
        buffer = None if allocate is None else allocate(nbytes, len(images), True)
        if buffer is not None:
            out: torch.Tensor | None = buffer[:nbytes].view(first.dtype)
        else:
            out = _shared(count, first.dtype) if first.device.type == "cpu" else None
        return RaggedImages.pack(images, layout, out=out)

    def __repr__(self) -> str:
        name = getattr(self.collate_fn, "__name__", type(self.collate_fn).__name__)
        return f"ResizeCollate({name}, format={self.format!r})"
