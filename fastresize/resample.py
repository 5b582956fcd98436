"""One resample per image: each image cropped and resized once, straight to its step's size.

A dataset of images of every size (a folder of photos) hands over ragged batches. Each image is
cropped to its box (a :class:`~fastresize.crop.CropPolicy` picks it from ``(seed, step, index)``)
and resized to the step's size in one resample, together with its masks, boxes and keypoints:

* on the device (CUDA): :class:`~fastresize.BatchResize` does it to the whole ragged batch in one
  launch (:func:`~fastresize.ragged.resized_crop`);
* in the DataLoader workers, when batches stay on the CPU: there the device is one CPU thread,
  while the workers run in parallel. The loader stamps each batch with its step
  (:class:`StampBatches`), so a worker knows the step's size, boxes and max-size-first exactly as
  the device would, and hands over a dense uint8 batch at that size.

Both give the same boxes and the same values up to one uint8 level (the workers hand over uint8).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from fastresize.counter import StepCounter
from fastresize.crop import CropPolicy, crop_boxes, crop_keypoints, crop_masks
from fastresize.ragged import RaggedImages, resized_crop

if TYPE_CHECKING:
    from fastresize.collate import ResizeCollate

CENTER = CropPolicy("center")
"""The crop of a ragged batch when none is given: the largest centred box with the output's aspect ratio."""


class Stamp(NamedTuple):
    """The step a batch will be: ``absolute_step`` picks the size and the boxes, ``global_step`` max-size-first."""

    absolute_step: int
    global_step: int


class Stamped(NamedTuple):
    """A sample index (on its way to the dataset) or a sample (on its way to the collate), with its batch's stamp."""

    stamp: Stamp
    item: Any


class StampBatches:
    """A batch sampler that stamps every index with the step its batch will be.

    A pass's batches are the counter's next steps: the ``k``-th batch drawn is the step ``k`` after
    the counter's position when the pass starts, which is when the DataLoader starts drawing, in
    the main process. Resumed and broken-off epochs follow, as the counter does.

    Args:
        batch_sampler: The DataLoader's batch sampler.
        counter: The loader's counter, read when a pass starts.
    """

    def __init__(self, batch_sampler: Any, counter: StepCounter) -> None:
        self.batch_sampler = batch_sampler
        self.sampler = getattr(batch_sampler, "sampler", None)
        self.counter = counter

    def __iter__(self) -> Iterator[list[Stamped]]:
        step, global_step = self.counter.absolute_step, self.counter.global_step
        for k, indices in enumerate(self.batch_sampler):
            stamp = Stamp(step + k, global_step + k)
            yield [Stamped(stamp, index) for index in indices]

    def __len__(self) -> int:
        return len(self.batch_sampler)


class StampedDataset(Dataset[Any]):
    """A map-style dataset whose samples keep the stamp their index came with."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, Stamped):
            return Stamped(key.stamp, self.dataset[key.item])
        return self.dataset[key]

    def __getitems__(self, keys: list[Any]) -> list[Any]:
        fetch = getattr(self.dataset, "__getitems__", None)
        if fetch is None or not all(isinstance(key, Stamped) for key in keys):
            return [self[key] for key in keys]
        return [Stamped(key.stamp, sample) for key, sample in zip(keys, fetch([k.item for k in keys]), strict=True)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        # The dataset's own attributes, for a worker_init_fn that reaches it through get_worker_info().
        if name == "dataset":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def resample_fields(
    fields: dict[str, Any],
    size: tuple[int, int],
    step: int,
    crop: CropPolicy | None,
    *,
    interpolation: str,
    antialias: bool,
    value_range: tuple[float, float] | None = None,
    dtype: torch.dtype | None = None,
    layout: str | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """Crop every image of a batch to its box and resize it to ``size``; its targets follow.

    Args:
        fields: The batch's fields: ``"images"`` as a ``RaggedImages``, a dense batch, or a list of
            per-image tensors (in a worker); ``"masks"``, ``"boxes"``, ``"keypoints"`` per image
            where present; ``"crops"``, the dataset's boxes, for ``crop.rule == "provided"``.
        size: The output ``(height, width)``.
        step: The absolute step: it picks the boxes.
        crop: The crop policy; ``None`` is the centre crop.
        interpolation: As :func:`~fastresize.functional.resize`.
        antialias: As :func:`~fastresize.functional.resize`.
        value_range: As :func:`~fastresize.functional.resize`.
        dtype: As :func:`~fastresize.functional.resize`.
        layout: The images' layout, for a dense batch or a list.
        backend: As :func:`~fastresize.functional.resize`.

    Returns:
        The fields with the images resized (a dense NCHW batch, or for a list, a list of images in
        ``layout``), masks cropped and resized with nearest, boxes and keypoints mapped (see
        :func:`~fastresize.crop.crop_boxes`), and ``"crops"`` as given.
    """
    images = fields["images"]
    sizes = images.sizes if isinstance(images, RaggedImages) else [_hw(image, layout) for image in images]
    if crop is None:
        warnings.warn(
            "images of different sizes arrived with crop=None: such a batch is centre-cropped, while a batch "
            "whose images happen to share a size is resized whole; pass crop='center' (or another rule) so "
            "that every batch is cropped alike",
            UserWarning,
            stacklevel=2,
        )
    provided = fields.get("crops")
    if isinstance(provided, Sequence):
        provided = torch.stack([torch.as_tensor(box, dtype=torch.float64) for box in provided])
    boxes = (crop or CENTER).boxes(step, sizes, size, provided)
    settings: dict[str, Any] = {
        "interpolation": interpolation,
        "antialias": antialias,
        "value_range": value_range,
        "dtype": dtype,
        "backend": backend,
    }
    out = dict(fields)
    if isinstance(images, list):
        # In a worker: one image at a time, handed back in its own layout for the collate to stack.
        out["images"] = []
        for i, image in enumerate(images):
            resized = resized_crop(image[None], boxes[i : i + 1], size, layout=layout, **settings)[0]
            out["images"].append(resized.permute(1, 2, 0) if layout == "NHWC" else resized)
    else:
        out["images"] = resized_crop(images, boxes, size, layout=layout, **settings)
    crops = [boxes[i] for i in range(len(sizes))]
    if out.get("masks") is not None:
        masks = out["masks"]
        masks = list(masks) if isinstance(masks, torch.Tensor) else masks
        resized_masks = crop_masks(masks, crops, size)
        out["masks"] = resized_masks if isinstance(images, list) else torch.stack(resized_masks)
    for field, mapped in (("boxes", crop_boxes), ("keypoints", crop_keypoints)):
        if out.get(field) is not None:
            points = mapped(list(out[field]), crops, size)
            out[field] = torch.stack(points) if isinstance(out[field], torch.Tensor) else points  # as given
    return out


def _hw(image: torch.Tensor, layout: str | None) -> tuple[int, int]:
    """An image's ``(height, width)``: ``(C, H, W)``, or ``(H, W, C)`` with ``layout="NHWC"``."""
    height, width = image.shape[-3:-1] if layout == "NHWC" else image.shape[-2:]
    return int(height), int(width)


class WorkerResample:
    """What a worker's collate does to a stamped batch: the transform's resample, at the stamp's step.

    A batch of one image size and no crop rule is left alone: it is resized on the device as a
    whole, as before. Any other batch (images of different sizes, or a crop rule) is cropped and
    resized image by image straight to the step's size, and stays in its dtype (uint8 stays uint8,
    4x fewer bytes to hand over; float is not clamped, so that the device's range check sees it):
    the device then only converts it.

    Args:
        transform: The loader's :class:`~fastresize.BatchResize`: its policy or size, crop,
            interpolation, antialias, value range and layout.
    """

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, stamp: Stamp, fields: dict[str, Any]) -> dict[str, Any]:
        transform, images = self.transform, fields["images"]
        if not all(isinstance(image, torch.Tensor) and image.ndim == 3 for image in images):
            return fields  # the collate names what is wrong
        if transform.crop is None and len({tuple(image.shape) for image in images}) == 1:
            return fields
        layout = transform.format.layout
        height, width = _hw(images[0], layout)
        shape = (len(images), 0, height, width)
        size = transform.target_size(shape, step=stamp.absolute_step, global_step=stamp.global_step)
        return resample_fields(
            fields,
            size,
            stamp.absolute_step,
            transform.crop,
            interpolation=transform.flags["interpolation"],
            antialias=transform.flags["antialias"],
            layout=layout,
            backend="torch",
        )


def resample_blocker(loader: Any) -> str | None:
    """Return why the workers of ``loader`` cannot resample its batches, or ``None`` when they can."""
    from fastresize.ring import ring_blocker  # imported here: the ring imports the collate, which imports this

    blocker = ring_blocker(loader)  # the same needs: a batching DataLoader, torch's collate in a ResizeCollate
    if blocker is not None:
        return blocker
    if isinstance(loader.dataset, IterableDataset):
        return "its dataset is an IterableDataset, whose samples no index can carry a step to"
    if not getattr(loader, "in_order", True):
        return "the DataLoader has in_order=False: its batches may arrive in another order than their steps"
    return None


def stamped_loader(loader: DataLoader[Any], counter: StepCounter, transform: Any) -> DataLoader[Any]:
    """Return a copy of ``loader`` whose workers resample each batch at its step (see :class:`WorkerResample`).

    The copy shares the sampler and every setting with ``loader``, which stays untouched; its
    batch sampler stamps each batch with its step from ``counter``, its dataset passes the stamps
    on, and its collate (a copy of ``loader``'s) resamples.
    """
    from fastresize.ring import private_copy  # imported here: the ring imports the collate, which imports this

    collate: ResizeCollate = copy.copy(loader.collate_fn)  # type: ignore[assignment]
    collate.resample = WorkerResample(transform)
    return private_copy(
        loader,
        dataset=StampedDataset(loader.dataset),
        batch_sampler=StampBatches(loader.batch_sampler, counter),
        collate_fn=collate,
    )
