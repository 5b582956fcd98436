import collections
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
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
