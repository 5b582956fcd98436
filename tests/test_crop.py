import copy
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastresize.crop import CropPolicy, crop_boxes, crop_keypoints, crop_masks, nonempty_boxes
from fastresize.functional import resize_masks, scale_boxes
from tests.conftest import assert_round_trip

# --- the crop policy: arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("middle",), {}, ValueError, r"rule must be one of 'full', 'center', 'random', 'provided'; got 'middle'"),
        ((), {"scale": (0.5,)}, ValueError, r"scale must be a \(low, high\) pair, got \(0.5,\)"),
        ((), {"scale": 0.5}, ValueError, r"scale must be a \(low, high\) pair, got 0.5"),
        ((), {"scale": (0.9, 0.1)}, ValueError, r"scale must satisfy 0 < low <= high, got \(0.9, 0.1\)"),
        ((), {"scale": (0.0, 1.0)}, ValueError, r"scale must satisfy 0 < low <= high"),
        ((), {"scale": (0.1, 1.5)}, ValueError, r"scale\[1\] must be <= 1.0, got 1.5"),
        ((), {"scale": (0.1, None)}, TypeError, r"scale\[1\] must be a number, got None"),
        ((), {"ratio": (-1.0, 2.0)}, ValueError, r"ratio\[0\] must be >= 0.0, got -1.0"),
        ((), {"ratio": (2.0, 0.5)}, ValueError, r"ratio must satisfy 0 < low <= high, got \(2.0, 0.5\)"),
        ((), {"ratio": (0.5, math.inf)}, ValueError, r"ratio\[1\] must be finite"),
        ((), {"seed": 1.5}, TypeError, r"seed must be an int, got 1.5"),
    ],
)
def test_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        CropPolicy(*args, **kwargs)


@pytest.mark.parametrize(
    ("rule", "call", "error", "match"),
    [
        ("center", lambda p: p.box(-1, 0, (4, 4), (2, 2)), ValueError, r"step must be an int >= 0, got -1"),
        ("center", lambda p: p.box(0, -2, (4, 4), (2, 2)), ValueError, r"index must be an int >= 0, got -2"),
        ("center", lambda p: p.box(0, 0, (4, 0), (2, 2)), ValueError, r"size\[1\] must be an int >= 1, got 0"),
        ("center", lambda p: p.box(0, 0, (4.0, 4), (2, 2)), TypeError, r"size\[0\] must be an int, got 4.0"),
        ("center", lambda p: p.box(0, 0, (4, 4), 2), ValueError, r"out_size must be a \(height, width\) pair, got 2"),
        ("center", lambda p: p.boxes(0, (4, 4), (2, 2)), ValueError, r"sizes\[0\] must be a \(height, width\) pair"),
        ("center", lambda p: p.boxes(0, "44", (2, 2)), TypeError, r"sizes must be a sequence of \(height, width\)"),
        ("center", lambda p: p.boxes(0, [(4, 4), (5, -1)], (2, 2)), ValueError, r"sizes\[1\]\[1\] must be an int >= 1"),
        (
            "center",
            lambda p: p.boxes(0, [(4, 4)], (2, 2), provided=torch.tensor([[0, 0, 1, 1]])),
            ValueError,
            r"provided boxes were given, but rule='center' chooses its own; build CropPolicy\('provided'\)",
        ),
        (
            "provided",
            lambda p: p.boxes(0, [(4, 4)], (2, 2)),
            ValueError,
            r"rule='provided' takes each image's box from the dataset: declare where it is with BatchFormat\(crop_key",
        ),
        (
            "provided",
            lambda p: p.box(0, 0, (4, 4), (2, 2)),
            ValueError,
            r"rule='provided' takes each image's box from the dataset: declare where it is with BatchFormat\(crop_key",
        ),
        (
            "provided",
            lambda p: p.boxes(0, [(4, 4)], (2, 2), provided=[[0, 0, 1, 1]]),
            TypeError,
            r"provided must be a \(B, 4\) tensor of xyxy boxes, got list",
        ),
        (
            "provided",
            lambda p: p.boxes(0, [(4, 4), (4, 4)], (2, 2), provided=torch.zeros(1, 4)),
            ValueError,
            r"provided must be \(B, 4\) with one box per image, B = len\(sizes\) = 2; got shape \(1, 4\)",
        ),
        (
            "provided",
            lambda p: p.boxes(0, [(4, 6), (4, 6)], (2, 2), provided=torch.tensor([[0, 0, 6, 4], [1, 0, 7, 4]])),
            ValueError,
            r"provided\[1\] = \[1, 0, 7, 4\] is not a box inside the 4x6 image .* 0 <= x1 < x2 <= 6",
        ),
        (
            "provided",
            lambda p: p.boxes(0, [(4, 6)], (2, 2), provided=torch.tensor([[2.0, 1.0, 2.0, 3.0]])),
            ValueError,
            r"provided\[0\] = \[2, 1, 2, 3\] is not a box inside",
        ),
        (
            "provided",
            lambda p: p.boxes(0, [(4, 6)], (2, 2), provided=torch.tensor([[0.0, 0.0, math.nan, 3.0]])),
            ValueError,
            r"provided\[0\]\[2\] must be finite",
        ),
        ("provided", lambda p: p.box(0, 0, (4, 6), (2, 2), (0, 0, 1)), ValueError, r"provided must be one xyxy box"),
        (
            "provided",
            lambda p: p.boxes(-1, [(4, 6)], (2, 2), provided=torch.tensor([[0, 0, 6, 4]])),
            ValueError,
            r"step must be an int >= 0, got -1",
        ),
        (
            "provided",
            lambda p: p.boxes(0, [(4, 6)], (2, 0), provided=torch.tensor([[0, 0, 6, 4]])),
            ValueError,
            r"out_size\[1\] must be an int >= 1, got 0",
        ),
    ],
)
def test_bad_calls(rule, call, error, match):
    with pytest.raises(error, match=match):
        call(CropPolicy(rule))


# --- the rules ----------------------------------------------------------------------------------


def test_full_is_the_whole_image():
    policy = CropPolicy("full")
    boxes = policy.boxes(3, [(480, 640), (7, 5)], (256, 128))
    assert boxes.dtype == torch.int64
    assert boxes.tolist() == [[0, 0, 640, 480], [0, 0, 5, 7]]


@pytest.mark.parametrize(
    ("size", "out_size", "expected"),
    [
        ((480, 640), (256, 256), (80, 0, 560, 480)),  # wider than the output: full height
        ((640, 480), (256, 256), (0, 80, 480, 560)),  # taller: full width
        ((480, 640), (240, 320), (0, 0, 640, 480)),  # same aspect ratio: the whole image
        ((100, 100), (100, 200), (0, 25, 100, 75)),  # a wide output from a square image
        ((5, 10), (1, 1), (2, 0, 7, 5)),  # offset round(2.5) = 2: halves to even, as torchvision
        ((7, 10), (1, 1), (2, 0, 9, 7)),  # offset round(1.5) = 2
        ((9, 10), (1, 1), (0, 0, 9, 9)),  # offset round(0.5) = 0
        ((10, 9), (3, 4), (0, 2, 9, 9)),  # h = round(9 * 3 / 4) = round(6.75) = 7, top = round(1.5) = 2
        ((10, 9), (2, 5), (0, 3, 9, 7)),  # h = round(9 * 2 / 5) = round(3.6) = 4, top = round(3.0) = 3
        ((1000, 1), (1, 1000), (0, 500, 1, 501)),  # h = round(0.001) = 0 -> 1; top = round(499.5) = 500
    ],
)
def test_center_is_the_largest_centred_box_with_the_outputs_aspect_ratio(size, out_size, expected):
    assert CropPolicy("center").box(0, 0, size, out_size) == expected


def test_provided_boxes_are_checked_and_returned_as_given():
    policy = CropPolicy("provided")
    given_boxes = torch.tensor([[0.5, 1.0, 6.0, 4.0], [0.0, 0.0, 3.0, 2.0]], dtype=torch.float64)
    out = policy.boxes(9, [(4, 6), (2, 3)], (8, 8), provided=given_boxes)
    assert out.dtype == torch.float64 and torch.equal(out, given_boxes)
    assert policy.box(0, 0, (4, 6), (8, 8), provided=(0.5, 1, 6, 4)) == (0.5, 1, 6, 4)


def _random_boxes(policy, step, sizes):
    return [tuple(row) for row in policy.boxes(step, sizes, (224, 224)).tolist()]


def test_random_boxes_depend_only_on_seed_step_and_index():
    policy = CropPolicy("random", seed=5)
    sizes = [(480, 640), (300, 500), (640, 427), (375, 500)]
    boxes = _random_boxes(policy, 11, sizes)
    assert boxes == _random_boxes(CropPolicy("random", seed=5), 11, sizes)  # another instance, another process
    assert boxes == [policy.box(11, i, size, (224, 224)) for i, size in enumerate(sizes)]  # one image at a time
    # The rest of the batch does not matter: image 2 keeps its box among other images or alone.
    other = _random_boxes(policy, 11, [(100, 100), (333, 222), (640, 427), (50, 900), (64, 64)])
    assert other[2] == boxes[2]
    assert policy.box(11, 2, (640, 427), (64, 96)) == boxes[2]  # nor the output size
    # Seed, step and index do.
    assert _random_boxes(CropPolicy("random", seed=6), 11, sizes) != boxes
    assert _random_boxes(policy, 12, sizes) != boxes
    same = [(480, 640)] * 8
    assert len(set(_random_boxes(policy, 11, same))) == 8


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 700),
    width=st.integers(1, 700),
    step=st.integers(0, 2**40),
    index=st.integers(0, 512),
    low=st.floats(0.01, 1.0),
    log_ratio=st.floats(-3, 3),
)
def test_random_boxes_lie_inside_the_image(height, width, step, index, low, log_ratio):
    ratio = (math.exp(log_ratio), math.exp(log_ratio + 0.5))
    x1, y1, x2, y2 = CropPolicy("random", scale=(low, 1.0), ratio=ratio).box(step, index, (height, width), (8, 8))
    assert all(isinstance(v, int) for v in (x1, y1, x2, y2))
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


def _torchvision_get_params(height, width, scale, ratio, generator):
    """torchvision's RandomResizedCrop.get_params, written from its documented rule, on a torch Generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            j = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return j, i, j + w, i + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    i, j = (height - h) // 2, (width - w) // 2
    return j, i, j + w, i + h


def _ks(a, b):
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = torch.tensor(sorted(a), dtype=torch.float64), torch.tensor(sorted(b), dtype=torch.float64)
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b, grid, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


@pytest.mark.parametrize(
    ("size", "scale", "ratio"),
    [
        ((480, 640), (0.08, 1.0), (3 / 4, 4 / 3)),
        ((100, 900), (0.08, 0.3), (3 / 4, 4 / 3)),  # about 19% of the draws take the centre fallback
        ((64, 64), (0.5, 0.9), (0.5, 2)),
    ],
)
def test_random_rule_has_torchvisions_distribution(size, scale, ratio):
    n = 3000
    height, width = size
    generator = torch.Generator().manual_seed(0)
    theirs = [_torchvision_get_params(height, width, scale, ratio, generator) for _ in range(n)]
    policy = CropPolicy("random", scale=scale, ratio=ratio, seed=0)
    ours = [policy.box(step, step % 7, size, (1, 1)) for step in range(n)]

    def features(boxes):
        area = [(x2 - x1) * (y2 - y1) / (height * width) for x1, y1, x2, y2 in boxes]
        aspect = [math.log((x2 - x1) / (y2 - y1)) for x1, y1, x2, y2 in boxes]
        centre_x = [(x1 + x2) / 2 / width for x1, y1, x2, y2 in boxes]
        centre_y = [(y1 + y2) / 2 / height for x1, y1, x2, y2 in boxes]
        return area, aspect, centre_x, centre_y

    # The KS critical value for n = m = 3000 at p = 0.001 is 1.95 * sqrt(2 / 3000) = 0.050.
    for mine, reference in zip(features(ours), features(theirs), strict=True):
        assert _ks(mine, reference) < 0.05


@pytest.mark.parametrize(
    ("size", "kwargs", "expected", "as_torchvision"),
    [
        # No box of >= 8% of the area fits 10 pixels high: the fallback clamps w / h to 4/3.
        ((10, 1000), {}, (493, 0, 506, 10), True),
        ((1000, 10), {}, (0, 493, 10, 506), True),  # tall: w / h clamped to 3/4, h = round(10 / 0.75) = 13
        ((100, 100), {"scale": (1.0, 1.0)}, (0, 0, 100, 100), True),  # the aspect ratio is inside: the whole image
        # torchvision's h = round(1 / 50) = 0 gives an empty box; here a side is never below 1.
        ((100, 1), {"ratio": (50.0, 100.0)}, (0, 49, 1, 50), False),
    ],
)
def test_random_falls_back_to_the_centre_after_ten_tries(size, kwargs, expected, as_torchvision):
    policy = CropPolicy("random", seed=3, **kwargs)
    assert {policy.box(step, index, size, (32, 32)) for step in range(50) for index in range(3)} == {expected}
    scale, ratio = kwargs.get("scale", (0.08, 1.0)), kwargs.get("ratio", (3 / 4, 4 / 3))
    reference = _torchvision_get_params(*size, scale, ratio, torch.Generator().manual_seed(0))
    assert (reference == expected) == as_torchvision


# --- state ----------------------------------------------------------------------------------------


def test_state_round_trip():
    def run(policy, n):
        out = []
        for _ in range(n):
            out.append(policy.box(len(out), 0, (300, 400), (64, 64)))
        return out

    assert_round_trip(lambda: CropPolicy("random", scale=(0.2, 0.9), seed=4), run, 3, 5)
    state = CropPolicy("random", scale=(0.2, 0.9), seed=4).state_dict()
    assert state == {"rule": "random", "scale": [0.2, 0.9], "ratio": [0.75, 4 / 3], "seed": 4}
    CropPolicy("random", scale=(0.2, 0.9), seed=4).load_state_dict(json.loads(json.dumps(state)))  # lists from JSON
    CropPolicy("random", scale=(0.2, 0.9), seed=4).load_state_dict({**state, "scale": (0.2, 0.9)})  # or tuples


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"seed": 5}, r"saved with seed=5 but this crop policy has seed=4"),
        ({"rule": "center"}, r"saved with rule='center' but this crop policy has rule='random'"),
        ({"scale": [0.1, 1.0]}, r"saved with scale=\[0.1, 1.0\] but this crop policy has scale=\[0.2, 0.9\]"),
        ({"ratio": [0.5, 2.0]}, r"saved with ratio=\[0.5, 2.0\] but this crop policy has ratio=\[0.75, 1.33"),
        ({"extra": 1}, r"CropPolicy.load_state_dict: missing keys \[\], unexpected keys \['extra'\]"),
    ],
)
def test_load_under_other_settings_raises_and_loads_nothing(change, match):
    policy = CropPolicy("random", scale=(0.2, 0.9), seed=4)
    before = copy.deepcopy(policy.__dict__)
    with pytest.raises(ValueError, match=match):
        policy.load_state_dict({**policy.state_dict(), **change})
    assert policy.__dict__ == before


def test_load_state_dict_needs_a_dict():
    with pytest.raises(TypeError, match=r"CropPolicy.load_state_dict expects a dict, got list"):
        CropPolicy().load_state_dict([])


def test_repr():
    expected = "CropPolicy(rule='full', scale=(0.08, 1.0), ratio=(0.75, 1.3333333333333333), seed=2)"
    assert repr(CropPolicy("full", seed=2)) == expected


# --- targets --------------------------------------------------------------------------------------

FLOATS = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", [*FLOATS, torch.int64])
def test_crop_boxes_shift_scale_and_clip(device, dtype):
    boxes = torch.tensor([[20, 10, 60, 30], [0, 0, 30, 20], [100, 0, 120, 10], [-30, -20, 200, 100]], dtype=dtype)
    crop = (10, 0, 90, 40)  # 80 x 40 -> out (20, 40): x * 0.5, y * 0.5
    out = crop_boxes(boxes.to(device), crop, (20, 40))
    assert out.dtype == (dtype if dtype.is_floating_point else torch.float32) and out.device.type == device.type
    expected = [
        [5.0, 5.0, 25.0, 15.0],  # inside
        [0.0, 0.0, 10.0, 10.0],  # cut at the crop's left edge
        [40.0, 0.0, 40.0, 5.0],  # entirely right of the crop: kept, zero width, on the right edge
        [0.0, 0.0, 40.0, 20.0],  # covers the crop: the whole output
    ]
    assert out.tolist() == expected
    assert nonempty_boxes(out).tolist() == [True, True, False, True]


def test_crop_boxes_float_crop_and_batch_list(device):
    boxes = [torch.tensor([[1.5, 1.0, 3.5, 2.0]], device=device), torch.zeros(0, 4, device=device)]
    crops = torch.tensor([[0.5, 0.0, 4.5, 4.0], [0, 0, 2, 2]])
    out = crop_boxes(boxes, crops, 8)  # 4 x 4 -> 8 x 8: x2
    assert out[0].tolist() == [[2.0, 2.0, 6.0, 4.0]]
    assert out[1].shape == (0, 4)
    assert [k.tolist() for k in nonempty_boxes(out)] == [[True], []]


@pytest.mark.parametrize("dtype", FLOATS)
def test_crop_boxes_of_the_full_image_equal_scale_boxes(device, dtype):
    generator = torch.Generator().manual_seed(0)
    height, width = 37, 53
    xy = torch.rand(20, 2, 2, generator=generator) * torch.tensor([width, height])
    boxes = torch.cat([xy.min(1).values, xy.max(1).values], dim=1).to(device, dtype)
    for out_size in [(64, 64), (17, 90), (37, 53)]:
        mine = crop_boxes(boxes, CropPolicy("full").box(0, 0, (height, width), out_size), out_size)
        torch.testing.assert_close(mine, scale_boxes(boxes, (height, width), out_size))
        keypoints = boxes.view(-1, 2)
        torch.testing.assert_close(
            crop_keypoints(keypoints, (0, 0, width, height), out_size),
            scale_boxes(boxes, (height, width), out_size).view(-1, 2),
        )


def test_crop_keypoints_are_not_clipped(device):
    keypoints = torch.tensor([[30, 20], [0, 0], [90, 40], [100, 50]], device=device)
    out = crop_keypoints(keypoints, (10, 0, 90, 40), (20, 40))
    assert out.dtype == torch.float32
    assert out.tolist() == [[10.0, 10.0], [-5.0, 0.0], [40.0, 20.0], [45.0, 25.0]]
    batch = crop_keypoints([keypoints, keypoints[:1]], torch.tensor([[10, 0, 90, 40], [30, 20, 31, 21]]), (20, 40))
    assert batch[0].tolist() == out.tolist() and batch[1].tolist() == [[0.0, 0.0]]


MASK_DTYPES = [torch.bool, torch.uint8, torch.int64, torch.float32]


@pytest.mark.parametrize("dtype", MASK_DTYPES)
def test_crop_masks_with_integer_boxes_equal_resize_masks_of_the_slice(device, dtype):
    generator = torch.Generator().manual_seed(1)
    for trial in range(12):
        h, w = (int(v) for v in torch.randint(1, 40, (2,), generator=generator))
        channels = trial % 3  # 0: (H, W), else (C, H, W)
        shape = (h, w) if channels == 0 else (channels, h, w)
        masks = torch.randint(0, 5, shape, generator=generator).to(dtype).to(device)
        box = CropPolicy("random", scale=(0.05, 1.0), seed=trial).box(trial, 0, (h, w), (8, 8))
        out_size = tuple(int(v) for v in torch.randint(1, 50, (2,), generator=generator))
        out = crop_masks(masks, box, out_size)
        x1, y1, x2, y2 = box
        expected = resize_masks(masks[..., y1:y2, x1:x2][None], out_size)[0]
        assert out.dtype == dtype and out.shape == (*shape[:-2], *out_size)
        assert torch.equal(out, expected)


def test_crop_masks_follow_the_boxes(device):
    mask = torch.zeros(16, 20, dtype=torch.uint8, device=device)
    mask[4:12, 6:14] = 1  # the box (6, 4, 14, 12)
    crop, size = (2, 0, 18, 16), (32, 32)
    out = crop_masks(mask, crop, size)
    rows, cols = out.nonzero().unbind(1)
    x1, y1, x2, y2 = crop_boxes(torch.tensor([[6.0, 4.0, 14.0, 12.0]]), crop, size)[0].tolist()
    assert (cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1) == (x1, y1, x2, y2)


def test_crop_masks_with_a_fractional_box(device):
    mask = torch.arange(8, device=device).view(1, 8).expand(2, 8)
    # x in [1.5, 5.5] over 8 outputs: source floor(1.5 + (o + 0.5) / 2) for o = 0..7.
    out = crop_masks(mask, (1.5, 0.0, 5.5, 2.0), (1, 8))
    assert out.tolist() == [[1, 2, 2, 3, 3, 4, 4, 5]]
    assert crop_masks(mask, (1.5, 0.0, 5.5, 2.0), (1, 1)).tolist() == [[3]]


def test_crop_masks_batch_list(device):
    masks = [torch.arange(16, device=device).view(4, 4), torch.ones(2, 3, 5, dtype=torch.bool, device=device)]
    out = crop_masks(masks, torch.tensor([[2, 0, 4, 2], [0, 0, 5, 3]]), (2, 2))
    assert out[0].tolist() == [[2, 3], [6, 7]]
    assert out[1].shape == (2, 2, 2) and out[1].dtype == torch.bool


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: crop_boxes(torch.zeros(3, 5), (0, 0, 1, 1), 4), ValueError, r"boxes must have a last dimension of 4"),
        (
            lambda: crop_boxes([[0, 0, 1, 1]], torch.tensor([[0, 0, 1, 1]]), 4),
            TypeError,
            r"boxes\[0\] must be a tensor or a list of tensors \(one per image\), got list",
        ),
        (lambda: crop_boxes("boxes", (0, 0, 1, 1), 4), TypeError, r"boxes must be a tensor or a list of tensors"),
        (
            lambda: crop_boxes(torch.zeros(1, 4), (0, 0, 0, 1), 4),
            ValueError,
            r"crop = \[0, 0, 0, 1\] must have x2 > x1",
        ),
        (lambda: crop_boxes(torch.zeros(1, 4), (0, 0, 1), 4), ValueError, r"crop must be one xyxy box of four numbers"),
        (lambda: crop_boxes(torch.zeros(1, 4), (0, 0, 2, 2), 0), ValueError, r"size\[0\] must be an int >= 1, got 0"),
        (
            lambda: crop_boxes([torch.zeros(1, 4)] * 2, torch.tensor([[0, 0, 1, 1]]), 4),
            ValueError,
            r"a list of 2 boxes needs one crop box per image, \(B, 4\) with B = 2",
        ),
        (lambda: crop_keypoints(torch.zeros(3, 4), (0, 0, 1, 1), 4), ValueError, r"keypoints must have a last dim"),
        (
            lambda: nonempty_boxes(torch.zeros(3)),
            ValueError,
            r"boxes must have a last dimension of 4, got shape \(3,\)",
        ),
        (lambda: nonempty_boxes(3), TypeError, r"boxes must be a tensor or a list of tensors, got int"),
        (
            lambda: crop_masks(torch.zeros(1, 1, 4, 4), (0, 0, 1, 1), 2),
            ValueError,
            r"masks must be one image's \(H, W\)",
        ),
        (lambda: crop_masks(None, (0, 0, 1, 1), 2), TypeError, r"masks must be a tensor or a list of tensors"),
        (
            lambda: crop_masks(torch.zeros(4, 6), (0, 0, 7, 4), 2),
            ValueError,
            r"crop = \[0, 0, 7, 4\] is not a box inside the 4x6 image \(H x W\)",
        ),
        (
            lambda: crop_masks([torch.zeros(4, 6)], torch.zeros(2, 4), 2),
            ValueError,
            r"a list of 1 masks needs one crop box per image",
        ),
    ],
)
def test_bad_targets(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_distributed_ranks_draw_their_random_crops_apart():
    sizes = [(375, 500)] * 4
    rank0, rank1 = CropPolicy("random", rank=0), CropPolicy("random", rank=1)
    assert not torch.equal(rank0.boxes(100, sizes, (224, 224)), rank1.boxes(100, sizes, (224, 224)))
    assert torch.equal(rank1.boxes(100, sizes, (224, 224)), CropPolicy("random", rank=1).boxes(100, sizes, (224, 224)))
    assert CropPolicy("random").rank == 0  # no process group here
    assert rank1.state_dict() == rank0.state_dict()  # not a setting: a resume may run on other ranks
    with pytest.raises(ValueError, match=r"rank must be an int >= 0, got -1"):
        CropPolicy("random", rank=-1)
