"""The batch transform: resizes a whole batch and its targets on their device, as a Kornia augmentation."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from kornia.augmentation import GeometricAugmentationBase2D

from fastresize import functional
from fastresize._batch import BatchFormat
from fastresize._checks import check_choice, check_int
from fastresize.functional import Points
from fastresize.policy import MultiScalePolicy

FIXED_SIZE_CHECKED_STEPS = 5
"""With a fixed size, ``validate=None`` checks the value range while ``global_step`` is below this."""


class ResizedBatch(NamedTuple):
    """What :meth:`BatchResize.resize` returns: each target that was given, resized consistently."""

    images: torch.Tensor
    masks: torch.Tensor | None = None
    boxes: Points | None = None
    keypoints: Points | None = None


class BatchResize(GeometricAugmentationBase2D):
    """Resizes a batch of images and its targets on the batch's own device, one size for all.

    The size of a call is, in order: ``size=`` given to the call (what
    :class:`~fastresize.ResizeLoader` passes, having asked the policy itself); the fixed ``size``
    of the transform; or the ``policy``'s size for the call's ``step=``. The transform keeps no
    counter: whoever owns time gives it the step.

    Images go through :func:`fastresize.functional.resize` (bicubic by default, a fused Triton
    kernel on CUDA), so the output is an NCHW batch whatever ``format.layout`` the input has, and is
    cut from autograd. A batch that already has the size and dtype is returned as it is, without
    any work, unless a float ``value_range`` asks for the clamp: resized and unchanged batches are
    then both clamped, so the same input always gives the same values.

    Values and dtypes:
        * uint8 output is rounded and clamped to ``[0, 255]``.
        * float output is clamped to ``value_range`` when one is given.
        * Converting between uint8 and float maps ``[0, 255]`` onto ``value_range``, which is then
          required: workers ship compact uint8 and the device converts. ``value_range`` with uint8
          data that stays uint8 is an error (``dtype=`` is missing).
        * Float input with a ``value_range`` is checked to lie in it (one ``aminmax`` and a device
          sync): with ``validate=None`` while the call's ``global_step`` is below the policy's
          ``max_first_steps`` (5 for a fixed size) and on every call given no step; on every call
          with ``validate=True``; never with ``validate=False``. Data in 0..255 declared as
          ``(0, 1)`` would otherwise come out clamped to almost all ones.

    Targets:
        * ``masks``: ``(B, H, W)`` or ``(B, C, H, W)`` of any dtype, nearest-neighbour
          (``nearest-exact``), so labels stay labels.
        * ``boxes``: ``xyxy`` in pixels, ``(..., 4)`` or a list of ``(N_i, 4)``.
        * ``keypoints``: ``xy`` in pixels, ``(..., 2)`` or a list of ``(N_i, 2)``.

        The image covers ``[0, W] x [0, H]`` (torchvision's convention, the geometry of
        ``align_corners=False``): coordinates are multiplied by ``W_out / W_in`` and ``H_out / H_in``.
        The same scale matrix is what Kornia containers receive as ``transform_matrix``.

    Calling it:
        * ``transform(batch, size=None, step=None, global_step=None)``: ``batch`` is an image tensor,
          or a dict, tuple, list or namedtuple batch described by ``format``; the result has the
          same form, with the images and the declared targets resized and every other entry as it was.
        * ``transform.resize(images, masks=, boxes=, keypoints=, size=, step=, global_step=)``
          returns a :class:`ResizedBatch`.
        * Inside ``kornia.augmentation.AugmentationSequential`` it is a geometric augmentation with
          the data keys ``input``, ``mask``, ``bbox_xyxy`` and ``keypoints`` (Kornia requires float
          NCHW images there). A container calls it without a step: use a fixed size, or give a
          policy transform its step with :meth:`at` when building the container for that step.

    Args:
        size: A fixed output size: ``s`` for ``(s, s)``, or ``(height, width)``.
        policy: The size policy, instead of ``size``; each call then needs ``step=`` (or ``size=``).
        interpolation: ``"bicubic"`` (the default), ``"bilinear"`` or ``"nearest"``.
        antialias: Low-pass filter when downscaling (PyTorch's native antialias).
        value_range: The ``(low, high)`` range of float data, e.g. ``(0, 1)`` or ``(-1, 1)``.
        dtype: Output dtype; ``None`` keeps the input's.
        format: Where the images and targets are in a batch, and the images' layout;
            ``None`` is ``BatchFormat()`` (images are the batch or its ``"image"``/``0`` entry, NCHW
            with a guard against NHWC-looking shapes).
        validate: When to check float input against ``value_range`` (see above).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :func:`fastresize.functional.resize`).

    Example:
        >>> policy = MultiScalePolicy(256, 512)
        >>> resize = BatchResize(policy=policy, value_range=(0, 1), dtype=torch.float32)
        >>> images = torch.randint(0, 256, (4, 3, 300, 300), dtype=torch.uint8)
        >>> resize(images, step=0).shape  # max-size-first: the first steps use the largest size
        torch.Size([4, 3, 512, 512])
        >>> BatchResize(128)({"image": images, "label": 3})["image"].shape
        torch.Size([4, 3, 128, 128])
    """

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        *,
        policy: MultiScalePolicy | None = None,
        interpolation: str = "bicubic",
        antialias: bool = False,
        value_range: tuple[float, float] | None = None,
        dtype: torch.dtype | None = None,
        format: BatchFormat | None = None,  # noqa: A002
        validate: bool | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(p=1.0, same_on_batch=True)
        if (size is None) == (policy is None):
            raise ValueError(
                "BatchResize needs exactly one of size=... (a fixed size) or policy=... (multi-scale); "
                f"got size={size!r} and policy={policy!r}"
            )
        if policy is not None and not isinstance(policy, MultiScalePolicy):
            raise TypeError(f"policy must be a MultiScalePolicy, got {type(policy).__name__}")
        if format is not None and not isinstance(format, BatchFormat):
            raise TypeError(f"format must be a BatchFormat or None, got {type(format).__name__}")
        if validate is not None and not isinstance(validate, bool):
            raise TypeError(f"validate must be True, False or None (automatic), got {validate!r}")
        if not isinstance(antialias, bool):
            raise TypeError(f"antialias must be a bool, got {antialias!r}")
        dtype = functional.check_dtype(dtype)
        value_range = functional.check_range(value_range)
        self.size = None if size is None else functional.check_size(size)
        self.policy = policy
        self.format = format if format is not None else BatchFormat()
        self.validate = validate
        self.flags = {
            "interpolation": check_choice("interpolation", interpolation, functional.INTERPOLATIONS),
            "antialias": antialias,
            "value_range": value_range,
            "dtype": dtype,
            "backend": check_choice("backend", backend, functional.BACKENDS),
        }
        # Set only on the copies that at() returns: the step a Kornia container's call stands for.
        self._bound_step: tuple[int, int] | None = None

    # ------------------------------------------------------------------------------------ time
    @property
    def checked_steps(self) -> int:
        """With ``validate=None``: the value range is checked while ``global_step`` is below this."""
        return self.policy.max_first_steps if self.policy is not None else FIXED_SIZE_CHECKED_STEPS

    def target_size(
        self,
        shape: Sequence[int],
        *,
        size: int | tuple[int, int] | None = None,
        step: int | None = None,
        global_step: int | None = None,
    ) -> tuple[int, int]:
        """Return the ``(height, width)`` of a call on an NCHW input of ``shape``.

        Raises:
            ValueError: a policy transform is called without ``step=`` or ``size=``.
        """
        if size is not None:
            return functional.check_size(size)
        if self.policy is None:
            return self.size  # type: ignore[return-value]
        if step is None:
            if self._bound_step is None:
                raise ValueError(
                    "BatchResize(policy=...) needs the step of each call: transform(batch, step=absolute_step) "
                    "(global_step defaults to step), or transform(batch, size=...); ResizeLoader passes its "
                    "counter's step"
                )
            step, global_step = self._bound_step
        return self.policy.size_for(step, step if global_step is None else global_step, shape)

    def _validates(self, step: int | None, global_step: int | None) -> bool:
        if self.validate is not None:
            return self.validate
        given = global_step if global_step is not None else step
        if given is None and self._bound_step is not None:
            given = self._bound_step[1]
        return given is None or given < self.checked_steps

    def at(self, step: int, global_step: int | None = None) -> BatchResize:
        """Return a copy of this transform that uses ``step`` when called without one (e.g. by Kornia).

        Build the Kornia container of a step with it:
        ``AugmentationSequential(flip, resize.at(step), data_keys=[...])``.

        Args:
            step: The absolute step.
            global_step: Steps since this process started; defaults to ``step``.
        """
        step = check_int("step", step, minimum=0)
        global_step = step if global_step is None else check_int("global_step", global_step, minimum=0)
        bound = copy.copy(self)  # the settings are shared: they are never changed after __init__
        bound._bound_step = (step, global_step)
        return bound

    # --------------------------------------------------------------------------------- resizing
    def _resize_images(
        self, images: torch.Tensor, size: tuple[int, int], layout: str | None, check: bool, flags: dict[str, Any]
    ) -> torch.Tensor:
        if check:
            functional.check_value_range(images, flags["value_range"])
        # Named one by one: Kornia adds its own entries (e.g. data_keys) to the flags it passes.
        return functional.resize(
            images,
            size,
            interpolation=flags["interpolation"],
            antialias=flags["antialias"],
            value_range=flags["value_range"],
            dtype=flags["dtype"],
            layout=layout,
            backend=flags["backend"],
        )

    def resize(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        boxes: Points | None = None,
        keypoints: Points | None = None,
        *,
        size: int | tuple[int, int] | None = None,
        step: int | None = None,
        global_step: int | None = None,
    ) -> ResizedBatch:
        """Resize the images and every given target to the call's size (see the class docstring).

        Args:
            images: ``(B, C, H, W)``, or ``(B, H, W, C)`` with ``format.layout="NHWC"``.
            masks: ``(B, H, W)`` or ``(B, C, H, W)`` masks of the images, any dtype.
            boxes: ``xyxy`` pixel boxes, ``(..., 4)`` or a list of ``(N_i, 4)``.
            keypoints: ``xy`` pixel keypoints, ``(..., 2)`` or a list of ``(N_i, 2)``.
            size: This call's size, instead of the fixed size or the policy's.
            step: The absolute step, for a policy's size.
            global_step: Steps since this process started (max-size-first and the range check);
                defaults to ``step``.

        Returns:
            A :class:`ResizedBatch` with the NCHW images and the targets (``None`` where not given).

        Raises:
            TypeError: a non-tensor input, or an unsupported dtype.
            ValueError: a wrong rank or layout, masks of another size than the images, a policy
                without a step, float images outside ``value_range``, or a bad uint8/float conversion.
        """
        if step is not None:
            step = check_int("step", step, minimum=0)
        if global_step is not None:
            global_step = check_int("global_step", global_step, minimum=0)
        nchw = self.format.nchw(images)
        in_size = (nchw.shape[-2], nchw.shape[-1])
        if isinstance(masks, torch.Tensor) and tuple(masks.shape[-2:]) != in_size:
            raise ValueError(f"masks must have the images' height and width {in_size}, got shape {tuple(masks.shape)}")
        out_size = self.target_size(nchw.shape, size=size, step=step, global_step=global_step)
        return ResizedBatch(
            images=self._resize_images(
                images, out_size, self.format.layout, self._validates(step, global_step), self.flags
            ),
            masks=None if masks is None else functional.resize_masks(masks, out_size),
            boxes=None if boxes is None else functional.scale_boxes(boxes, in_size, out_size),
            keypoints=None if keypoints is None else functional.scale_keypoints(keypoints, in_size, out_size),
        )

    def forward(  # type: ignore[override]
        self,
        input: Any,  # noqa: A002
        params: dict[str, torch.Tensor] | None = None,
        *,
        size: int | tuple[int, int] | None = None,
        step: int | None = None,
        global_step: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Resize an image batch, or the image and target entries of a dict/tuple/list batch.

        Called with ``params`` (as Kornia containers do), it runs Kornia's augmentation path, which
        ends in the same :func:`~fastresize.functional.resize`. Called plainly it skips Kornia's
        parameter bookkeeping, which would cost more than the resize itself on a GPU.
        """
        if params is not None or kwargs:
            return super().forward(input, params=params, **kwargs)
        if isinstance(input, torch.Tensor):  # the common case, without the batch-structure lookup
            return self.resize(input, size=size, step=step, global_step=global_step).images
        given = self.format.get(input)
        resized = self.resize(**given, size=size, step=step, global_step=global_step)
        return self.format.put(input, {field: getattr(resized, field) for field in given})

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
        # Kornia hands over NCHW images; the step is the bound one, if any.
        size = self._param_size(params, input)
        return self._resize_images(input, size, "NCHW", self._validates(None, None), flags)

    def apply_transform_mask(
        self,
        input: torch.Tensor,  # noqa: A002
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return functional.resize_masks(input, self._param_size(params, input))

    def extra_repr(self) -> str:
        source = f"size={self.size}" if self.policy is None else f"policy={self.policy!r}"
        settings = ", ".join(f"{key}={value!r}" for key, value in self.flags.items())
        return f"{source}, {settings}, format={self.format!r}, validate={self.validate!r}"
