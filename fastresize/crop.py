"""Crops, per image: which source box each image of a batch uses, and where its targets go.

:class:`CropPolicy` picks each image's box as a pure function of ``(seed, step, index in the
batch)``, so DataLoader workers, distributed ranks and resumed runs agree on it without talking, as
they agree on a step's size. :func:`crop_boxes`, :func:`crop_keypoints` and :func:`crop_masks` map an
image's targets through ``crop to the box, then resize to size``, the geometry of a resized crop.

Boxes are ``xyxy`` and keypoints ``xy`` in pixels, the image covering ``[0, W] x [0, H]``
(torchvision's convention, the geometry of ``align_corners=False``). A crop box ``(x1, y1, x2, y2)``
resized to ``(h, w)`` maps a point ``(x, y)`` to ``((x - x1) * w / (x2 - x1), (y - y1) * h / (y2 - y1))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from fastresize._checks import check_choice, check_float, check_int, check_state_keys
from fastresize.functional import resize_masks
from fastresize.policy import _splitmix64

_MASK64 = (1 << 64) - 1
RULES = ("full", "center", "random", "provided")
"""The crop rules of :class:`CropPolicy`."""
_STATE_KEYS = ("rule", "scale", "ratio", "seed")
_TRIES = 10  # torchvision's RandomResizedCrop tries 10 boxes before its centre fallback
_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment: draw k of a stream is _splitmix64(key + k * _GAMMA)
_SALT = 0xC2B2AE3D27D4EB4F  # keeps crop draws apart from the size draws of a policy with the same seed
_DRAW_I, _DRAW_J = 2 * _TRIES, 2 * _TRIES + 1  # the draws placing a box; tries use draws 0 .. 2 * _TRIES - 1

Box = Sequence[float] | torch.Tensor
"""One crop box ``(x1, y1, x2, y2)``: four numbers or a ``(4,)`` tensor."""


def _pair(name: str, value: Any, *, minimum: float, maximum: float | None = None) -> tuple[float, float]:
    """A ``(low, high)`` pair of floats in ``[minimum, maximum]`` with ``0 < low <= high``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}")
    low = check_float(f"{name}[0]", value[0], minimum=minimum, maximum=maximum)
    high = check_float(f"{name}[1]", value[1], minimum=minimum, maximum=maximum)
    if not 0 < low <= high:
        raise ValueError(f"{name} must satisfy 0 < low <= high, got {value!r}; pass (low, high) in that order")
    return (low, high)


def _image_size(name: str, value: Any) -> tuple[int, int]:
    """An image's ``(height, width)``, both ints >= 1."""
    if not isinstance(value, (tuple, list, torch.Size)) or len(value) != 2:
        raise ValueError(f"{name} must be a (height, width) pair, got {value!r}")
    return (check_int(f"{name}[0]", value[0], minimum=1), check_int(f"{name}[1]", value[1], minimum=1))


class CropPolicy:
    """Chooses the source box of every image of a batch: a pure function of ``(seed, step, index)``.

    Each image's box depends only on the seed, the step, the image's index in the batch, its own
    ``(height, width)`` and the output size: never on the other images, never on a stateful RNG
    (the draws hash ``(seed, step, index)`` with SplitMix64). So every process that shares the seed
    computes the same boxes, whether it holds the whole batch or one image of it.

    Rules (boxes are ``xyxy`` in the image's pixels, the image covering ``[0, W] x [0, H]``):
        * ``"full"``: the whole image ``(0, 0, W, H)``, stretched to the output size.
        * ``"center"``: the largest centred box with the output's aspect ratio. Its short side is the
          image's; the other is ``round(...)`` of the exact length, never below 1, and its offset is
          ``round((W - w) / 2)`` (resp. ``H - h``), both with Python's ``round`` (halves to even), as
          torchvision's ``center_crop`` rounds its offset.
        * ``"random"``: torchvision's ``RandomResizedCrop.get_params``: up to 10 tries of an area
          ``uniform(*scale) * H * W`` and an aspect ratio ``w / h = exp(uniform(log(ratio[0]),
          log(ratio[1])))``, ``w = round(sqrt(area * ratio))``, ``h = round(sqrt(area / ratio))``;
          the first box that fits is placed uniformly (top in ``[0, H - h]``, left in ``[0, W - w]``).
          After 10 misses, the centre fallback: the image's aspect ratio clamped to ``ratio`` (the
          whole image if it lies inside), offsets ``(H - h) // 2`` and ``(W - w) // 2``, a side never
          below 1. As in torchvision, ``ratio`` is the box's own ``w / h``: the box is then
          stretched to the output size, whatever its aspect ratio.
        * ``"provided"``: the boxes the dataset provides, checked and returned as given (float allowed).

    Args:
        rule: One of ``"full"``, ``"center"``, ``"random"``, ``"provided"``.
        scale: ``"random"``: the range of the box's area as a share of the image's, in ``(0, 1]``.
        ratio: ``"random"``: the range of the box's aspect ratio ``w / h``, ``> 0``.
        seed: Seed of the draws. Give every process the same one.
        rank: The distributed rank, mixed into the ``"random"`` draws so that ranks, which hold
            other images, do not all crop image ``i`` of a step alike. ``None``: this process's
            rank when ``torch.distributed`` is initialized (build the policy after
            ``init_process_group``), else 0. Workers get it with the policy, so they agree with
            their rank's device. Not a setting: a resume may run on other ranks.

    Raises:
        TypeError: a seed that is not an int, or a non-numeric bound.
        ValueError: an unknown rule, or a scale or ratio that is not an ordered positive pair
            (scale also at most 1).

    Example:
        >>> policy = CropPolicy("center")
        >>> policy.boxes(step=0, sizes=[(480, 640), (300, 200)], out_size=(256, 256)).tolist()
        [[80, 0, 560, 480], [0, 50, 200, 250]]
        >>> random = CropPolicy("random", seed=1)
        >>> random.box(step=7, index=3, size=(480, 640), out_size=(256, 256))  # the same in every process
        (12, 6, 504, 471)
    """

    def __init__(
        self,
        rule: str = "center",
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        seed: int = 0,
        rank: int | None = None,
    ) -> None:
        self.rule = check_choice("rule", rule, RULES)
        self.scale = _pair("scale", scale, minimum=0.0, maximum=1.0)
        self.ratio = _pair("ratio", ratio, minimum=0.0)
        self.seed = check_int("seed", seed)
        if rank is None:  # distributed ranks hold other images: their random crops are drawn apart
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if distributed else 0
        self.rank = check_int("rank", rank, minimum=0)
        self._log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))

    def box(
        self,
        step: int,
        index: int,
        size: tuple[int, int],
        out_size: tuple[int, int],
        provided: Box | None = None,
    ) -> tuple[float, float, float, float]:
        """Return one image's box ``(x1, y1, x2, y2)``: ints for every rule but ``"provided"``.

        Args:
            step: The absolute step (``StepCounter.absolute_step``), ``>= 0``.
            index: The image's index in its batch, ``>= 0``.
            size: The image's ``(height, width)``.
            out_size: The output ``(height, width)`` (``"center"`` takes its aspect ratio).
            provided: ``"provided"``: the image's box, four numbers or a ``(4,)`` tensor.

        Raises:
            TypeError: a non-int step, index or side.
            ValueError: a negative step or index, a side below 1, ``provided`` missing under
                ``"provided"`` or given under another rule, or a provided box that is not inside
                the image with a positive width and height.
        """
        step = check_int("step", step, minimum=0)
        index = check_int("index", index, minimum=0)
        height, width = _image_size("size", size)
        out_h, out_w = _image_size("out_size", out_size)
        self._check_provided(provided)
        if self.rule == "provided":
            return _check_box("provided", provided, height, width)  # type: ignore[arg-type]
        if self.rule == "full":
            return (0, 0, width, height)
        if self.rule == "center":
            if width * out_h > height * out_w:  # the image is wider than the output: keep its height
                h, w = height, max(1, round(height * out_w / out_h))
            else:
                h, w = max(1, round(width * out_h / out_w)), width
            top, left = round((height - h) / 2), round((width - w) / 2)
            return (left, top, left + w, top + h)
        return self._random(_key(self.seed, step, index, self.rank), height, width)

    def boxes(
        self,
        step: int,
        sizes: Sequence[tuple[int, int]],
        out_size: tuple[int, int],
        provided: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the boxes of a batch: row ``i`` is :meth:`box` ``(step, i, sizes[i], out_size)``.

        Args:
            step: The absolute step, ``>= 0``.
            sizes: Each image's ``(height, width)`` (``RaggedImages.sizes``).
            out_size: The output ``(height, width)``.
            provided: ``"provided"``: the dataset's ``(B, 4)`` ``xyxy`` boxes, one row per image.

        Returns:
            ``(B, 4)`` ``xyxy`` boxes on the CPU: int64, or ``provided`` itself (detached) under
            ``"provided"``.

        Raises:
            TypeError: ``sizes`` is not a sequence, or ``provided`` is not a tensor.
            ValueError: as :meth:`box`; the message names the image's index. ``provided`` must be
                ``(len(sizes), 4)``.
        """
        check_int("step", step, minimum=0)
        _image_size("out_size", out_size)
        if not isinstance(sizes, Sequence) or isinstance(sizes, (str, bytes)):
            raise TypeError(f"sizes must be a sequence of (height, width) pairs, got {type(sizes).__name__}")
        self._check_provided(provided)
        if provided is not None:
            if not isinstance(provided, torch.Tensor):
                raise TypeError(f"provided must be a (B, 4) tensor of xyxy boxes, got {type(provided).__name__}")
            if provided.shape != (len(sizes), 4):
                raise ValueError(
                    f"provided must be (B, 4) with one box per image, B = len(sizes) = {len(sizes)}; "
                    f"got shape {tuple(provided.shape)}"
                )
            rows = provided.detach().tolist()
            for i, size in enumerate(sizes):
                _check_box(f"provided[{i}]", rows[i], *_image_size(f"sizes[{i}]", size))
            return provided.detach()
        rows = [self.box(step, i, _image_size(f"sizes[{i}]", size), out_size) for i, size in enumerate(sizes)]
        return torch.tensor(rows, dtype=torch.int64).view(len(sizes), 4)

    def _check_provided(self, provided: Any) -> None:
        if self.rule == "provided" and provided is None:
            raise ValueError(
                "rule='provided' takes each image's box from the dataset: declare where it is with "
                "BatchFormat(crop_key=...) (or pass provided= to boxes())"
            )
        if self.rule != "provided" and provided is not None:
            raise ValueError(
                f"provided boxes were given, but rule={self.rule!r} chooses its own; "
                "build CropPolicy('provided') to use the dataset's boxes"
            )

    def _random(self, key: int, height: int, width: int) -> tuple[int, int, int, int]:
        """torchvision's ``RandomResizedCrop.get_params``, drawing from the hash stream ``key``."""
        area = height * width
        for t in range(_TRIES):
            target_area = area * _uniform(key, 2 * t, *self.scale)
            aspect = math.exp(_uniform(key, 2 * t + 1, *self._log_ratio))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top, left = _below(key, _DRAW_I, height - h + 1), _below(key, _DRAW_J, width - w + 1)
                return (left, top, left + w, top + h)
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, max(1, round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = max(1, round(height * self.ratio[1])), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        return (left, top, left + w, top + h)

    def state_dict(self) -> dict[str, Any]:
        """Return the settings as a dict of plain values (pairs as lists, as JSON gives them back).

        A crop policy has no progress to save: it is saved beside a run's progress so that a resume
        can check it is built the same way.
        """
        return {"rule": self.rule, "scale": list(self.scale), "ratio": list(self.ratio), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check that a saved crop policy had these settings; the settings stay as built.

        Raises:
            TypeError: ``state`` is not a dict.
            ValueError: the keys are wrong, or a saved setting differs from this policy's (both
                values are named); nothing is loaded.
        """
        check_state_keys("CropPolicy", state, _STATE_KEYS)
        mine = self.state_dict()
        for key in _STATE_KEYS:
            saved = state[key]
            same = list(saved) == mine[key] if isinstance(saved, (tuple, list)) else saved == mine[key]
            if not same:
                raise ValueError(
                    f"the state was saved with {key}={saved!r} but this crop policy has {key}={mine[key]!r}; "
                    "build the crop policy with the saved settings to resume that run"
                )

    def __repr__(self) -> str:
        return f"CropPolicy(rule={self.rule!r}, scale={self.scale!r}, ratio={self.ratio!r}, seed={self.seed!r})"


def _key(seed: int, step: int, index: int, rank: int = 0) -> int:
    """The hash stream of one image of one step (of one distributed rank)."""
    h = _splitmix64(_splitmix64((seed ^ _SALT) & _MASK64) ^ (step & _MASK64))
    h = _splitmix64(h ^ (index & _MASK64))
    return h if rank == 0 else _splitmix64(h ^ (rank & _MASK64))


def _uniform(key: int, k: int, low: float, high: float) -> float:
    """Draw ``k`` of stream ``key``, uniform in ``[low, high)`` (53 random bits, as a double holds)."""
    return low + (high - low) * ((_splitmix64((key + k * _GAMMA) & _MASK64) >> 11) * 2.0**-53)


def _below(key: int, k: int, count: int) -> int:
    """Draw ``k`` of stream ``key``, an int in ``[0, count)`` (multiply-shift, bias below count / 2**64)."""
    return (_splitmix64((key + k * _GAMMA) & _MASK64) * count) >> 64


def _check_box(name: str, box: Any, height: int, width: int) -> tuple[float, float, float, float]:
    """A box inside a ``height x width`` image with a positive width and height, as four numbers."""
    x1, y1, x2, y2 = _four(name, box)
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ValueError(
            f"{name} = {[x1, y1, x2, y2]} is not a box inside the {height}x{width} image (H x W): it needs "
            f"0 <= x1 < x2 <= {width} and 0 <= y1 < y2 <= {height}; clip the box to the image"
        )
    return (x1, y1, x2, y2)


def _four(name: str, box: Any) -> tuple[float, float, float, float]:
    """``box`` as four finite numbers ``(x1, y1, x2, y2)``."""
    values = box.detach().tolist() if isinstance(box, torch.Tensor) else box
    if not isinstance(values, (tuple, list)) or len(values) != 4:
        raise ValueError(f"{name} must be one xyxy box of four numbers, got {box!r}")
    x1, y1, x2, y2 = (check_float(f"{name}[{i}]", v) for i, v in enumerate(values))
    # Integral values come back as ints, so that integer boxes stay exact and slice masks.
    return tuple(int(v) if v.is_integer() else v for v in (x1, y1, x2, y2))  # type: ignore[return-value]


def _crop_geometry(crop: Box, size: Any, name: str = "crop") -> tuple[tuple[float, ...], tuple[int, int]]:
    """The checked crop box (positive width and height) and output size."""
    box = _four(name, crop)
    if not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"{name} = {list(box)} must have x2 > x1 and y2 > y1 (a box of positive width and height)")
    out = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    return box, _image_size("size", out)


def _per_image(targets: Any, crops: Any, name: str) -> list[tuple[Any, Any]]:
    """Pair a batch's list of per-image targets with its ``(B, 4)`` crop boxes."""
    rows = crops.detach().tolist() if isinstance(crops, torch.Tensor) else crops
    if not isinstance(rows, (tuple, list)) or len(rows) != len(targets):
        raise ValueError(
            f"a list of {len(targets)} {name} needs one crop box per image, (B, 4) with B = {len(targets)}; "
            f"got {crops!r}"
        )
    return list(zip(targets, rows, strict=True))


def _map_points(points: Any, crop: Any, size: Any, width: int, name: str, clip: bool) -> Any:
    """Shift, scale (and for boxes clip) one image's points, or a list of images' points."""
    if isinstance(points, (list, tuple)):
        pairs = _per_image(points, crop, name)
        return [_map_one(p, c, size, width, f"{name}[{i}]", clip) for i, (p, c) in enumerate(pairs)]
    return _map_one(points, crop, size, width, name, clip)


def _map_one(points: Any, crop: Box, size: Any, width: int, name: str, clip: bool) -> torch.Tensor:
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or a list of tensors (one per image), got {type(points).__name__}")
    if points.ndim < 1 or points.shape[-1] != width:
        raise ValueError(f"{name} must have a last dimension of {width}, got shape {tuple(points.shape)}")
    (x1, y1, x2, y2), (out_h, out_w) = _crop_geometry(crop, size)
    dtype = points.dtype if points.is_floating_point() else torch.float32
    offset = torch.tensor([x1, y1] * (width // 2), dtype=dtype, device=points.device)
    scale = torch.tensor([out_w / (x2 - x1), out_h / (y2 - y1)] * (width // 2), dtype=dtype, device=points.device)
    mapped = (points.detach().to(dtype) - offset) * scale
    if not clip:
        return mapped
    limit = torch.tensor([out_w, out_h] * (width // 2), dtype=dtype, device=points.device)
    return torch.minimum(mapped.clamp_(min=0), limit)


def crop_boxes(boxes: Any, crop: Any, size: int | tuple[int, int]) -> Any:
    """Map ``xyxy`` pixel boxes through ``crop to crop, resize to size``, clipped to the output.

    Each box is shifted by the crop's top-left corner, scaled by ``w_out / (x2 - x1)`` and
    ``h_out / (y2 - y1)``, then clipped to ``[0, w_out] x [0, h_out]``. A box that leaves the crop
    partly is cut at its edge. **A box that leaves the crop entirely is kept, with zero area** (it
    collapses onto the edge it lies beyond), so that ``boxes[i]`` still matches ``labels[i]``; drop
    such boxes with :func:`nonempty_boxes` where the model wants only visible ones. A full-image
    crop gives :func:`fastresize.functional.scale_boxes`'s result, clipped.

    Args:
        boxes: One image's ``(N, 4)`` boxes, or a list of them (one tensor per image).
        crop: One image's crop box ``(x1, y1, x2, y2)`` (four numbers or a ``(4,)`` tensor), or for
            a list, the batch's ``(B, 4)`` boxes (:meth:`CropPolicy.boxes`).
        size: The output size: ``s`` for ``(s, s)``, or ``(height, width)``.

    Returns:
        The mapped boxes in the same form; float boxes keep their dtype, integer boxes become float32.

    Raises:
        TypeError: not a tensor or a list of tensors.
        ValueError: a last dimension other than 4, a crop of no width or height, or a list whose
            length differs from the number of crop boxes.

    Example:
        >>> crop_boxes(torch.tensor([[10.0, 10.0, 30.0, 20.0], [0.0, 0.0, 5.0, 5.0]]), (10, 0, 50, 40), 80).tolist()
        [[0.0, 20.0, 40.0, 40.0], [0.0, 0.0, 0.0, 10.0]]
    """
    return _map_points(boxes, crop, size, 4, "boxes", clip=True)


def crop_keypoints(keypoints: Any, crop: Any, size: int | tuple[int, int]) -> Any:
    """Map ``xy`` pixel keypoints through ``crop to crop, resize to size``, without clipping.

    A keypoint is shifted and scaled as :func:`crop_boxes` does with a corner. It is **not
    clipped**: a point outside the crop lands outside ``[0, w_out] x [0, h_out]``, where a
    visibility test can find it (``0 <= x <= w_out`` and ``0 <= y <= h_out``).

    Args:
        keypoints: One image's ``(N, 2)`` (or ``(..., 2)``) keypoints, or a list of them.
        crop: One image's crop box, or for a list, the batch's ``(B, 4)`` boxes.
        size: The output size: ``s`` or ``(height, width)``.

    Returns:
        The mapped keypoints in the same form; integer keypoints become float32.

    Raises:
        TypeError: not a tensor or a list of tensors.
        ValueError: a last dimension other than 2, a crop of no width or height, or a list whose
            length differs from the number of crop boxes.

    Example:
        >>> crop_keypoints(torch.tensor([[30.0, 20.0], [0.0, 0.0]]), (10, 0, 50, 40), 80).tolist()
        [[40.0, 40.0], [-20.0, 0.0]]
    """
    return _map_points(keypoints, crop, size, 2, "keypoints", clip=False)


def nonempty_boxes(boxes: Any) -> Any:
    """Return which ``xyxy`` boxes have a positive area: the keep-mask after :func:`crop_boxes`.

    Args:
        boxes: ``(..., 4)`` boxes, or a list of them (one tensor per image).

    Returns:
        A bool tensor ``(...)`` (``x2 > x1`` and ``y2 > y1``), or a list of them.

    Raises:
        TypeError: not a tensor or a list of tensors.
        ValueError: a last dimension other than 4.
    """
    if isinstance(boxes, (list, tuple)):
        return [nonempty_boxes(b) for b in boxes]
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a tensor or a list of tensors, got {type(boxes).__name__}")
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have a last dimension of 4, got shape {tuple(boxes.shape)}")
    return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def crop_masks(masks: Any, crop: Any, size: int | tuple[int, int]) -> Any:
    """Crop one image's masks to ``crop`` and resize them to ``size`` with nearest, so labels stay labels.

    Nearest is PyTorch's ``nearest-exact`` (:func:`fastresize.functional.resize_masks`): output
    pixel ``o`` takes source pixel ``floor(x1 + (o + 0.5) * (x2 - x1) / w_out)``, clamped to the
    pixels the crop covers. An integer crop gives exactly ``resize_masks`` of the sliced mask.

    Args:
        masks: One image's ``(H, W)`` or ``(C, H, W)`` masks, any dtype, or a list of them.
        crop: One image's crop box inside the mask, or for a list, the batch's ``(B, 4)`` boxes.
        size: The output size: ``s`` or ``(height, width)``.

    Returns:
        The masks at ``size`` (same dtype, detached), in the same form.

    Raises:
        TypeError: not a tensor or a list of tensors.
        ValueError: a wrong rank, a crop not inside the mask or of no width or height, or a list
            whose length differs from the number of crop boxes.

    Example:
        >>> mask = torch.arange(16).view(4, 4)
        >>> crop_masks(mask, (2, 0, 4, 2), 4).tolist()
        [[2, 2, 3, 3], [2, 2, 3, 3], [6, 6, 7, 7], [6, 6, 7, 7]]
    """
    if isinstance(masks, (list, tuple)):
        pairs = _per_image(masks, crop, "masks")
        return [_crop_mask(m, c, size, f"masks[{i}]", f"crop[{i}]") for i, (m, c) in enumerate(pairs)]
    return _crop_mask(masks, crop, size, "masks", "crop")


def _crop_mask(masks: Any, crop: Box, size: Any, name: str, crop_name: str) -> torch.Tensor:
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or a list of tensors (one per image), got {type(masks).__name__}")
    if masks.ndim not in (2, 3):
        raise ValueError(f"{name} must be one image's (H, W) or (C, H, W), got shape {tuple(masks.shape)}")
    box, (out_h, out_w) = _crop_geometry(crop, size, crop_name)
    x1, y1, x2, y2 = _check_box(crop_name, box, masks.shape[-2], masks.shape[-1])
    if all(isinstance(v, int) for v in (x1, y1, x2, y2)):
        sliced = masks.detach()[..., int(y1) : int(y2), int(x1) : int(x2)]
        return resize_masks(sliced[None], (out_h, out_w))[0]
    rows = _nearest(y1, y2, out_h, masks.device)
    cols = _nearest(x1, x2, out_w, masks.device)
    return masks.detach().index_select(-2, rows).index_select(-1, cols)


def _nearest(start: float, stop: float, count: int, device: torch.device) -> torch.Tensor:
    """Source pixels of ``count`` nearest-exact samples over ``[start, stop]``, kept inside the covered pixels."""
    centres = torch.arange(count, dtype=torch.float64, device=device) + 0.5
    index = (centres * ((stop - start) / count) + start).floor_().long()
    return index.clamp_(math.floor(start), math.ceil(stop) - 1)
