"""The batch format: where the images and their targets sit in a batch, and the images' layout.

One :class:`BatchFormat` describes a batch for every component that touches it: the collate in the
workers, the batch ring and the device transform. It is configuration, not state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

ARGUMENTS = {
    "images": "image_key",
    "masks": "mask_key",
    "boxes": "boxes_key",
    "keypoints": "keypoints_key",
    "crops": "crop_key",
}
Key = str | int
LAYOUTS = ("NCHW", "NHWC")


def _check_key(name: str, key: Any) -> Key | None:
    if key is None or isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool) and key >= 0):
        return key
    raise TypeError(f"{name} must be a dict key (str), a tuple index (int >= 0) or None, got {key!r}")


def check_layout(layout: Any) -> str | None:
    """Return ``layout`` if it is ``"NCHW"``, ``"NHWC"`` or ``None`` (NCHW, with a guard against NHWC)."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW', 'NHWC' or None, got {layout!r}")
    return None if layout is None else str(layout)


def to_nchw(images: Any, layout: str | None, name: str = "images") -> torch.Tensor:
    """Check a 4-D image batch and return it as an NCHW view (no copy).

    ``layout=None`` reads the batch as NCHW but refuses a shape that looks like NHWC (a last
    dimension of 1, 3 or 4 channels and a dimension 1 larger than 4): read as NCHW, such a batch
    would silently become a batch of many-channel images. ``(8, 4, 64, 64)`` latents pass.

    Args:
        images: The batch.
        layout: ``"NCHW"``, ``"NHWC"`` or ``None``.
        name: The argument's name, for the messages.

    Raises:
        TypeError: ``images`` is not a tensor.
        ValueError: the batch is not 4-D, or ``layout=None`` and it looks like NHWC.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    shape = tuple(images.shape)
    expected = "(B, H, W, C)" if layout == "NHWC" else "(B, C, H, W)"
    if images.ndim == 3:
        if layout == "NHWC":
            hint = "a single HWC image needs images.unsqueeze(0); a grayscale batch (B, H, W) needs images[..., None]"
        else:
            hint = "a single CHW image needs images.unsqueeze(0); a grayscale batch (B, H, W) needs images.unsqueeze(1)"
        raise ValueError(f"{name} must be a 4-D batch {expected}, got a 3-D shape {shape}: {hint}")
    if images.ndim == 5:
        raise ValueError(
            f"{name} must be a 4-D batch {expected}, got a 5-D shape {shape}: fold the extra dimension into the "
            "batch with images.flatten(0, 1), resize, and unflatten afterwards"
        )
    if images.ndim != 4:
        raise ValueError(f"{name} must be a 4-D batch {expected}, got a {images.ndim}-D shape {shape}")
    if layout == "NHWC":
        return images.permute(0, 3, 1, 2)
    if layout is None and shape[-1] in (1, 3, 4) and shape[1] > 4:
        raise ValueError(
            f"{name} of shape {shape} look like NHWC (channels last): read as NCHW they would be {shape[1]}-channel "
            f"images of {shape[2]}x{shape[3]}. Pass layout='NHWC' if the channels are last, or layout='NCHW' "
            "to read them as NCHW (feature maps, latents): to functional.resize, or in the BatchFormat given "
            "to BatchResize and ResizeCollate (format=BatchFormat(layout=...))"
        )
    return images


class BatchFormat:
    """Where the images and their targets are in a batch, and the layout of the images.

    A dict batch holds its images under ``image_key`` (default ``"image"``) and a tuple/list batch
    at index ``image_key`` (default ``0``); a bare tensor batch is all images. Masks, boxes and
    keypoints are only touched where their key is given; every other entry passes through.

    Build one and give it to both :class:`~fastresize.ResizeCollate` and
    :class:`~fastresize.BatchResize` (``wrap`` does this for you): the collate keeps the images in
    ``layout`` and the transform reads that layout directly.

    Args:
        layout: ``"NCHW"`` (channels first), ``"NHWC"`` (channels last, as PIL and NumPy decode
            images) or ``None``: NCHW, but a batch that looks like NHWC raises instead of being
            misread.
        image_key: Where the images are: a dict key (str) or a tuple/list index (int).
        mask_key: Where the masks are, if the batch has any to resize.
        boxes_key: Where the ``xyxy`` pixel boxes are, if any.
        keypoints_key: Where the ``xy`` pixel keypoints are, if any.
        crop_key: Where each image's source box is (``xyxy`` pixels), for a transform whose crop
            rule is ``"provided"`` (see :class:`~fastresize.crop.CropPolicy`).

    Example:
        >>> fmt = BatchFormat(layout="NHWC", mask_key="mask")
        >>> batch = {"image": torch.zeros(2, 8, 8, 3), "mask": torch.zeros(2, 8, 8), "id": [0, 1]}
        >>> sorted(fmt.get(batch)), tuple(fmt.nchw(fmt.get(batch)["images"]).shape)
        (['images', 'masks'], (2, 3, 8, 8))
    """

    def __init__(
        self,
        layout: str | None = None,
        image_key: Key | None = None,
        mask_key: Key | None = None,
        boxes_key: Key | None = None,
        keypoints_key: Key | None = None,
        crop_key: Key | None = None,
    ) -> None:
        self.layout = check_layout(layout)
        given = (image_key, mask_key, boxes_key, keypoints_key, crop_key)
        self.keys = {field: _check_key(ARGUMENTS[field], key) for field, key in zip(ARGUMENTS, given, strict=True)}
        # Every batch of a loader has one structure: find the fields once per structure.
        self._located: dict[Any, dict[str, Key]] = {}

    @property
    def ragged(self) -> tuple[str, ...]:
        """The declared fields kept per image by the collate: boxes, keypoints (a count per image), crops."""
        return tuple(f for f in ("boxes", "keypoints", "crops") if self.keys[f] is not None)

    def nchw(self, images: Any, name: str = "images") -> torch.Tensor:
        """Check an image batch in this format's layout and return it as an NCHW view (see :func:`to_nchw`)."""
        return to_nchw(images, self.layout, name)

    def locate(self, batch: Any) -> dict[str, Key]:
        """Return the key of each declared field in ``batch`` (a bare tensor has none)."""
        is_mapping = isinstance(batch, Mapping)
        if not is_mapping and not (isinstance(batch, Sequence) and not isinstance(batch, (str, bytes))):
            return {}
        structure = (type(batch), tuple(batch) if is_mapping else len(batch))
        found = self._located.get(structure)
        if found is None:
            found = self._located[structure] = self._find(batch, is_mapping)
        return found

    def _find(self, batch: Any, is_mapping: bool) -> dict[str, Key]:
        default: Key = "image" if is_mapping else 0
        found: dict[str, Key] = {}
        for field, key in self.keys.items():
            if key is None and field != "images":
                continue
            key = default if key is None else key
            if is_mapping != isinstance(key, str):
                form = "a dict batch needs str keys" if is_mapping else "a tuple/list batch needs int indices"
                raise TypeError(f"{ARGUMENTS[field]}={key!r} does not fit a {type(batch).__name__} batch: {form}")
            present = key in batch if is_mapping else int(key) < len(batch)
            if not present:
                keys = list(batch) if is_mapping else f"{len(batch)} entries"
                raise ValueError(
                    f"the batch has no entry {key!r} for the {field} (it has {keys}); "
                    f"set {ARGUMENTS[field]}=... to where they are"
                )
            found[field] = key
        return found

    def split(self, batch: Any) -> Parts:
        """Take ``batch`` apart: its declared fields, and the rest of it with ``None`` where they were."""
        fields = self.get(batch)
        return Parts(fields, self.put(batch, dict.fromkeys(fields)), self)  # a bare batch's rest is None

    def get(self, batch: Any) -> dict[str, Any]:
        """Return ``{field: value}`` for the declared fields; a bare batch is all images."""
        where = self.locate(batch)
        if not where:
            return {"images": batch}
        return {field: batch[key] for field, key in where.items()}

    def put(self, batch: Any, values: Mapping[str, Any]) -> Any:
        """Return a new batch of the same form with the fields replaced by ``values`` (``batch`` is not changed)."""
        where = self.locate(batch)
        if not where:
            return values["images"]
        if isinstance(batch, Mapping):
            out = dict(batch)
            for field, value in values.items():
                out[where[field]] = value
            return out
        items = list(batch)
        for field, value in values.items():
            items[int(where[field])] = value
        if isinstance(batch, list):
            return items
        return type(batch)(*items) if hasattr(batch, "_fields") else tuple(items)

    def __getstate__(self) -> dict[str, Any]:
        # The cache holds types; workers rebuild it (spawn pickles the format).
        return {**self.__dict__, "_located": {}}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BatchFormat) and (self.layout, self.keys) == (other.layout, other.keys)

    def __hash__(self) -> int:
        return hash((self.layout, tuple(self.keys.values())))

    def __repr__(self) -> str:
        keys = "".join(f", {ARGUMENTS[f]}={k!r}" for f, k in self.keys.items() if k is not None)
        return f"BatchFormat(layout={self.layout!r}{keys})"


class Parts(NamedTuple):
    """A batch taken apart once, where it is collated, and put together once, on the device.

    Attributes:
        fields: The declared fields (``"images"``, and ``"masks"``, ``"boxes"``, ``"keypoints"``,
            ``"crops"`` where declared) by name.
        rest: The batch with ``None`` in place of the fields, or ``None`` for a bare image batch.
        format: The format that took it apart.
    """

    fields: dict[str, Any]
    rest: Any
    format: BatchFormat

    def join(self, fields: Mapping[str, Any] | None = None) -> Any:
        """Return the batch in its own form, with ``fields`` replacing the held fields where given."""
        return self.format.put(self.rest, {**self.fields, **(fields or {})})
