"""The worker-side collate: a compact, contiguous batch in the batch format's layout, ready for the device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import default_collate

from fastresize._batch import BatchFormat


class ResizeCollate:
    """Collate function for DataLoader workers: a compact, contiguous batch, ready for the device.

    It wraps the user's collate function and runs in the workers, so it does no CUDA work. uint8
    images stay uint8 (4x fewer bytes to move than float32); the device converts and resizes.

    * ``format`` (a :class:`~fastresize.BatchFormat`, shared with the device transform) says where
      the images are and their layout. The images are handed over contiguous in that layout: NHWC
      stays NHWC, since the device resize reads it directly.
    * Boxes and keypoints (``format.boxes_key``, ``format.keypoints_key``) hold a different count
      per image, so they are kept as a list of per-image tensors instead of being stacked; masks
      are stacked and made contiguous. Every other entry passes through the wrapped collate as is.
    * Each sample must hold one image of the batch's shape: ``(C, H, W)``, or ``(H, W, C)`` with
      ``layout="NHWC"``. The DataLoader must batch (``batch_size`` not ``None``).

    Used by a :class:`~fastresize.DevicePrefetcher`, this collate also lets the workers stack the
    images straight into the prefetcher's batch ring (see :mod:`fastresize.ring`).

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

    def __call__(self, samples: list[Any]) -> Any:
        """Collate ``samples`` and hand over a contiguous batch in ``format.layout``."""
        return self.collate(samples)

    def images_of(self, samples: list[Any]) -> list[Any]:
        """Return the image of each sample, after checking that ``samples`` is a non-empty batch.

        Raises:
            TypeError: ``samples`` is not a list, as with ``DataLoader(batch_size=None)``.
            ValueError: ``samples`` is empty.
        """
        if not isinstance(samples, list):
            raise TypeError(
                f"ResizeCollate must be given a list of samples, got {type(samples).__name__}: a DataLoader "
                "with batch_size=None hands the collate one sample at a time; set batch_size=... (an int)"
            )
        if not samples:
            raise ValueError("ResizeCollate got an empty list of samples; the DataLoader's batches must not be empty")
        return [self.format.get(sample)["images"] for sample in samples]

    def collate(self, samples: list[Any], images: torch.Tensor | None = None) -> Any:
        """Collate ``samples``; the images are ``images`` where given, else the samples' own, stacked.

        Args:
            samples: The samples of one batch.
            images: The samples' images, already stacked (the batch ring stacks them into its
                slot); the samples' own images then stay out of the wrapped collate.

        Returns:
            The batch, of the form the wrapped collate gives, with the images contiguous in
            ``format.layout`` and the boxes and keypoints as per-image lists.

        Raises:
            TypeError: not a batch of samples, or the images do not collate into a tensor.
            ValueError: an empty batch, images of different shapes, or a batch that is not 4-D in
                ``format.layout`` (see :meth:`BatchFormat.nchw`).
        """
        stacked = self.images_of(samples)
        # Boxes and keypoints differ in count per image: keep them per image, out of the collate.
        ragged = self.format.ragged
        lists = {field: [self.format.get(sample)[field] for sample in samples] for field in ragged}
        # Fields kept out of the collate get a stand-in that every collate function stacks; the
        # real values replace it afterwards.
        left_out = (*ragged, "images") if images is not None else ragged
        if left_out:
            samples = [self.format.put(sample, dict.fromkeys(left_out, 0)) for sample in samples]
        try:
            batch = self.collate_fn(samples)
        except RuntimeError as error:
            shapes = sorted({tuple(getattr(image, "shape", ())) for image in stacked})
            if len(shapes) > 1:
                raise ValueError(
                    f"the images of one batch must share a shape to be stacked, got shapes {shapes}; "
                    "crop or resize them to one size in the dataset (the device resizes afterwards)"
                ) from error
            raise ValueError(
                f"the wrapped collate_fn could not collate the samples ({error}); an entry with a different "
                "count per sample (boxes, keypoints) must be declared with BatchFormat(boxes_key=...) or "
                "BatchFormat(keypoints_key=...)"
            ) from error
        values = self.format.get(batch)
        if images is not None:
            values["images"] = images
        if not isinstance(values["images"], torch.Tensor):
            raise TypeError(
                f"the images must collate into a torch.Tensor, got {type(values['images']).__name__}; "
                "have the dataset return tensors (e.g. torch.from_numpy or torchvision's pil_to_tensor)"
            )
        self.format.nchw(values["images"])  # rank and layout checks, with advice
        values["images"] = values["images"].contiguous()
        if isinstance(values.get("masks"), torch.Tensor):
            values["masks"] = values["masks"].contiguous()
        values.update(lists)
        return self.format.put(batch, values)

    def __repr__(self) -> str:
        name = getattr(self.collate_fn, "__name__", type(self.collate_fn).__name__)
        return f"ResizeCollate({name}, format={self.format!r})"
