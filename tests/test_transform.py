"""BatchResize: the batch transform, its range check one call later, and its place in Kornia containers."""

import copy
import pickle
from collections import namedtuple

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F

from fastresize import BatchResize, MultiScalePolicy, functional
from fastresize._batch import BatchFormat
from tests.conftest import BAD_INPUT

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _images(dtype, device, shape=(2, 3, 24, 40), seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device)
    return torch.rand(shape, generator=g).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bicubic_equals_interpolate(device, dtype):
    x = _images(dtype, device)
    for size in [(16, 32), (48, 64), (32, 32)]:
        expected = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        assert torch.equal(BatchResize(size, backend="torch")(x), expected)
        assert torch.allclose(BatchResize(size)(x), expected, atol=1e-5, rtol=0)  # Triton on CUDA


@pytest.mark.parametrize("dtype", [*FLOAT_DTYPES, torch.uint8])
def test_every_dtype_gives_its_own_dtype_back(device, dtype):
    x = _images(dtype, device)
    out = BatchResize((32, 48))(x)
    assert out.shape == (2, 3, 32, 48) and out.dtype == dtype and out.device == x.device
    reference = F.interpolate(x.float(), size=(32, 48), mode="bicubic", align_corners=False)
    if dtype == torch.uint8:
        reference = reference.round().clamp(0, 255)
    atol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.uint8: 1.0}.get(dtype, 1e-5)
    assert torch.allclose(out.float(), reference, atol=atol)


def test_antialias_is_pytorch_native(device):
    x = _images(torch.float32, device, shape=(2, 3, 64, 64))
    expected = F.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    assert torch.equal(BatchResize(16, antialias=True)(x), expected)
    assert not torch.equal(BatchResize(16)(x), expected)


def test_unchanged_size_does_no_work(device):
    x = _images(torch.float32, device, shape=(2, 3, 32, 48))
    out = BatchResize((32, 48))(x)
    assert out.data_ptr() == x.data_ptr() and torch.equal(out, x)


@pytest.mark.parametrize("size", [(32, 48), (64, 64)])
def test_output_is_detached(device, size):
    x = _images(torch.float32, device, shape=(2, 3, 32, 48)).requires_grad_()
    out = BatchResize(size)(x)
    assert not out.requires_grad and out.grad_fn is None


def test_float_output_is_clamped_to_the_declared_range(device):
    # A hard edge makes bicubic overshoot on both sides.
    x = torch.zeros(1, 1, 8, 8, device=device)
    x[..., 4:] = 1.0
    raw = BatchResize(32)(x)
    assert raw.min() < -0.05 and raw.max() > 1.05
    clamped = BatchResize(32, value_range=(0, 1))(x)
    assert clamped.min() == 0.0 and clamped.max() == 1.0
    assert torch.equal(clamped, raw.clamp(0, 1))


def test_uint8_output_is_rounded_and_clamped(device):
    x = torch.zeros(1, 1, 8, 8, dtype=torch.uint8, device=device)
    x[..., 4:] = 255
    reference = F.interpolate(x.float(), size=(32, 32), mode="bicubic", align_corners=False)
    reference = reference.round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(BatchResize(32, backend="torch")(x), reference)
    out = BatchResize(32)(x)  # Triton on CUDA rounds halves up: within one level
    assert out.dtype == torch.uint8 and (out.int() - reference.int()).abs().max() <= 1


def test_uint8_to_float_resize_matches_converting_first(device):
    x = _images(torch.uint8, device)
    out = BatchResize((48, 80), value_range=(-1, 1), dtype=torch.float32)(x)
    converted = x.float() / 255 * 2 - 1
    expected = F.interpolate(converted, size=(48, 80), mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.allclose(out, expected, atol=1e-5, rtol=0)


def test_policy_picks_the_size_of_the_given_step():
    policy = MultiScalePolicy(32, 96, max_first_steps=2, seed=1)
    resize = BatchResize(policy=policy)
    x = torch.rand(2, 3, 50, 50)
    for step in range(25):
        assert resize(x, step=step).shape[-2:] == policy.size_for(step, step)
        assert resize(x, step=step, global_step=7).shape[-2:] == policy.size_for(step, 7)
    assert resize(x, step=100, global_step=0).shape[-2:] == (96, 96)  # max-size-first in a resumed process


def test_an_explicit_size_wins():
    x = torch.rand(2, 3, 50, 50)
    assert BatchResize(policy=MultiScalePolicy(32, 96))(x, size=(48, 80)).shape[-2:] == (48, 80)
    assert BatchResize(64)(x, size=40).shape[-2:] == (40, 40)
    assert BatchResize(64)(x).shape[-2:] == (64, 64)


def test_a_policy_needs_the_step():
    with pytest.raises(
        ValueError, match=r"BatchResize\(policy=...\) needs the step of each call: transform\(batch, step"
    ):
        BatchResize(policy=MultiScalePolicy(32, 96))(torch.rand(1, 3, 8, 8))


def test_aspect_policy_keeps_the_ratio():
    resize = BatchResize(policy=MultiScalePolicy(64, 128, side="short"))
    assert resize(torch.rand(1, 3, 60, 90), step=0).shape[-2:] == (128, 192)


class _Policy:
    """A size policy of its own: (24, 40) until step 3, then (8, 8)."""

    max_size = 40

    def size_for(self, step, global_step, shape=None):
        return (24, 40) if step < 3 else (8, 8)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_any_object_with_a_policys_methods_is_a_policy():
    resize = BatchResize(policy=_Policy(), value_range=(0, 1))
    images = torch.rand(1, 3, 8, 8)
    assert resize(images, step=0).shape[-2:] == (24, 40) and resize(images, step=3).shape[-2:] == (8, 8)
    assert resize.checked_steps == 5  # a policy without max_first_steps: as a fixed size


def test_targets_follow_the_image(device):
    # A white rectangle, its box and its corner keypoint: after a 2x / 1.5x resize the rectangle's
    # mask must fill exactly the scaled box.
    images = torch.zeros(1, 1, 20, 40, device=device)
    masks = torch.zeros(1, 20, 40, dtype=torch.uint8, device=device)
    masks[:, 4:10, 8:20] = 1
    images[..., 4:10, 8:20] = 1.0
    boxes = torch.tensor([[[8.0, 4.0, 20.0, 10.0]]], device=device)  # xyxy, pixel edges
    keypoints = torch.tensor([[[8.0, 4.0]]], device=device)
    out = BatchResize((40, 60)).resize(images, masks=masks, boxes=boxes, keypoints=keypoints)
    assert out.boxes is not None and out.keypoints is not None and out.masks is not None
    assert torch.equal(out.boxes, torch.tensor([[[12.0, 8.0, 30.0, 20.0]]], device=device))
    assert torch.equal(out.keypoints, torch.tensor([[[12.0, 8.0]]], device=device))
    x1, y1, x2, y2 = (int(v) for v in out.boxes[0, 0])
    assert out.masks[0, y1:y2, x1:x2].all() and out.masks.sum() == (x2 - x1) * (y2 - y1)
    assert out.images[0, 0, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() > 0.9


@pytest.mark.parametrize("keys", [["input"], ["input", "mask"], ["input", "mask", "bbox_xyxy", "keypoints"]], ids=len)
def test_composes_with_kornia_augmentation_sequential(keys):
    resize = BatchResize((48, 64))
    images = torch.rand(2, 3, 24, 32)
    masks = (torch.rand(2, 1, 24, 32) > 0.5).float()
    boxes = torch.tensor([[[2.0, 4.0, 10.0, 12.0]], [[0.0, 0.0, 32.0, 24.0]]])
    keypoints = torch.tensor([[[3.0, 5.0]], [[30.0, 1.0]]])
    inputs = {"input": images, "mask": masks, "bbox_xyxy": boxes, "keypoints": keypoints}
    outputs = K.AugmentationSequential(resize, data_keys=keys)(*[inputs[k] for k in keys])
    outputs = outputs if isinstance(outputs, list) else [outputs]
    direct = resize.resize(images, masks=masks, boxes=boxes, keypoints=keypoints)
    expected = {"input": direct.images, "mask": direct.masks, "bbox_xyxy": direct.boxes, "keypoints": direct.keypoints}
    for key, out in zip(keys, outputs, strict=True):
        assert torch.allclose(out, expected[key], atol=1e-5), key


def test_composes_after_a_kornia_flip():
    pipeline = K.AugmentationSequential(K.RandomHorizontalFlip(p=1.0), BatchResize(32), data_keys=["input", "mask"])
    images, masks = torch.rand(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    out_images, out_masks = pipeline(images, masks)
    expected = BatchResize(32).resize(images.flip(-1), masks=masks.flip(-1))
    assert torch.allclose(out_images, expected.images, atol=1e-6) and torch.equal(out_masks, expected.masks)


def test_a_policy_in_a_kornia_container_takes_its_step_from_at():
    policy = MultiScalePolicy(32, 96, max_first_steps=0, seed=3)
    resize = BatchResize(policy=policy, value_range=(0, 1))
    images = torch.rand(2, 3, 16, 16)
    for step in range(4):
        out = K.AugmentationSequential(resize.at(step), data_keys=["input"])(images)
        assert out.shape[-2:] == policy.size_for(step, step)
        assert torch.equal(out, resize(images, step=step))
    with pytest.raises(ValueError, match=r"needs the step of each call"):
        K.AugmentationSequential(resize, data_keys=["input"])(images)


@pytest.mark.parametrize("bound", [False, True], ids=["fixed-size", "policy-at-step"])
def test_kornia_inverse_maps_outputs_back_to_the_input(bound):
    policy = MultiScalePolicy(32, 96, max_first_steps=0, seed=3)
    resize = BatchResize(policy=policy, value_range=(0, 1)).at(7) if bound else BatchResize((48, 40))
    size = policy.size_for(7, 7) if bound else (48, 40)
    images, masks = torch.rand(2, 3, 24, 32), (torch.rand(2, 1, 24, 32) > 0.5).float()
    boxes = torch.tensor([[[2.0, 4.0, 10.0, 12.0]], [[0.0, 0.0, 32.0, 24.0]]])
    keypoints = torch.tensor([[[3.0, 5.0]], [[30.5, 1.25]]])
    keys = ["input", "mask", "bbox_xyxy", "keypoints"]
    pipeline = K.AugmentationSequential(resize, K.RandomHorizontalFlip(p=1.0), data_keys=keys)
    out = pipeline(images, masks, boxes, keypoints)
    assert out[0].shape[-2:] == out[1].shape[-2:] == size
    back = pipeline.inverse(*out)
    assert back[0].shape == images.shape and back[1].shape == masks.shape
    torch.testing.assert_close(back[2], boxes, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(back[3], keypoints, atol=1e-5, rtol=1e-6)
    # Images go back with the same interpolation and settings, masks with nearest: labels stay labels.
    assert torch.equal(back[0], functional.resize(out[0].flip(-1), (24, 32), **resize.flags))
    assert torch.equal(back[1], functional.resize_masks(out[1].flip(-1), (24, 32)))
    assert set(back[1].unique().tolist()) <= {0.0, 1.0}


def test_nhwc_dict_batch_gives_nchw_images(device):
    images = torch.rand(2, 24, 40, 3, device=device) * 2 - 1  # NHWC in [-1, 1], as latent-diffusion batches
    batch = {"image": images, "caption": ["a", "b"], "mask": torch.ones(2, 24, 40, device=device)}
    resize = BatchResize((48, 64), value_range=(-1, 1), format=BatchFormat(layout="NHWC", mask_key="mask"))
    out = resize(batch)
    assert out["image"].shape == (2, 3, 48, 64) and out["image"].is_contiguous() and out["caption"] is batch["caption"]
    assert out["mask"].shape == (2, 48, 64) and set(batch) == set(out)
    expected = F.interpolate(images.permute(0, 3, 1, 2), size=(48, 64), mode="bicubic", align_corners=False)
    assert torch.allclose(out["image"], expected.clamp(-1, 1), atol=1e-5, rtol=0)
    assert batch["image"] is images  # the caller's dict is untouched


def test_dict_batch_with_another_key():
    out = BatchResize(32, format=BatchFormat(image_key="jpg"))({"jpg": torch.rand(1, 3, 16, 16), "txt": "x"})
    assert out["jpg"].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"the batch has no entry 'image' for the images \(it has \['jpg'\]\); set"):
        BatchResize(32)({"jpg": torch.rand(1, 3, 16, 16)})


def test_tuple_list_and_namedtuple_batches():
    images, labels, masks = torch.rand(2, 3, 16, 16), torch.tensor([3, 4]), torch.zeros(2, 16, 16)
    out = BatchResize(32, format=BatchFormat(mask_key=2))((images, labels, masks))
    assert isinstance(out, tuple) and out[1] is labels
    assert out[0].shape == (2, 3, 32, 32) and out[2].shape == (2, 32, 32)
    assert isinstance(BatchResize(32)([images, labels]), list)
    Sample = namedtuple("Sample", ["image", "label"])
    named = BatchResize(32)(Sample(images, labels))
    assert isinstance(named, Sample) and named.image.shape == (2, 3, 32, 32) and named.label is labels
    with pytest.raises(TypeError, match=r"image_key='image' does not fit a tuple batch: a tuple/list batch needs int"):
        BatchResize(32, format=BatchFormat(image_key="image"))((images,))


def test_empty_batch():
    assert BatchResize(32)(torch.rand(0, 3, 16, 16)).shape == (0, 3, 32, 32)


# ----------------------------------------------------------------------------- the range check
RANGE_ERROR = (
    r"value_range=\(0.0, 1.0\) does not match the images: observed min .*; they look like 0..255 data: "
    r"divide the images by 255, or pass value_range=\(0, 255\)"
)


def test_float_images_outside_the_range_raise_at_once_on_the_first_steps():
    resize = BatchResize(policy=MultiScalePolicy(32, 64, max_first_steps=3), value_range=(0, 1))
    images = torch.rand(2, 3, 16, 16) * 255
    for global_step in range(3):
        with pytest.raises(ValueError, match=RANGE_ERROR + r"$"):
            resize(images, step=global_step)
    assert resize(images, step=3).max() == 1.0  # past the first steps: checked, but read at the next call
    with pytest.raises(ValueError, match=RANGE_ERROR + r"$"):
        resize(images, size=32)  # no step given: always checked at once
    with pytest.raises(ValueError, match=RANGE_ERROR):
        resize(images, size=32, global_step=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_later_batch_is_checked_one_call_later(device, dtype):
    """[0, 1] data for 10 steps, then 0..255 data at step 10: the call of step 11 raises, naming step 10."""
    resize = BatchResize(policy=MultiScalePolicy(32, 64, max_first_steps=5), value_range=(0, 1), dtype=torch.float32)
    good = torch.rand(4, 3, 16, 16, device=device, dtype=dtype)
    for step in range(10):
        assert resize(good, step=step).max() <= 1.0
    bad = (good.float() * 255).to(dtype)
    resize(bad, step=10)  # queued on the device, not read yet: no sync
    with pytest.raises(ValueError, match=RANGE_ERROR + r" \(found in the batch of step 10, checked one call later\)"):
        resize(good, step=11)
    resize(good, step=12)  # the bad batch was reported once


def test_a_large_batch_is_checked_on_a_sample(device):
    resize = BatchResize(32, value_range=(-1, 1))
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(2, 3, 512, 512, generator=g) * 2 - 1).to(device)  # over 2**20 values: a sample is read
    resize(batch, global_step=5)
    resize(batch.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) + 1, global_step=6)  # channels last, [0, 2]
    with pytest.raises(
        ValueError,
        match=r"observed min .* and max 2; .* \(found in the batch of global_step 6, checked one call later\)",
    ):
        resize(batch, global_step=7)
    lone = batch.clone()
    lone.view(2, -1)[0, 300] = 1000.0  # one pixel between two sampled runs: the documented limit
    resize(lone, global_step=8), resize(batch, global_step=9)
    with pytest.raises(ValueError, match=r"and max 1000; pass the range"):
        BatchResize(32, value_range=(-1, 1), validate=True)(lone, global_step=8)


def test_fixed_size_checks_five_steps_at_once_and_validate_overrides():
    images = torch.rand(2, 3, 16, 16) * 255
    with pytest.raises(ValueError, match=RANGE_ERROR + r"$"):
        BatchResize(32, value_range=(0, 1))(images, global_step=4)
    later = BatchResize(32, value_range=(0, 1))
    assert later(images, global_step=5).shape == (2, 3, 32, 32)  # checked, read at the next call
    with pytest.raises(ValueError, match=r"found in the batch of global_step 5"):
        later(images[:, :, :8], global_step=6)
    with pytest.raises(ValueError, match=RANGE_ERROR + r"$"):
        BatchResize(32, value_range=(0, 1), validate=True)(images, global_step=10_000)
    unchecked = BatchResize(32, value_range=(0, 1), validate=False)
    assert unchecked(images, global_step=10).max() == 1.0 and unchecked(images, global_step=11).max() == 1.0


def test_the_pending_check_is_shared_by_at_copies_and_not_pickled():
    resize = BatchResize(policy=MultiScalePolicy(32, 64, max_first_steps=0), value_range=(0, 1))
    bad, good = torch.rand(1, 3, 16, 16) * 255, torch.rand(1, 3, 16, 16)
    K.AugmentationSequential(resize.at(7), data_keys=["input"])(bad)  # a container per step, as at() is meant for
    for fresh in (pickle.loads(pickle.dumps(resize)), copy.deepcopy(resize)):  # a worker or a checkpoint: no check
        assert fresh._pending.check is None and fresh(good, step=9).shape[0] == 1
    with pytest.raises(ValueError, match=r"found in the batch of step 7"):
        K.AugmentationSequential(resize.at(8), data_keys=["input"])(good)
    assert resize._pending.check is not None  # step 8's own check, shared with the original


def test_compiled_transform_runs_without_graph_breaks():
    resize = BatchResize(32, value_range=(0, 1))
    x = torch.rand(2, 3, 16, 16)
    resize(x, step=9)  # eager: leaves a check to read at the next call, which a graph cannot read
    compiled = torch.compile(resize, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x, step=10), resize(x, step=10))


@pytest.mark.parametrize("size", [16, 32], ids=["unchanged", "resized"])
def test_resized_and_unchanged_batches_are_both_clamped(size):
    x = torch.rand(2, 3, 16, 16) * 1.05  # a small overshoot passes the check and is clamped
    out = BatchResize(size, value_range=(0, 1))(x)
    assert out.max() == 1.0 and out.min() >= 0


def test_uint8_with_a_value_range_needs_dtype():
    with pytest.raises(ValueError, match=r"uint8 images stay uint8: .* pass dtype= as well"):
        BatchResize(32, value_range=(0, 1))(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_latents_and_single_channel_pass():
    assert BatchResize(32)(torch.rand(8, 4, 64, 64)).shape == (8, 4, 32, 32)
    assert BatchResize(32)(torch.rand(2, 1, 20, 20)).shape == (2, 1, 32, 32)


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, r"needs exactly one of size=... \(a fixed size\) or policy=..."),
        ({"size": 32, "policy": MultiScalePolicy(32, 64)}, ValueError, r"needs exactly one of size=..."),
        (
            {"policy": (32, 64)},
            TypeError,
            r"policy must be a size policy such as MultiScalePolicy, with size_for, max_size, state_dict, "
            r"load_state_dict; got a tuple without size_for, max_size, state_dict, load_state_dict",
        ),
        ({"size": 32, "format": "NHWC"}, TypeError, r"format must be a BatchFormat or None, got str"),
        ({"size": 32, "validate": 1}, TypeError, r"validate must be True, False or None \(automatic\), got 1"),
    ],
)
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        BatchResize(**kwargs)


@pytest.mark.parametrize(("images", "kwargs", "error", "match"), BAD_INPUT)
def test_bad_images(images, kwargs, error, match):
    with pytest.raises(error, match=match):
        BatchResize(**{"size": 16, **kwargs})(images)


def test_bad_targets_and_steps():
    resize = BatchResize(32)
    images = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"masks must have the images' height and width \(16, 16\)"):
        resize.resize(images, masks=torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"boxes must have a last dimension of 4, got shape \(2, 1, 2\)"):
        resize.resize(images, boxes=torch.zeros(2, 1, 2))
    with pytest.raises(ValueError, match=r"step must be an int >= 0, got -1"):
        BatchResize(policy=MultiScalePolicy(32, 64)).at(-1)


def test_a_random_crop_needs_the_calls_step():
    images = torch.randint(0, 256, (2, 3, 40, 30), dtype=torch.uint8)
    resize = BatchResize(16, crop="random")
    with pytest.raises(ValueError, match=r"crop='random' draws each call's boxes from the call's step: pass step="):
        resize(images)
    assert not torch.equal(resize(images, step=1), resize(images, step=2))  # another step, another box
    assert torch.equal(resize.at(3)(images), resize(images, step=3))


def test_the_crop_path_keeps_the_form_of_the_targets():
    fmt = BatchFormat(image_key="image", boxes_key="boxes", keypoints_key="kp")
    batch = {"image": torch.rand(2, 3, 16, 16), "boxes": torch.rand(2, 1, 4) * 8, "kp": torch.rand(2, 3, 2) * 8}
    whole = BatchResize(32, format=fmt)(batch)
    full = BatchResize(32, format=fmt, crop="full")(batch, step=0)
    assert isinstance(full["boxes"], torch.Tensor) and isinstance(full["kp"], torch.Tensor)
    torch.testing.assert_close(full["boxes"], whole["boxes"])  # the whole image, stretched: a plain resize
    torch.testing.assert_close(full["kp"], whole["kp"])


def test_a_ragged_float_batch_is_range_checked_one_call_later():
    from fastresize import RaggedImages

    resize = BatchResize(policy=MultiScalePolicy(16, 32), value_range=(0, 1), dtype=torch.float32, crop="center")
    good = RaggedImages.pack([torch.rand(3, 20, 30), torch.rand(3, 24, 18)])
    bad = RaggedImages.pack([torch.rand(3, 20, 30) * 255, torch.rand(3, 24, 18) * 255])
    assert resize.resize(good, step=10, global_step=10).images.shape == (2, 3, 32, 32)
    resize.resize(bad, step=11, global_step=11)  # queued, not read yet
    with pytest.raises(ValueError, match=r"they look like 0..255 data.*found in the batch of step 11"):
        resize.resize(good, step=12, global_step=12)
