"""The batch transform: resizes a whole batch and its targets on their device, as a Kornia augmentation."""

# ruff: noqa: A002  (`input` and `format` are the names Kornia's hooks and the settings use)

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from kornia.augmentation import GeometricAugmentationBase2D

from fastresize import functional
from fastresize._batch import BatchFormat
from fastresize._checks import check_int, check_size
from fastresize.crop import CropPolicy
from fastresize.functional import Points
from fastresize.ragged import RaggedImages
from fastresize.resample import resample_fields

Tensor = torch.Tensor
Params = dict[str, torch.Tensor]
Flags = dict[str, Any]

FIXED_SIZE_CHECKED_STEPS = 5
"""With a fixed size, ``validate=None`` checks the value range at once while ``global_step`` is below this."""
POLICY_METHODS = ("size_for", "max_size", "state_dict", "load_state_dict")
"""What a size policy has: ``size_for(step, global_step, shape)``, ``max_size`` and its state."""
SAMPLE_RUN, SAMPLE_STEP = 256, 16411
"""The range check one call later reads, of a batch over 2**20 values, a run of ``SAMPLE_RUN``
consecutive values every ``SAMPLE_STEP`` in each image (a prime step, so the runs drift across rows
and channels): about 1/64 of the values, in every image, for under 2% of a resize on the CPU."""


class ResizedBatch(NamedTuple):
    """What :meth:`BatchResize.resize` returns: each target that was given, resized consistently."""

    images: torch.Tensor
    masks: torch.Tensor | None = None
    boxes: Points | None = None
    keypoints: Points | None = None


class _PendingCheck:
    """The range check of the last batch, read at the next call.

    Shared by a transform and its :meth:`~BatchResize.at` copies, which are one transform at other
    steps; a pickled or deep-copied transform (in a worker, a checkpoint) starts without one.
    """

    def __init__(self) -> None:
        self.check: tuple[torch.Tensor, torch.cuda.Event | None, str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"check": None}


class BatchResize(GeometricAugmentationBase2D):
    """Resizes a batch of images and its targets on the batch's own device, one size for all.

    The size of a call is, in order: ``size=`` given to the call; the fixed ``size`` of the
    transform; or the ``policy``'s size for the call's ``step=`` and ``global_step=`` (what
    :class:`~fastresize.ResizeLoader` passes, from its counter). The transform keeps no counter:
    whoever owns time gives it the step.

    Images go through :func:`fastresize.functional.resize` (bicubic by default, a fused Triton
    kernel on CUDA), so the output is an NCHW batch whatever ``format.layout`` the input has, and is
    cut from autograd. A batch that already has the size and dtype is returned as it is, unless a
    float ``value_range`` asks for the clamp. Masks are resized with nearest-neighbour
    (``nearest-exact``), so labels stay labels; boxes and keypoints are scaled as
    :func:`~fastresize.functional.scale_boxes` describes, by the scale matrix that Kornia containers
    receive as ``transform_matrix``.

    Values and dtypes are those of :func:`~fastresize.functional.resize`: ``value_range`` maps uint8
    to float and back, float output is clamped to it, uint8 output is rounded and clamped.

    Crops: a ragged batch (a :class:`~fastresize.RaggedImages` of images of different sizes, as
    :class:`~fastresize.ResizeCollate` packs them) and every batch of a transform given ``crop``
    take the crop path: each image is cropped to its box (``crop`` picks it from ``(seed, step,
    index)``; a ragged batch without ``crop`` is centre-cropped) and resized to the call's size in
    one resample, one launch on CUDA (:func:`~fastresize.ragged.resized_crop`). Masks are cropped
    and resized with nearest, boxes and keypoints mapped through the crop (see
    :func:`~fastresize.crop.crop_boxes`). A policy in ``side="short"``/``"long"`` takes the first
    image's shape.

    The value-range check: float input with a ``value_range`` must lie in it (0..255 data declared
    as ``(0, 1)`` would otherwise come out clamped to almost all ones). With ``validate=None``, the
    first steps (``global_step`` below the policy's ``max_first_steps``, 5 for a fixed size) and
    every call given no step are checked at once: every value, one ``aminmax`` and a device sync.
    Every later batch is checked without a sync: its ``aminmax`` is queued on the device, copied to
    pinned memory and read at the next call, after that call's resize is queued, so the device never
    waits; a bad batch raises ``ValueError`` then, naming its step. A batch over 2**20 values is
    checked on about 1/64 of its values, in every image (:data:`SAMPLE_RUN`): enough for data in the
    wrong range, not for a lone bad pixel. The last batch of a run is not read, nor are batches
    under ``torch.compile``, which cannot read a value later. ``validate=True`` checks every value
    of every batch at once; ``validate=False`` never checks. The :meth:`at` copies of a transform
    share its pending check.

    Calling it:
        * ``transform(batch, size=None, step=None, global_step=None)``: ``batch`` is an image tensor,
          or a dict, tuple, list or namedtuple batch described by ``format``; the result has the
          same form, with the images and the declared targets resized and every other entry as it was.
        * ``transform.resize(images, masks=, boxes=, keypoints=, size=, step=, global_step=)``
          returns a :class:`ResizedBatch`.
        * Inside ``kornia.augmentation.AugmentationSequential`` it is a geometric augmentation with
          the data keys ``input``, ``mask``, ``bbox_xyxy`` and ``keypoints`` (Kornia requires float
          NCHW images there), and ``inverse`` maps outputs back to the input's size: images with the
          same interpolation, masks with nearest, boxes and keypoints by the inverse scale. A
          container calls it without a step: use a fixed size, or give a policy transform its step
          with :meth:`at` when building the container for that step.

    Args:
        size: A fixed output size: ``s`` for ``(s, s)``, or ``(height, width)``.
        policy: The size policy, instead of ``size``: a :class:`~fastresize.MultiScalePolicy` or any
            object with ``size_for(step, global_step, shape)``, ``max_size``, ``state_dict()`` and
            ``load_state_dict()``. Each call then needs ``step=`` (or ``size=``).
        interpolation: ``"bicubic"`` (the default), ``"bilinear"`` or ``"nearest"``.
        antialias: Low-pass filter when downscaling (PyTorch's native antialias).
        value_range: The ``(low, high)`` range of float data, e.g. ``(0, 1)`` or ``(-1, 1)``.
        dtype: Output dtype; ``None`` keeps the input's.
        format: Where the images and targets are in a batch, and the images' layout;
            ``None`` is ``BatchFormat()`` (images are the batch or its ``"image"``/``0`` entry, NCHW
            with a guard against NHWC-looking shapes).
        validate: When to check float input against ``value_range`` (see above).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :func:`fastresize.functional.resize`).
        crop: How each image's box is chosen before the resize: a :class:`~fastresize.CropPolicy`,
            or its rule (``"center"``, ``"full"``, ``"random"``, ``"provided"``); ``None`` resizes
            whole images (and centre-crops ragged batches).

    Example:
        >>> from fastresize import MultiScalePolicy
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
        policy: Any = None,
        interpolation: str = "bicubic",
        antialias: bool = False,
        value_range: tuple[float, float] | None = None,
        dtype: torch.dtype | None = None,
        format: BatchFormat | None = None,
        validate: bool | None = None,
        backend: str = "auto",
        crop: str | CropPolicy | None = None,
    ) -> None:
        super().__init__(p=1.0, same_on_batch=True)
        if (size is None) == (policy is None):
            raise ValueError(
                "BatchResize needs exactly one of size=... (a fixed size) or policy=... (multi-scale); "
                f"got size={size!r} and policy={policy!r}"
            )
        missing = [name for name in POLICY_METHODS if policy is not None and not hasattr(policy, name)]
        if missing:
            raise TypeError(
                f"policy must be a size policy such as MultiScalePolicy, with {', '.join(POLICY_METHODS)}; "
                f"got a {type(policy).__name__} without {', '.join(missing)}"
            )
        if format is not None and not isinstance(format, BatchFormat):
            raise TypeError(f"format must be a BatchFormat or None, got {type(format).__name__}")
        if validate is not None and not isinstance(validate, bool):
            raise TypeError(f"validate must be True, False or None (automatic), got {validate!r}")
        self.flags = functional._check_flags(interpolation, antialias, value_range, dtype, backend)
        self.size = None if size is None else check_size("size", size)
        self.policy = policy
        self.format = format if format is not None else BatchFormat()
        self.validate = validate
        if crop is not None and not isinstance(crop, (str, CropPolicy)):
            raise TypeError(f"crop must be a CropPolicy, one of its rules (e.g. 'center') or None, got {crop!r}")
        self.crop = CropPolicy(crop) if isinstance(crop, str) else crop
        # Set only on the copies that at() returns: the step a Kornia container's call stands for.
        self._bound_step: tuple[int, int] | None = None
        self._pending = _PendingCheck()

    @property
    def checked_steps(self) -> int:
        """With ``validate=None``: the value range is checked at once while ``global_step`` is below this."""
        return int(getattr(self.policy, "max_first_steps", FIXED_SIZE_CHECKED_STEPS))

    def target_size(
        self,
        shape: tuple[int, ...] | torch.Size,
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
            return check_size("size", size)
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
        return self.policy.size_for(step, step if global_step is None else global_step, shape)  # type: ignore[no-any-return]

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
        bound = copy.copy(self)  # settings and the pending check are shared: one transform, another step
        bound._bound_step = (step, global_step)
        return bound

    def _resize_images(
        self, nchw: torch.Tensor, size: tuple[int, int], step: int | None, global_step: int | None
    ) -> torch.Tensor:
        """The one way to the functional: the range check, then the resize of an NCHW view."""
        resized: torch.Tensor = self._checked(
            nchw, step, global_step, lambda: functional._resize(nchw, size, **self.flags)
        )
        return resized

    def _checked(self, nchw: torch.Tensor, step: int | None, global_step: int | None, resize: Callable[[], Any]) -> Any:
        """``resize()``, with the range check of ``nchw`` at once, or queued and read one call later."""
        if step is None and self._bound_step is not None:
            step, global_step = self._bound_step
        elif step is not None and global_step is None:
            global_step = step
        checks = self.validate is not False and self.flags["value_range"] is not None and nchw.is_floating_point()
        now = checks and (self.validate or global_step is None or global_step < self.checked_steps)
        if now:
            functional._check_value_range(nchw, self.flags["value_range"])
        if torch.compiler.is_compiling():  # a graph cannot read a value one call later
            return resize()
        when = f"step {step}" if step is not None else f"global_step {global_step}"
        queued = self._queue_check(nchw, when) if checks and not now and nchw.numel() else None
        out = resize()
        previous, self._pending.check = self._pending.check, queued
        if previous is not None:
            self._read_check(*previous)
        return out

    @staticmethod
    def _queue_check(images: torch.Tensor, when: str) -> tuple[torch.Tensor, torch.cuda.Event | None, str]:
        """Queue the ``aminmax`` of a batch (a sample of a large one) on its device, to read it later."""
        sample = images.detach()
        if sample.is_contiguous(memory_format=torch.channels_last):
            sample = sample.permute(0, 2, 3, 1)  # NHWC in memory: the same values, in memory order
        if sample.numel() > 2**20 and sample.is_contiguous() and sample[0].numel() >= SAMPLE_RUN:
            sample = sample.reshape(sample.shape[0], -1).unfold(1, SAMPLE_RUN, SAMPLE_STEP)  # a view
        values = torch.stack(torch.aminmax(sample))
        if not values.is_cuda:
            return values, None, when  # CPU: already computed; other devices sync when read
        host = torch.empty(2, dtype=values.dtype, pin_memory=True).copy_(values, non_blocking=True)
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(torch.cuda.current_stream(values.device))
        return host, event, when

    def _read_check(self, values: torch.Tensor, event: torch.cuda.Event | None, when: str) -> None:
        if event is not None:
            event.synchronize()  # recorded before that batch's resize: long done by now
        error = functional._range_error(self.flags["value_range"], *values.tolist())
        if error is not None:
            raise ValueError(f"{error} (found in the batch of {when}, checked one call later)")

    def resize(
        self,
        images: torch.Tensor | RaggedImages,
        masks: torch.Tensor | Sequence[torch.Tensor] | None = None,
        boxes: Points | None = None,
        keypoints: Points | None = None,
        crops: Any = None,
        *,
        size: int | tuple[int, int] | None = None,
        step: int | None = None,
        global_step: int | None = None,
        resampled: bool = False,
    ) -> ResizedBatch:
        """Resize the images and every given target to the call's size (see the class docstring).

        Args:
            images: ``(B, C, H, W)``, or ``(B, H, W, C)`` with ``format.layout="NHWC"``; or a
                ragged batch (:class:`~fastresize.RaggedImages`).
            masks: ``(B, H, W)`` or ``(B, C, H, W)`` masks of the images, any dtype; per image
                (a list) in a ragged batch.
            boxes: ``xyxy`` pixel boxes, ``(..., 4)`` or a list of ``(N_i, 4)``.
            keypoints: ``xy`` pixel keypoints, ``(..., 2)`` or a list of ``(N_i, 2)``.
            crops: Each image's source box, for ``crop`` rule ``"provided"``.
            size: This call's size, instead of the fixed size or the policy's.
            step: The absolute step, for a policy's size.
            global_step: Steps since this process started (max-size-first and the range check);
                defaults to ``step``.
            resampled: The images were already cropped and resized to this step's size (by the
                DataLoader's workers, see :mod:`fastresize.resample`): only convert them.

        Returns:
            A :class:`ResizedBatch` with the NCHW images and the targets (``None`` where not given).

        Raises:
            TypeError: a non-tensor input, or an unsupported dtype.
            ValueError: a wrong rank or layout, masks of another size than the images, a policy
                without a step, float images outside ``value_range`` (this batch's or, checked one
                call later, the previous one's), or a bad uint8/float conversion.
        """
        if self.policy is None or size is not None:  # a policy checks the steps it is given
            step = None if step is None else check_int("step", step, minimum=0)
            global_step = None if global_step is None else check_int("global_step", global_step, minimum=0)
        if isinstance(images, RaggedImages) or (self.crop is not None and not resampled):
            return self._resample(images, masks, boxes, keypoints, crops, size, step, global_step)
        nchw = self.format.nchw(images)
        in_size = (nchw.shape[-2], nchw.shape[-1])
        if isinstance(masks, torch.Tensor) and tuple(masks.shape[-2:]) != in_size:
            raise ValueError(f"masks must have the images' height and width {in_size}, got shape {tuple(masks.shape)}")
        out_size = self.target_size(nchw.shape, size=size, step=step, global_step=global_step)
        return ResizedBatch(
            images=self._resize_images(nchw, out_size, step, global_step),
            masks=None if masks is None else functional.resize_masks(masks, out_size),  # type: ignore[arg-type]
            boxes=None if boxes is None else functional.scale_boxes(boxes, in_size, out_size),
            keypoints=None if keypoints is None else functional.scale_keypoints(keypoints, in_size, out_size),
        )

    def _resample(
        self,
        images: torch.Tensor | RaggedImages,
        masks: Any,
        boxes: Any,
        keypoints: Any,
        crops: Any,
        size: int | tuple[int, int] | None,
        step: int | None,
        global_step: int | None,
    ) -> ResizedBatch:
        """The crop path: every image cropped to its box and resized to the call's size, once."""
        layout: str | None
        if isinstance(images, RaggedImages):
            layout, values = images.layout, images.data.view(1, 1, 1, -1)
            shape: tuple[int, ...] = (len(images), images.channels, *images.sizes[0])
        else:
            layout, values = self.format.layout, self.format.nchw(images)
            shape = tuple(values.shape)
        out_size = self.target_size(shape, size=size, step=step, global_step=global_step)
        if step is None and self._bound_step is not None:
            step = self._bound_step[0]
        if step is None and self.crop is not None and self.crop.rule == "random":
            raise ValueError(
                "crop='random' draws each call's boxes from the call's step: pass step=... (or bind one with at())"
            )
        step = 0 if step is None else step
        fields = {"images": images, "masks": masks, "boxes": boxes, "keypoints": keypoints, "crops": crops}
        given = {field: value for field, value in fields.items() if value is not None}
        out = self._checked(
            values,
            step,
            global_step,
            lambda: resample_fields(given, out_size, step, self.crop, layout=layout, **self.flags),
        )
        return ResizedBatch(**{field: out.get(field) for field in ResizedBatch._fields})

    def forward(  # type: ignore[override]
        self,
        input: Any,
        params: dict[str, torch.Tensor] | None = None,
        *,
        size: int | tuple[int, int] | None = None,
        step: int | None = None,
        global_step: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Resize an image batch, or the image and target entries of a dict/tuple/list batch.

        Called with ``params`` (as Kornia containers do), it runs Kornia's augmentation path, which
        ends in the same resize. Called plainly it skips Kornia's parameter bookkeeping, which would
        cost more than the resize itself on a GPU.
        """
        if params is not None or kwargs:
            return super().forward(input, params=params, **kwargs)
        if isinstance(input, torch.Tensor):  # the common case, without the batch-structure lookup
            return self.resize(input, size=size, step=step, global_step=global_step).images
        given = self.format.get(input)
        resized = self.resize(**given, size=size, step=step, global_step=global_step)
        return self.format.put(input, {field: getattr(resized, field) for field in given if field != "crops"})

    # ------------------------------------------------------------- Kornia augmentation contract
    # Kornia hands over float NCHW tensors and its own flags; the settings are this transform's.
    _compute_matrix_lazily = True  # apply_transform never reads the matrix: built only for boxes

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> Params:
        height, width = self.target_size(batch_shape)
        return {"output_size": torch.tensor([[height, width]] * batch_shape[0], dtype=torch.long)}

    @staticmethod
    def _param_size(params: Params, input: Tensor) -> tuple[int, int]:
        sizes = params["output_size"]
        return (int(sizes[0, 0]), int(sizes[0, 1])) if sizes.shape[0] else (input.shape[-2], input.shape[-1])

    def compute_transformation(self, input: Tensor, params: Params, flags: Flags) -> Tensor:
        height, width = self._param_size(params, input)
        dtype = input.dtype if input.is_floating_point() else torch.float32
        scale = torch.tensor([width / input.shape[-1], height / input.shape[-2], 1.0], device=input.device, dtype=dtype)
        return torch.diag(scale).expand(input.shape[0], 3, 3)

    def apply_transform(self, input: Tensor, params: Params, flags: Flags, transform: Tensor | None = None) -> Tensor:
        return self._resize_images(input, self._param_size(params, input), None, None)

    def apply_transform_mask(
        self, input: Tensor, params: Params, flags: Flags, transform: Tensor | None = None
    ) -> Tensor:
        return functional.resize_masks(input, self._param_size(params, input))

    def inverse_transform(
        self, input: Tensor, flags: Flags, transform: Tensor | None = None, size: Any = None
    ) -> Tensor:
        size = check_size("size", size)  # the forward input's size
        if flags.get("masks"):
            return functional.resize_masks(input, size)
        return functional._resize(input, size, **self.flags)

    def inverse_masks(
        self, input: Tensor, params: Params, flags: Flags, transform: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        # Kornia tells masks apart only by a "resample" flag, which this transform does not have.
        return super().inverse_masks(input, params, {**flags, "masks": True}, transform, **kwargs)  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        source = f"size={self.size}" if self.policy is None else f"policy={self.policy!r}"
        settings = ", ".join(f"{key}={value!r}" for key, value in self.flags.items())
        crop = "" if self.crop is None else f", crop={self.crop!r}"
        return f"{source}, {settings}, format={self.format!r}, validate={self.validate!r}{crop}"
