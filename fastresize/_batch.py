"""Where the images and their targets sit in a batch: a tensor, a dict, or a tuple/list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ARGUMENTS = {"images": "image_key", "masks": "mask_key", "boxes": "boxes_key", "keypoints": "keypoints_key"}
Key = str | int
LAYOUTS = ("NCHW", "NHWC")


def _check_key(name: str, key: Any) -> Key | None:
    if key is None or isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool) and key >= 0):
        return key
    raise TypeError(f"{name} must be a dict key (str), a tuple index (int >= 0) or None, got {key!r}")


class BatchFields:
    """Finds and replaces the image and target entries of a batch.

    A dict batch holds its images under ``image_key`` (default ``"image"``) and a tuple/list batch
    at index ``image_key`` (default ``0``). Masks, boxes and keypoints are only touched where their
    key is given; every other entry passes through untouched.
    """

    def __init__(
        self,
        image_key: Key | None = None,
        mask_key: Key | None = None,
        boxes_key: Key | None = None,
        keypoints_key: Key | None = None,
    ) -> None:
        self.keys: dict[str, Key | None] = {
            "images": _check_key("image_key", image_key),
            "masks": _check_key("mask_key", mask_key),
            "boxes": _check_key("boxes_key", boxes_key),
            "keypoints": _check_key("keypoints_key", keypoints_key),
        }

    def locate(self, batch: Any) -> dict[str, Key]:
        """Return the key of each declared field in ``batch`` (a bare tensor has none)."""
        is_mapping = isinstance(batch, Mapping)
        if not is_mapping and not (isinstance(batch, Sequence) and not isinstance(batch, (str, bytes))):
            return {}
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

    def get(self, batch: Any) -> dict[str, Any]:
        """Return ``{field: value}`` for the declared fields; a bare batch is all images."""
        where = self.locate(batch)
        if not where:
            return {"images": batch}
        return {field: batch[key] for field, key in where.items()}

    def put(self, batch: Any, values: Mapping[str, Any]) -> Any:
        """Return a new batch of the same form with the fields replaced by ``values``."""
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
