import collections
import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fastresize import MultiScalePolicy
from tests.conftest import assert_round_trip


def test_sizes_are_the_multiples_inside_the_range():
    assert MultiScalePolicy(256, 512).sizes == tuple(range(256, 513, 16))
    # The original's np.arange(250, 512 + 16, 16) reaches 522 and holds no multiple of 16.
    assert MultiScalePolicy(250, 512).sizes == tuple(range(256, 513, 16))
    assert MultiScalePolicy(250, 520).sizes[-1] == 512
    assert MultiScalePolicy(100, 130, multiple=32).sizes == (128,)
    assert MultiScalePolicy(64, 64).sizes == (64,)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((512, 256), {}, ValueError, r"lower must be <= upper, got lower=512 and upper=256"),
        ((17, 31), {}, ValueError, r"no multiple of 16 lies in \[lower, upper\] = \[17, 31\]"),
        ((0, 256), {}, ValueError, r"lower must be an int >= 1, got 0"),
        ((-32, 256), {}, ValueError, r"lower must be an int >= 1, got -32"),
        ((256, 512), {"multiple": 0}, ValueError, r"multiple must be an int >= 1, got 0"),
        ((256.0, 512), {}, TypeError, r"lower must be an int, got 256.0"),
        ((256, 512), {"max_first_steps": -1}, ValueError, r"max_first_steps must be an int >= 0"),
        ((256, 512), {"seed": "0"}, TypeError, r"seed must be an int, got '0'"),
        ((256, 512), {"side": "wide"}, ValueError, r"side must be one of 'square', 'short', 'long'; got 'wide'"),
    ],
)
def test_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        MultiScalePolicy(*args, **kwargs)


def test_max_size_first_then_draws():
    policy = MultiScalePolicy(256, 512, max_first_steps=5)
    # Resumed process: a large absolute step, but global_step counts this process's steps.
    assert all(policy.size_for(step=1000 + g, global_step=g) == (512, 512) for g in range(5))
    drawn = {policy.size_for(step=s, global_step=5 + s)[0] for s in range(200)}
    assert drawn == set(policy.sizes)  # every size appears once the max-first window is over
    assert MultiScalePolicy(256, 512, max_first_steps=0).size_for(3, 0) == policy.size_for(3, 10)


def test_draw_is_uniform():
    policy = MultiScalePolicy(256, 512, seed=7)
    k, n = len(policy.sizes), 34_000
    counts = collections.Counter(policy.side_for(step, global_step=10) for step in range(n))
    expected = n / k
    chi2 = sum((counts[s] - expected) ** 2 / expected for s in policy.sizes)
    # Critical value of chi-square with 16 degrees of freedom at p = 0.001 is 39.25.
    assert chi2 < 39.25, counts
    assert min(counts.values()) > 0.9 * expected


def test_draw_depends_only_on_seed_and_step():
    a, b = MultiScalePolicy(256, 512, seed=3), MultiScalePolicy(256, 512, seed=3)
    forward = [a.side_for(s, 99) for s in range(300)]
    backward = [b.side_for(s, 99) for s in reversed(range(300))][::-1]
    assert forward == backward
    assert [a.side_for(s, 99) for s in range(300)] == forward  # asking again changes nothing
    other_seed = MultiScalePolicy(256, 512, seed=4)
    assert [other_seed.side_for(s, 99) for s in range(300)] != forward


def test_draw_is_identical_in_another_process():
    code = (
        "import json; from fastresize import MultiScalePolicy;"
        "p = MultiScalePolicy(256, 512, seed=11);"
        "print(json.dumps([p.side_for(s, 10) for s in range(500)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    here = MultiScalePolicy(256, 512, seed=11)
    assert json.loads(out.stdout) == [here.side_for(s, 10) for s in range(500)]


@pytest.mark.parametrize(
    ("side", "shape", "expected"),
    [
        ("square", (3, 480, 640), (512, 512)),
        ("short", (3, 480, 640), (512, 688)),  # 640 * 512 / 480 = 682.7 -> 688
        ("long", (3, 480, 640), (384, 512)),
        ("short", (640, 480), (688, 512)),
        ("long", (640, 480), (512, 384)),
        ("short", (100, 100), (512, 512)),
        ("long", (10, 1000), (16, 512)),  # never below one multiple
    ],
)
def test_sides(side, shape, expected):
    assert MultiScalePolicy(256, 512, side=side).size_for(0, 0, shape) == expected


def test_aspect_modes_need_a_shape():
    policy = MultiScalePolicy(256, 512, side="short")
    with pytest.raises(ValueError, match=r"side='short' needs the input shape \(..., H, W\), got shape=None"):
        policy.size_for(0, 0)
    with pytest.raises(ValueError, match=r"positive height and width, got \(0, 5\)"):
        policy.size_for(0, 0, (0, 5))


@pytest.mark.parametrize(("step", "global_step"), [(-1, 0), (0, -1)])
def test_negative_steps_are_rejected(step, global_step):
    with pytest.raises(ValueError, match=r"step must be an int >= 0, got -1"):
        MultiScalePolicy(256, 512).size_for(step, global_step)


@given(
    lower=st.integers(1, 600),
    span=st.integers(0, 600),
    multiple=st.sampled_from([1, 8, 16, 32]),
    side=st.sampled_from(["square", "short", "long"]),
    step=st.integers(0, 2**40),
    global_step=st.integers(0, 20),
    h=st.integers(1, 4000),
    w=st.integers(1, 4000),
)
def test_sizes_are_always_allowed(lower, span, multiple, side, step, global_step, h, w):
    upper = lower + span
    try:
        policy = MultiScalePolicy(lower, upper, multiple=multiple, side=side)
    except ValueError:
        assert not any(s % multiple == 0 for s in range(lower, upper + 1))
        return
    out_h, out_w = policy.size_for(step, global_step, (h, w))
    assert out_h % multiple == 0 and out_w % multiple == 0
    s = policy.side_for(step, global_step)
    assert s in policy.sizes and lower <= s <= upper
    if side == "square":
        assert (out_h, out_w) == (s, s)
    else:
        sets_height = (side == "short") == (h <= w)
        assert (out_h if sets_height else out_w) == s
    if global_step < policy.max_first_steps:
        assert s == policy.max_size


def _run(policy, n):
    return [policy.size_for(s, s, (3, 300, 500)) for s in range(n)]


def test_state_round_trip():
    assert_round_trip(lambda: MultiScalePolicy(128, 384, seed=5, side="long"), _run, before=0, after=30)


@pytest.mark.parametrize(
    ("key", "saved", "built"), [("lower", 64, 96), ("upper", 128, 256), ("multiple", 8, 16), ("seed", 3, 0)]
)
def test_loading_other_settings_raises_and_changes_nothing(key, saved, built):
    settings = {"lower": 96, "upper": 256, "multiple": 16, "seed": 0}
    policy = MultiScalePolicy(**settings)
    state = MultiScalePolicy(**{**settings, key: saved}).state_dict()
    with pytest.raises(ValueError, match=rf"saved with {key}={saved} but this policy has {key}={built}"):
        policy.load_state_dict(state)
    assert repr(policy) == repr(MultiScalePolicy(**settings))


def test_a_resumed_process_may_change_max_first_steps():
    policy = MultiScalePolicy(96, 256, max_first_steps=0)
    policy.load_state_dict(MultiScalePolicy(96, 256, max_first_steps=5).state_dict())
    assert policy.max_first_steps == 0  # the process's own setting stays


# ------------------------------------------------------------------------------------ schedules
def test_the_default_schedule_is_unchanged():
    # The draw of today's range is draw_index(seed, step, count): pinned so that old runs resume alike.
    from fastresize.policy import draw_index

    policy = MultiScalePolicy(256, 512, seed=9)
    assert policy.state_dict() == {
        "lower": 256,
        "upper": 512,
        "multiple": 16,
        "max_first_steps": 5,
        "seed": 9,
        "side": "square",
        "interval": 1,
        "sizes": None,
        "weights": None,
        "ramp": None,
    }
    assert [policy.side_for(s, 5) for s in range(100)] == [policy.sizes[draw_index(9, s, 17)] for s in range(100)]
    expected = "MultiScalePolicy(lower=256, upper=512, multiple=16, max_first_steps=5, seed=9, side='square')"
    assert repr(policy) == expected


@pytest.mark.parametrize("k", [1, 3, 10])
def test_interval_holds_each_draw_for_k_steps(k):
    held = MultiScalePolicy(96, 320, seed=2, interval=k)
    plain = MultiScalePolicy(96, 320, seed=2)
    n_blocks = 60
    sides = [held.side_for(step, global_step=5) for step in range(n_blocks * k)]
    for block in range(n_blocks):
        # Every step of block b uses draw b of the plain policy: the draw uses step // k.
        assert sides[block * k : (block + 1) * k] == [plain.side_for(block, global_step=5)] * k
    assert len(set(sides)) > 1


def test_weighted_draws_match_their_weights():
    weights = [1.0, 2.0, 3.0, 4.0]
    policy = MultiScalePolicy(sizes=[128, 192, 256, 320], weights=weights, seed=1)
    n = 20_000
    counts = collections.Counter(policy.side_for(step, global_step=5) for step in range(n))
    expected = {s: n * w / sum(weights) for s, w in zip([128, 192, 256, 320], weights, strict=True)}
    chi2 = sum((counts[s] - e) ** 2 / e for s, e in expected.items())
    # The draws are fixed by the seed, so this cannot flake; 16.27 is chi-square's critical value
    # with 3 degrees of freedom at p = 0.001.
    assert chi2 < 16.27, counts


def test_weighted_draws_with_an_interval_weigh_the_blocks():
    policy = MultiScalePolicy(sizes=[64, 128], weights=[3, 1], interval=4, seed=5)
    blocks = [policy.side_for(step, global_step=5) for step in range(0, 8000, 4)]
    share = blocks.count(64) / len(blocks)
    # 2000 draws of p = 0.75: the standard error is 0.0097; this is over 4 of them.
    assert abs(share - 0.75) < 0.04
    assert all(policy.side_for(step, 5) == policy.side_for(step - step % 4, 5) for step in range(400))


def test_an_explicit_list_draws_only_its_sizes():
    policy = MultiScalePolicy(sizes=[320, 256, 448], seed=3)
    assert policy.sizes == (256, 320, 448) and policy.max_size == 448
    assert {policy.side_for(s, 5) for s in range(300)} == {256, 320, 448}
    assert MultiScalePolicy(sizes=[7, 9], multiple=1).max_size == 9


BUCKETS = [(512, 768), (640, 640), (768, 512), (384, 896)]


def test_rectangular_buckets():
    policy = MultiScalePolicy(sizes=BUCKETS, seed=0)
    # Areas: 393216, 409600, 393216, 344064: the largest first is the square bucket.
    assert policy.max_shape == (640, 640) and policy.max_size == 640
    assert policy.shapes == ((384, 896), (512, 768), (768, 512), (640, 640))
    assert policy.size_for(10, global_step=0, shape=(3, 100, 50)) == (640, 640)
    drawn = {policy.size_for(s, 5) for s in range(400)}
    assert drawn == set(BUCKETS)
    tall = MultiScalePolicy(sizes=[(512, 768), (768, 512)])
    assert tall.max_shape == (768, 512) and tall.max_size == 768  # of equal areas, the taller
    with pytest.raises(ValueError, match=r"rectangular sizes have no side length; call policy.size_for"):
        tall.side_for(0, 0)
    with pytest.raises(ValueError, match=r"rectangular sizes have no side lengths; read policy.shapes"):
        tall.sizes  # noqa: B018


def _round_half_up(value: Fraction, multiple: int) -> int:
    return max(multiple, math.floor(value / multiple + Fraction(1, 2)) * multiple)


def _ramp_bound(start: int, end: int, first: int, last: int, step: int, multiple: int) -> int:
    """The closed form: linear between (first, start) and (last, end), held outside, rounded half up."""
    if step >= last:
        value = Fraction(end)
    elif step <= first:
        value = Fraction(start)
    else:
        value = start + Fraction(end - start) * (step - first) / (last - first)
    return _round_half_up(value, multiple)


def test_a_ramp_never_leaves_its_bounds():
    policy = MultiScalePolicy((160, 200), (160, 200), ramp=(0, 10), max_first_steps=0)
    assert policy.max_size == 192 and max(policy.side_for(s, s) for s in range(12)) == 192  # 200 rounds to 208
    assert MultiScalePolicy((100, 200), (150, 200), ramp=(0, 10)).size_for(0, 9, None)[0] >= 112  # never 96
    with pytest.raises(ValueError, match=r"no multiple of 64 lies in \[lower, upper\] = \[100, 120\]"):
        MultiScalePolicy((100, 110), (110, 120), multiple=64, ramp=(0, 10))


@pytest.mark.parametrize(
    ("lower", "upper", "ramp", "multiple"),
    [
        ((160, 192), (160, 192), (30, 130), 16),  # a pure ramp, FFCV's
        ((160, 192), (160, 192), (30, 130), 32),
        ((128, 224), (192, 320), (0, 77), 16),  # jitter around a ramp
        (96, (128, 400), (10, 50), 16),  # only the upper bound moves
        ((300, 100), (320, 120), (5, 45), 8),  # a ramp down
        ((64, 128), (64, 128), (20, 20), 16),  # a jump at step 20
    ],
)
def test_ramp_bounds_at_every_step(lower, upper, ramp, multiple):
    policy = MultiScalePolicy(lower, upper, multiple=multiple, ramp=ramp, seed=4)
    lo_ends = lower if isinstance(lower, tuple) else (lower, lower)
    hi_ends = upper if isinstance(upper, tuple) else (upper, upper)
    for step in range(ramp[1] + 20):
        lo = _ramp_bound(*lo_ends, *ramp, step, multiple)
        hi = _ramp_bound(*hi_ends, *ramp, step, multiple)
        assert policy.shapes_at(step) == tuple((s, s) for s in range(lo, hi + 1, multiple)), step
        assert lo <= policy.side_for(step, global_step=5) <= hi
    assert policy.max_size == max(_ramp_bound(*hi_ends, *ramp, s, multiple) for s in (0, ramp[1]))


def test_pure_ramp_sizes_and_epochs():
    by_epoch = MultiScalePolicy((160, 192), (160, 192), ramp=(2, 4), steps_per_epoch=10)
    by_step = MultiScalePolicy((160, 192), (160, 192), ramp=(20, 40))
    sides = [by_epoch.side_for(s, global_step=5) for s in range(50)]
    assert sides == [by_step.side_for(s, global_step=5) for s in range(50)]
    # 160 + 32 * (s - 20) / 20: 168 at step 25 rounds up to 176, 184 at step 35 to 192.
    assert sides[:25] == [160] * 25 and sides[25:35] == [176] * 10 and sides[35:] == [192] * 15
    assert by_epoch.state_dict() == by_step.state_dict()  # the ramp is held in steps


def test_a_ramp_with_an_interval_reads_its_bounds_at_the_block_start():
    per_epoch = MultiScalePolicy((160, 192), (160, 192), ramp=(2, 4), steps_per_epoch=10, interval=10)
    sides = [per_epoch.side_for(s, global_step=5) for s in range(50)]
    assert sides == [160] * 30 + [176] * 10 + [192] * 10  # one size per epoch, as FFCV


@pytest.mark.parametrize(
    "make",
    [
        lambda: MultiScalePolicy((160, 256), (160, 256), ramp=(100, 1000)),
        lambda: MultiScalePolicy((128, 224), (192, 320), ramp=(0, 500), interval=7),
        lambda: MultiScalePolicy(sizes=BUCKETS, weights=[1, 1, 1, 4]),
        lambda: MultiScalePolicy(sizes=[128, 256], side="short"),
    ],
)
def test_the_first_steps_use_the_runs_largest_size_again_after_a_resume(make):
    from fastresize import StepCounter

    policy = make()
    largest = policy.max_shape
    assert all(area <= largest[0] * largest[1] for area in (h * w for h, w in policy.shapes))
    counter = StepCounter(steps_per_epoch=100)
    square_input = (3, 64, 64)  # under side="short" a square input gives (s, s)
    opening = []
    for _ in range(5):
        opening.append(policy.size_for(counter.absolute_step, counter.global_step, square_input))
        counter.advance()
    assert opening == [largest] * 5
    resumed = StepCounter(steps_per_epoch=100)
    resumed.load_state_dict({"steps_per_epoch": 100, "epoch": 3, "batch": 40})  # mid-ramp
    sizes = []
    for _ in range(8):
        sizes.append(policy.size_for(resumed.absolute_step, resumed.global_step, square_input))
        resumed.advance()
    assert sizes[:5] == [largest] * 5
    assert sizes[5:] == [policy.size_for(340 + g, 5, square_input) for g in range(5, 8)]


def test_a_ramps_opening_is_its_end_not_the_size_of_the_moment():
    policy = MultiScalePolicy((160, 256), (160, 256), ramp=(1000, 2000))
    assert policy.shapes_at(0) == ((160, 160),)
    assert policy.size_for(0, global_step=0) == (256, 256)
    assert policy.size_for(0, global_step=5) == (160, 160)


@pytest.mark.parametrize(
    "make",
    [
        lambda: MultiScalePolicy((160, 256), (192, 320), ramp=(5, 25), seed=3, side="short"),
        lambda: MultiScalePolicy(sizes=BUCKETS, weights=[0.5, 1, 2, 1], interval=3),
        lambda: MultiScalePolicy(sizes=[128, (192, 192), 256], seed=8, interval=2),
    ],
)
def test_schedule_states_round_trip(make):
    assert_round_trip(make, _run, before=0, after=40)
    policy = make()
    state = json.loads(json.dumps(policy.state_dict()))  # pairs come back as lists
    make().load_state_dict(state)
    assert json.loads(json.dumps(state)) == policy.state_dict()


def test_a_ramp_state_holds_its_settings():
    state = MultiScalePolicy((160, 192), 224, ramp=(1, 3), steps_per_epoch=5, interval=2).state_dict()
    assert state == {
        "lower": [160, 192],
        "upper": [224, 224],
        "multiple": 16,
        "max_first_steps": 5,
        "seed": 0,
        "side": "square",
        "interval": 2,
        "sizes": None,
        "weights": None,
        "ramp": [5, 15],
    }


@pytest.mark.parametrize(
    ("saved", "built", "match"),
    [
        (
            {"lower": 96, "upper": 256, "interval": 2},
            {"lower": 96, "upper": 256},
            r"saved with interval=2 but this policy has interval=1",
        ),
        (
            {"sizes": [128, 256]},
            {"sizes": [128, 320]},
            r"saved with sizes=\[128, 256\] but this policy has sizes=\[128, 320\]",
        ),
        (
            {"sizes": [(128, 256), (256, 128)]},
            {"sizes": [(128, 256), (256, 160)]},
            r"saved with sizes=\[\[128, 256\], \[256, 128\]\] but this policy has sizes=\[\[128, 256\], \[256, 160\]\]",
        ),
        (
            {"sizes": [128, 256], "weights": [1, 2]},
            {"sizes": [128, 256]},
            r"saved with weights=\[1.0, 2.0\] but this policy has weights=None",
        ),
        (
            {"lower": (96, 128), "upper": 256, "ramp": (0, 10)},
            {"lower": (96, 128), "upper": 256, "ramp": (0, 20)},
            r"saved with ramp=\[0, 10\] but this policy has ramp=\[0, 20\]",
        ),
        (
            {"lower": (96, 128), "upper": 256, "ramp": (0, 10)},
            {"lower": (96, 160), "upper": 256, "ramp": (0, 10)},
            r"saved with lower=\[96, 128\] but this policy has lower=\[96, 160\]",
        ),
        (
            {"lower": 96, "upper": 256, "side": "short"},
            {"lower": 96, "upper": 256},
            r"saved with side='short' but this policy has side='square'",
        ),
    ],
)
def test_loading_other_schedule_settings_raises_and_changes_nothing(saved, built, match):
    policy = MultiScalePolicy(**built)
    state = json.loads(json.dumps(MultiScalePolicy(**saved).state_dict()))
    with pytest.raises(ValueError, match=match):
        policy.load_state_dict(state)
    assert policy.state_dict() == MultiScalePolicy(**built).state_dict()


def test_a_state_saved_before_the_schedules_loads():
    old = {"lower": 96, "upper": 256, "multiple": 16, "max_first_steps": 5, "seed": 0, "side": "square"}
    MultiScalePolicy(96, 256).load_state_dict(old)
    with pytest.raises(ValueError, match=r"saved with interval=1 but this policy has interval=4"):
        MultiScalePolicy(96, 256, interval=4).load_state_dict(old)
    with pytest.raises(ValueError, match=r"missing keys \['weights', 'ramp'\]"):
        MultiScalePolicy(96, 256).load_state_dict({**old, "interval": 1, "sizes": None})


def test_the_policy_protocol():
    from fastresize.policy import SizePolicy

    class Doubling:
        """Doubles the side every 1000 steps, from 128 to 512; the largest first."""

        max_size = 512

        def size_for(self, step, global_step, shape=None):
            side = self.max_size if global_step < 5 else min(512, 128 * 2 ** (step // 1000))
            return (side, side)

        def state_dict(self):
            return {"max_size": self.max_size}

        def load_state_dict(self, state):
            if state != self.state_dict():
                raise ValueError(f"saved with {state} but this policy has {self.state_dict()}")

    assert isinstance(MultiScalePolicy(96, 256), SizePolicy)
    assert isinstance(Doubling(), SizePolicy)
    assert not isinstance(object(), SizePolicy)
    assert Doubling().size_for(2500, 10) == (512, 512)


@pytest.mark.parametrize(
    ("make", "size", "expected"),
    [
        (lambda: MultiScalePolicy(96, 256, seed=2), 160, lambda: MultiScalePolicy(96, 160, seed=2)),
        (
            lambda: MultiScalePolicy(sizes=BUCKETS, weights=[1, 2, 3, 4], interval=3),
            (768, 512),  # keeps the buckets of area up to 768 * 512, with their weights
            lambda: MultiScalePolicy(sizes=[(512, 768), (768, 512), (384, 896)], weights=[1, 3, 4], interval=3),
        ),
        (lambda: MultiScalePolicy(sizes=[256, 128, 192]), 192, lambda: MultiScalePolicy(sizes=[128, 192])),
        (
            lambda: MultiScalePolicy((160, 256), (192, 320), ramp=(0, 10), steps_per_epoch=10, side="long"),
            224,  # both bounds clamped at both ends: the ramp still ends at step 100
            lambda: MultiScalePolicy((160, 224), (192, 224), ramp=(0, 100), side="long"),
        ),
    ],
)
def test_capped(make, size, expected):
    policy = make()
    capped = policy.capped(size)
    assert capped.state_dict() == expected().state_dict()
    assert capped.max_shape == (size if isinstance(size, tuple) else (size, size))
    assert set(capped.shapes) <= set(policy.shapes)
    assert capped.capped(size).state_dict() == capped.state_dict()  # capping at the cap changes nothing
    assert policy.capped(policy.max_shape).state_dict() == policy.state_dict()
    with pytest.raises(ValueError, match=r"size=100 is not one of this policy's sizes"):
        policy.capped(100)


def test_output_size():
    assert MultiScalePolicy(96, 256).output_size(128) == (128, 128)
    assert MultiScalePolicy(sizes=BUCKETS).output_size((512, 768), (3, 10, 10)) == (512, 768)
    short = MultiScalePolicy(96, 256, side="short")
    assert short.output_size(128, (3, 480, 640)) == short.output_size((128, 128), (480, 640)) == (128, 176)
    with pytest.raises(ValueError, match=r"side='short' sets one side length, got the rectangular size=\(128, 160\)"):
        short.output_size((128, 160), (3, 480, 640))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, r"give lower and upper \(the range of side lengths\) or sizes=\[...\], got lower=None"),
        ({"lower": 96}, ValueError, r"got lower=96 and upper=None"),
        ({"lower": 96, "upper": 256, "interval": 0}, ValueError, r"interval must be an int >= 1, got 0"),
        ({"lower": 96, "upper": 256, "interval": 1.5}, TypeError, r"interval must be an int, got 1.5"),
        ({"lower": 96, "upper": 256, "sizes": [128]}, ValueError, r"sizes=... replaces lower, upper and ramp"),
        ({"sizes": [128], "ramp": (0, 5)}, ValueError, r"sizes=... replaces lower, upper and ramp"),
        ({"sizes": []}, ValueError, r"sizes must be a non-empty list of side lengths or \(height, width\) pairs"),
        ({"sizes": 128}, ValueError, r"sizes must be a non-empty list .*, got 128"),
        ({"sizes": [128, 250]}, ValueError, r"sizes\[1\]=250 is not a multiple of multiple=16"),
        ({"sizes": [(128, 250)]}, ValueError, r"sizes\[0\]=\(128, 250\) is not a multiple of multiple=16"),
        ({"sizes": [(128, 256, 3)]}, ValueError, r"sizes\[0\] must be a side length or a \(height, width\) pair"),
        ({"sizes": [0]}, ValueError, r"sizes\[0\] must be an int >= 1, got 0"),
        ({"sizes": [128.0]}, TypeError, r"sizes\[0\] must be an int, got 128.0"),
        ({"sizes": [128, 128]}, ValueError, r"sizes must not repeat a size, got \[128, 128\]"),
        ({"sizes": [128, (128, 128)]}, ValueError, r"sizes must not repeat a size"),
        ({"sizes": [128, 256], "weights": [1]}, ValueError, r"weights must hold one number per size \(2\), got \[1\]"),
        ({"sizes": [128, 256], "weights": [1, -1]}, ValueError, r"weights\[1\] must be >= 0.0, got -1"),
        ({"sizes": [128, 256], "weights": [1, 0]}, ValueError, r"weights\[1\] must be > 0, got 0; leave that size out"),
        ({"sizes": [128, 256], "weights": [1, "a"]}, TypeError, r"weights\[1\] must be a number, got 'a'"),
        ({"sizes": [128, 256], "weights": [1, math.inf]}, ValueError, r"weights\[1\] must be finite, got inf"),
        ({"lower": 96, "upper": 256, "weights": [1]}, ValueError, r"weights=\[1\] weighs the entries of sizes"),
        ({"sizes": [(128, 256)], "side": "short"}, ValueError, r"rectangular .* need side='square', got side='short'"),
        ({"lower": (96, 128), "upper": 256}, ValueError, r"lower=\(96, 128\) is a \(start, end\) pair, which needs"),
        ({"lower": 96, "upper": [128, 256]}, ValueError, r"upper=\[128, 256\] is a \(start, end\) pair"),
        ({"lower": 96, "upper": 256, "steps_per_epoch": 10}, ValueError, r"steps_per_epoch=10 only turns ramp's"),
        ({"lower": 96, "upper": 256, "ramp": 5}, ValueError, r"ramp must be a \(first, last\) pair .*, got 5"),
        ({"lower": 96, "upper": 256, "ramp": (5, 2)}, ValueError, r"ramp must have first <= last, got ramp=\(5, 2\)"),
        ({"lower": 96, "upper": 256, "ramp": (-1, 2)}, ValueError, r"ramp\[0\] must be an int >= 0, got -1"),
        ({"lower": 96, "upper": 256, "ramp": (0, 2.5)}, TypeError, r"ramp\[1\] must be an int, got 2.5"),
        ({"lower": 96, "upper": 256, "ramp": (0, 2), "steps_per_epoch": 0}, ValueError, r"steps_per_epoch must be"),
        ({"lower": (96, 128, 160), "upper": 256, "ramp": (0, 2)}, ValueError, r"lower must be an int or a \(start,"),
        ({"lower": (96, 0), "upper": 256, "ramp": (0, 2)}, ValueError, r"lower must be an int >= 1, got 0"),
        (
            {"lower": (96, 300), "upper": (128, 256), "ramp": (0, 2)},
            ValueError,
            r"lower must be <= upper at the ramp's end, got lower=300 and upper=256 there",
        ),
    ],
)
def test_bad_schedule_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        MultiScalePolicy(**kwargs)


def test_bad_sizes_for_capped_and_output_size():
    policy = MultiScalePolicy(96, 256)
    with pytest.raises(ValueError, match=r"size must be a side length or a \(height, width\) pair, got \(1, 2, 3\)"):
        policy.capped((1, 2, 3))
    with pytest.raises(TypeError, match=r"size must be an int, got '128'"):
        policy.output_size("128")
    with pytest.raises(ValueError, match=r"step must be an int >= 0, got -3"):
        policy.shapes_at(-3)


@given(
    lower=st.tuples(st.integers(1, 400), st.integers(1, 400)),
    span=st.tuples(st.integers(0, 300), st.integers(0, 300)),
    first=st.integers(0, 500),
    length=st.integers(0, 500),
    multiple=st.sampled_from([1, 8, 16, 32]),
    interval=st.integers(1, 20),
    step=st.integers(0, 2000),
    global_step=st.integers(0, 10),
)
def test_ramp_sizes_are_always_allowed(lower, span, first, length, multiple, interval, step, global_step):
    upper = (lower[0] + span[0], lower[1] + span[1])
    smallest, largest = -(-min(lower) // multiple) * multiple, max(upper) // multiple * multiple
    assume(smallest <= largest)  # else no multiple lies in the bounds, which raises
    policy = MultiScalePolicy(lower, upper, multiple=multiple, ramp=(first, first + length), interval=interval)
    s = policy.side_for(step, global_step)
    assert s % multiple == 0 and s <= policy.max_size and (s, s) in policy.shapes
    if global_step < policy.max_first_steps:
        assert s == policy.max_size
    else:
        assert (s, s) in policy.shapes_at(step)
    assert policy.max_size == max(min(max(_round_half_up(Fraction(v), multiple), smallest), largest) for v in upper)
