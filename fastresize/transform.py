"""The batch transform: resizes a whole batch on its own device, built as a Kornia augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from kornia.augmentation import GeometricAugmentationBase2D

from fastresize._batch import LAYOUTS, BatchFields, Key
from fastresize._checks import check_choice, check_float, check_int
from fastresize.counter import StepCounter
from fastresize.policy import MultiScalePolicy

_IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)

Points = torch.Tensor | Sequence[torch.Tensor]
"""Boxes or keypoints: one tensor for the batch, or one tensor per image (detection style)."""


class ResizedBatch(NamedTuple):
    """What :meth:`BatchResize.resize` returns: each target that was given, resized consistently."""

    images: torch.Tensor
    masks: torch.Tensor | None = None
    boxes: Points | None = None
    keypoints: Points | None = None


def _nearest_indices(size_in: int, size_out: int, device: torch.device) -> torch.Tensor:
    """Source rows (or columns) of PyTorch's ``nearest-exact`` mode, for any dtype."""
    # float32 reproduces F.interpolate's own index arithmetic, so both agree exactly.
    centres = torch.arange(size_out, device=device, dtype=torch.float32) + 0.5
    return (centres * (size_in / size_out)).floor_().long().clamp_(max=size_in - 1)


def _scale_points(points: Points, scale: torch.Tensor, name: str) -> Points:
    """Multiply the trailing coordinate axis of ``points`` by ``scale`` (x, y, x, y...)."""
    if isinstance(points, torch.Tensor):
        if points.ndim < 1 or points.shape[-1] != scale.numel():
            raise ValueError(f"{name} must have a last dimension of {scale.numel()}, got shape {tuple(points.shape)}")
        dtype = points.dtype if points.is_floating_point() else torch.float32
        return points.to(dtype) * scale.to(points.device, dtype)
    if isinstance(points, Sequence) and not isinstance(points, (str, bytes)):
        return [_scale_points(p, scale, f"{name}[{i}]") for i, p in enumerate(points)]  # type: ignore[misc]
    raise TypeError(f"{name} must be a tensor or a list of tensors, got {type(points).__name__}")


class BatchResize(GeometricAugmentationBase2D):
    """Resizes a batch of images with bicubic interpolation, on the batch's own device.

    The size is either fixed (``size=``) or chosen per step by a :class:`MultiScalePolicy` from the
    position of a :class:`StepCounter` (``policy=``, ``counter=``): the transform reads the counter
    and never advances it. One step always gets one size, however often the transform is called.

    Interpolation is ``F.interpolate(mode="bicubic", align_corners=False)``, optionally with
    PyTorch's native ``antialias``. The output is cut from autograd (``requires_grad`` is False).
    A batch that already has the target size and dtype is returned as it is, without any work.

    Values and dtypes:
        * uint8 output is rounded and clamped to ``[0, 255]``.
        * float output is clamped to ``value_range`` when one is given: bicubic overshoots, and
          ``[0, 1]`` data would otherwise come out in about ``[-0.19, 1.15]``.
        * Converting between uint8 and float maps ``[0, 255]`` onto ``value_range``, which is then
          required: workers ship compact uint8 and the device converts.

    Targets:
        * ``masks``: ``(B, H, W)`` or ``(B, C, H, W)`` of any dtype, nearest-neighbour
          (``nearest-exact``), so labels stay labels.
        * ``boxes``: ``xyxy`` in pixels, ``(..., 4)`` or a list of ``(N_i, 4)``.
        * ``keypoints``: ``xy`` in pixels, ``(..., 2)`` or a list of ``(N_i, 2)``.

        Pixel convention: the image covers ``[0, W] x [0, H]`` and pixel ``(i, j)`` covers
        ``[j, j + 1] x [i, i + 1]`` (torchvision's convention), which is the geometry of
        ``align_corners=False``. Coordinates are therefore multiplied by ``W_out / W_in`` and
        ``H_out / H_in``: a box covering the whole image still covers it after the resize. The same
        scale matrix is what Kornia containers receive as ``transform_matrix``.

    Calling it:
        * ``resize(images, masks=..., boxes=..., keypoints=...)`` resizes every target in one call.
        * ``transform(images)`` returns the resized images.
        * ``transform(batch)`` with a dict or tuple/list batch returns a new batch of the same form
          in which the images (``batch["image"]`` or ``batch[0]`` unless ``image_key`` says
          otherwise) and the targets whose keys are given (``mask_key``, ``boxes_key``,
          ``keypoints_key``) are resized; every other entry passes through untouched. This serves
          latent-diffusion batches with ``batch["image"]`` in NHWC.
        * Inside ``kornia.augmentation.AugmentationSequential`` it is a geometric augmentation with
          the data keys ``input``, ``mask``, ``bbox_xyxy`` and ``keypoints`` (Kornia requires float
          images there).

    Args:
        size: A fixed output size: ``s`` for ``(s, s)``, or ``(height, width)``.
        policy: The size policy, used with ``counter`` instead of ``size``.
        counter: The step counter whose position picks the policy's size.
        multiple: Each side of a fixed ``size`` must be a multiple of this.
        antialias: Low-pass filter when downscaling (PyTorch's native antialias).
        value_range: The ``(low, high)`` range of float data, e.g. ``(0, 1)`` or ``(-1, 1)``.
        dtype: Output dtype; ``None`` keeps the input's.
        layout: ``"NCHW"`` or ``"NHWC"``: the layout of the images, kept in the output.
        image_key: Where the images are in a dict (str) or tuple/list (int) batch.
        mask_key: Where the masks are, if the batch has any to resize.
        boxes_key: Where the boxes are, if any.
        keypoints_key: Where the keypoints are, if any.

    Example:
        >>> policy = MultiScalePolicy(256, 512)
        >>> counter = StepCounter(steps_per_epoch=100)
        >>> resize = BatchResize(policy=policy, counter=counter, value_range=(0, 1), dtype=torch.float32)
        >>> images = torch.randint(0, 256, (4, 3, 300, 300), dtype=torch.uint8)
        >>> resize(images).shape  # max-size-first: step 0 uses the largest size
        torch.Size([4, 3, 512, 512])
    """

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        *,
        policy: MultiScalePolicy | None = None,
        counter: StepCounter | None = None,
        multiple: int = 16,
        antialias: bool = False,
        value_range: tuple[float, float] | None = None,
        dtype: torch.dtype | None = None,
        layout: str = "NCHW",
        image_key: Key | None = None,
        mask_key: Key | None = None,
        boxes_key: Key | None = None,
        keypoints_key: Key | None = None,
    ) -> None:
        super().__init__(p=1.0, same_on_batch=True)
        self.multiple = check_int("multiple", multiple, minimum=1)
        self.size = None if size is None else self._check_size(size)
        if (size is None) == (policy is None):
            raise ValueError(
                "BatchResize needs exactly one of size=... (a fixed size) or policy=... (multi-scale); "
                f"got size={size!r} and policy={policy!r}"
            )
        if policy is not None and not isinstance(policy, MultiScalePolicy):
            raise TypeError(f"policy must be a MultiScalePolicy, got {type(policy).__name__}")
        if policy is not None and not isinstance(counter, StepCounter):
            raise TypeError(f"policy=... needs counter=StepCounter(...) to know the step, got counter={counter!r}")
        if policy is None and counter is not None:
            raise ValueError("counter=... is only used with policy=...; a fixed size needs no counter")
        self.policy = policy
        self.counter = counter
        if not isinstance(antialias, bool):
            raise TypeError(f"antialias must be a bool, got {antialias!r}")
        self.antialias = antialias
        self.value_range = None if value_range is None else self._check_range(value_range)
        if dtype is not None and dtype not in _IMAGE_DTYPES:
            raise TypeError(f"dtype must be one of {_IMAGE_DTYPES} or None, got {dtype!r}")
        self.out_dtype = dtype
        self.layout = check_choice("layout", layout, LAYOUTS)
        self.fields = BatchFields(image_key, mask_key, boxes_key, keypoints_key)
        self.flags = {"antialias": antialias}

    def _check_size(self, size: Any) -> tuple[int, int]:
        pair = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
        if len(pair) != 2:
            raise ValueError(f"size must be an int or a (height, width) pair, got {size!r}")
        h, w = (check_int("size", side, minimum=1) for side in pair)
        if h % self.multiple or w % self.multiple:
            raise ValueError(
                f"size must be a multiple of multiple={self.multiple}, got {size!r}; round it or pass multiple=1"
            )
        return (h, w)

    @staticmethod
    def _check_range(value_range: Any) -> tuple[float, float]:
        if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
            raise ValueError(f"value_range must be a (low, high) pair, got {value_range!r}")
        low = check_float("value_range[0]", value_range[0])
        high = check_float("value_range[1]", value_range[1])
        if low >= high:
            raise ValueError(f"value_range must have low < high, got {value_range!r}")
        return (low, high)

    def target_size(self, shape: Sequence[int]) -> tuple[int, int]:
        """Return the ``(height, width)`` for the current step and an NCHW input ``shape``."""
        if self.policy is not None and self.counter is not None:
            return self.policy.size_for(self.counter.absolute_step, self.counter.global_step, shape)
        return cast(tuple[int, int], self.size)

    # ----------------------------------------------------------------------------------- images
    def _check_images(self, images: Any) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(
                f"images must be a 4-D {self.layout} batch, got shape {tuple(images.shape)}; "
                "add a batch dimension with images.unsqueeze(0)"
            )
        if images.dtype not in _IMAGE_DTYPES:
            raise TypeError(f"images must have a dtype in {_IMAGE_DTYPES}, got {images.dtype}")
        return images if self.layout == "NCHW" else images.permute(0, 3, 1, 2)

    def _resize_images(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Resize an NCHW batch to ``size`` and convert it to the output dtype."""
        out_dtype = self.out_dtype or images.dtype
        if tuple(images.shape[-2:]) == size and images.dtype == out_dtype:
            return images.detach()
        converts = (images.dtype == torch.uint8) != (out_dtype == torch.uint8)
        if converts and self.value_range is None:
            raise ValueError(
                f"converting {images.dtype} to {out_dtype} needs value_range=(low, high), "
                "the float range that [0, 255] maps to, e.g. (0, 1) or (-1, 1)"
            )
        work_dtype = out_dtype if out_dtype.is_floating_point else images.dtype
        if not work_dtype.is_floating_point or (
            images.device.type == "cpu" and work_dtype in (torch.float16, torch.bfloat16)
        ):
            # Bicubic needs float; CPU half kernels lack antialias and are slow, so use float32 there.
            work_dtype = torch.float32
        x = images.to(work_dtype)
        if images.dtype == torch.uint8 and out_dtype != torch.uint8:
            low, high = self.value_range  # type: ignore[misc]
            x = x.mul_((high - low) / 255.0).add_(low)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=self.antialias)
        if out_dtype == torch.uint8:
            if images.dtype != torch.uint8:
                low, high = self.value_range  # type: ignore[misc]
                x = x.sub_(low).mul_(255.0 / (high - low))
            return x.round_().clamp_(0, 255).to(torch.uint8)
        if self.value_range is not None:
            x = x.clamp_(*self.value_range)
        return x.to(out_dtype)

    # ---------------------------------------------------------------------------------- targets
    @staticmethod
    def _resize_masks(masks: Any, size: tuple[int, int]) -> torch.Tensor:
        if not isinstance(masks, torch.Tensor):
            raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
        if masks.ndim not in (3, 4):
            raise ValueError(f"masks must be (B, H, W) or (B, C, H, W), got shape {tuple(masks.shape)}")
        h_in, w_in = masks.shape[-2:]
        if (h_in, w_in) == size:
            return masks.detach()
        rows = _nearest_indices(h_in, size[0], masks.device)
        cols = _nearest_indices(w_in, size[1], masks.device)
        return masks.detach().index_select(-2, rows).index_select(-1, cols)

    def resize(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        boxes: Points | None = None,
        keypoints: Points | None = None,
    ) -> ResizedBatch:
        """Resize the images and every given target to this step's size, in one call.

        Args:
            images: ``(B, C, H, W)`` (or ``(B, H, W, C)`` with ``layout="NHWC"``).
            masks: ``(B, H, W)`` or ``(B, C, H, W)`` masks of the images, any dtype.
            boxes: ``xyxy`` pixel boxes, ``(..., 4)`` or a list of ``(N_i, 4)``.
            keypoints: ``xy`` pixel keypoints, ``(..., 2)`` or a list of ``(N_i, 2)``.

        Returns:
            A :class:`ResizedBatch` with the resized images and targets (``None`` where not given).

        Raises:
            TypeError: a non-tensor input, or an unsupported dtype.
            ValueError: a wrong rank or shape, masks of another size than the images, or a uint8/float
                conversion without ``value_range``.
        """
        nchw = self._check_images(images)
        h_in, w_in = nchw.shape[-2:]
        if masks is not None and isinstance(masks, torch.Tensor) and tuple(masks.shape[-2:]) != (h_in, w_in):
            raise ValueError(
                f"masks must have the images' height and width {(h_in, w_in)}, got shape {tuple(masks.shape)}"
            )
        size = self.target_size(nchw.shape)
        with torch.no_grad():
            out = self._resize_images(nchw, size)
            if self.layout == "NHWC":
                out = out.permute(0, 2, 3, 1)
            scale_x, scale_y = size[1] / w_in, size[0] / h_in
            return ResizedBatch(
                images=out,
                masks=None if masks is None else self._resize_masks(masks, size),
                boxes=None
                if boxes is None
                else _scale_points(boxes, torch.tensor([scale_x, scale_y, scale_x, scale_y]), "boxes"),
                keypoints=None
                if keypoints is None
                else _scale_points(keypoints, torch.tensor([scale_x, scale_y]), "keypoints"),
            )

    def forward(self, input: Any, params: dict[str, torch.Tensor] | None = None, **kwargs: Any) -> Any:  # noqa: A002
        """Resize an image batch, or the image and target entries of a dict batch.

        Called with ``params`` (as Kornia containers do), it runs Kornia's augmentation path, which
        ends in the same resize. Called plainly it skips Kornia's parameter bookkeeping, which would
        cost more than the resize itself on a GPU.
        """
        if params is not None or kwargs:
            return super().forward(input, params=params, **kwargs)
        given = self.fields.get(input)
        resized = self.resize(**given)
        return self.fields.put(input, {field: getattr(resized, field) for field in given})

    # ------------------------------------------------------------- Kornia augmentation contract
    # apply_transform never reads the matrix, so Kornia may build it only when a box asks for it.
    _compute_matrix_lazily = True

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        height, width = self.target_size(batch_shape)
        return {"output_size": torch.tensor([[height, width]] * batch_shape[0], dtype=torch.long)}

    @staticmethod
    def _param_size(params: dict[str, torch.Tensor], input: torch.Tensor) -> tuple[int, int]:  # noqa: A002
        sizes = params["output_size"]
        if sizes.shape[0] == 0:
            return (int(input.shape[-2]), int(input.shape[-1]))
        return (int(sizes[0, 0]), int(sizes[0, 1]))

    def compute_transformation(
        self,
        input: torch.Tensor,  # noqa: A002
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
    ) -> torch.Tensor:
        height, width = self._param_size(params, input)
        dtype = input.dtype if input.is_floating_point() else torch.float32
        matrix = torch.eye(3, device=input.device, dtype=dtype)
        matrix[0, 0] = width / input.shape[-1]
        matrix[1, 1] = height / input.shape[-2]
        return matrix.expand(input.shape[0], 3, 3)

    def apply_transform(
        self,
        input: torch.Tensor,  # noqa: A002
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with torch.no_grad():
            return self._resize_images(input, self._param_size(params, input))

    def apply_transform_mask(
        self,
        input: torch.Tensor,  # noqa: A002
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._resize_masks(input, self._param_size(params, input))

    def extra_repr(self) -> str:
        source = f"size={self.size}" if self.policy is None else f"policy={self.policy!r}"
        return (
            f"{source}, antialias={self.antialias}, value_range={self.value_range}, "
            f"dtype={self.out_dtype}, layout={self.layout!r}"
        )
