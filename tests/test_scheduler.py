import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim.lr_scheduler import LRScheduler

from fastresize import CosineAnnealingWarmbootingLR, StepCounter
from tests.conftest import assert_round_trip


def _optimizer(*lrs):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _cos(t, gap, eta):
    """The original's curve: ((1 + cos(pi t / gap)) / 2) (1 - eta_min) + eta_min."""
    return ((1 + math.cos(t * math.pi / gap)) / 2) * (1 - eta) + eta


def _drive(scheduler, optimizer, epochs, batches):
    """The original's call order; returns the lr of every group at every batch's update."""
    seen = []
    for _ in range(epochs):
        for _ in range(batches):
            scheduler.step_batch()
            seen.append([g["lr"] for g in optimizer.param_groups])
            optimizer.step()
        scheduler.step()
    return seen


def _per_epoch(rows, batches):
    return [rows[i][0] for i in range(0, len(rows), batches)]


def test_is_a_torch_lr_scheduler():
    scheduler = CosineAnnealingWarmbootingLR(_optimizer(0.1), epochs=3)
    assert isinstance(scheduler, LRScheduler)
    assert scheduler.get_last_lr() == [0.1]


def test_milestones_without_warmup():
    # epochs=6, steps=[3], epoch_scale=1: boundaries (0, 3, 6). Epoch e >= 1 runs at f(e - 1).
    # By hand: f(0..3) in segment 0 (gap 3 + 1 = 4, gamma 1); f(4..6) in segment 1 (gap 3, gamma 0.5).
    optimizer = _optimizer(1.0)
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=6, steps=[3], step_scale=0.5, eta_min=0.05)
    lrs = _per_epoch(_drive(scheduler, optimizer, epochs=9, batches=2), 2)
    expected = [
        1.0,  # epoch 0: the optimizer's own lr
        _cos(0, 4, 0.05),
        _cos(1, 4, 0.05),
        _cos(2, 4, 0.05),
        _cos(3, 4, 0.05),
        0.5 * _cos(1, 3, 0.05),
        0.5 * _cos(2, 3, 0.05),
        0.5 * _cos(3, 3, 0.05),  # = 0.5 * eta_min: the end of the schedule
        0.5 * 0.05,  # past the end it holds (the original rises again)
    ]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert expected[2] == pytest.approx(0.8608757, rel=1e-6) and expected[5] == pytest.approx(0.38125)


def test_warmup_is_per_batch_and_linear_from_zero():
    # epochs=5, warmup_epoch=2, batchs=2: W = 4 warmup batches, boundaries (2, 5), one segment (gap 3).
    optimizer = _optimizer(0.2, 0.02)
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=5, batchs=2, warmup_epoch=2, eta_min=0.1)
    rows = _drive(scheduler, optimizer, epochs=5, batches=2)
    firsts = [row[0] for row in rows]
    assert firsts[:4] == pytest.approx([0.0, 0.05, 0.1, 0.15])  # 0.2 * n / 4
    # Epoch 2 runs at f(1): t = 1 - 2 = -1 (the original's offset), then f(2) at t = 0, f(3) at t = 1.
    assert firsts[4:] == pytest.approx([0.2 * _cos(-1, 3, 0.1)] * 2 + [0.2] * 2 + [0.2 * _cos(1, 3, 0.1)] * 2)
    assert [row[1] / row[0] for row in rows[1:]] == pytest.approx([0.1] * 9)  # every group, same curve


@pytest.mark.parametrize("step_scale", [0.5, 1.0])
@pytest.mark.parametrize("epoch_scale", [0.0, 1.0])
def test_custom_curve(step_scale, epoch_scale):
    # epochs=6, steps=[2, 4]: boundaries (0, 2, 4, 6); lf(t, gap) = 1 - t / gap.
    optimizer = _optimizer(1.0)
    scheduler = CosineAnnealingWarmbootingLR(
        optimizer, epochs=6, steps=(2, 4), step_scale=step_scale, epoch_scale=epoch_scale, lf=lambda t, gap: 1 - t / gap
    )
    lrs = _per_epoch(_drive(scheduler, optimizer, epochs=8, batches=1), 1)
    g1, g2 = 2 + epoch_scale, 2 + epoch_scale  # inner segments are padded, the last is not
    expected = [
        1.0,
        1 - 0 / g1,  # f(0), segment 0
        1 - 1 / g1,
        1 - 2 / g1,  # f(2): k <= 2 is still segment 0
        step_scale * (1 - 1 / g2),  # f(3), segment 1, t = 1
        step_scale * (1 - 2 / g2),
        step_scale**2 * (1 - 1 / 2),  # f(5), last segment, gap 2
        step_scale**2 * (1 - 2 / 2),  # f(6) = the end
    ]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_epoch_scale_zero_reaches_eta_min_at_each_milestone():
    optimizer = _optimizer(1.0)
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=8, steps=[4], epoch_scale=0.0, eta_min=0.2)
    assert scheduler.epoch_lrs(4) == pytest.approx([0.2])  # t = gap: the cosine's floor
    assert scheduler.epoch_lrs(5) == pytest.approx([0.8 * _cos(1, 4, 0.2)])


def test_held_after_the_last_epoch():
    optimizer = _optimizer(1.0)
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=4, steps=[2], step_scale=0.5)
    end = scheduler.epoch_lrs(4)
    assert end == pytest.approx([0.5 * 0.05])
    assert all(scheduler.epoch_lrs(k) == end for k in range(5, 50))


def test_steps_are_not_modified_and_tuples_work():
    steps = [6, 2]
    optimizer = _optimizer(1.0)
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=8, steps=steps)
    assert steps == [6, 2] and scheduler.boundaries == (0, 2, 6, 8)
    assert CosineAnnealingWarmbootingLR(_optimizer(1.0), epochs=8, steps=(6, 2)).boundaries == (0, 2, 6, 8)


def test_out_of_range_and_duplicate_milestones_warn():
    with pytest.warns(UserWarning, match=r"milestones \[1, 9\] are outside \(warmup_epoch, epochs\) = \(1, 8\)"):
        scheduler = CosineAnnealingWarmbootingLR(_optimizer(1.0), epochs=8, steps=[1, 4, 9], batchs=1, warmup_epoch=1)
    assert scheduler.boundaries == (1, 4, 8)
    with pytest.warns(UserWarning, match=r"duplicate milestones \[4\] in steps count once"):
        scheduler = CosineAnnealingWarmbootingLR(_optimizer(1.0), epochs=8, steps=[4, 4])
    assert scheduler.epoch_lrs(6) == pytest.approx([0.8 * _cos(2, 4, 0.05)])  # step_scale applied once


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ValueError, r"epochs must be an int >= 1, got 0"),
        ({"epochs": 3, "warmup_epoch": 3, "batchs": 2}, ValueError, r"epochs must be greater than warmup_epoch"),
        ({"epochs": 3, "warmup_epoch": 1}, ValueError, r"warmup_epoch=1 needs batchs \(batches per epoch\) > 0"),
        ({"epochs": 3, "eta_min": 1.5}, ValueError, r"eta_min must be <= 1.0, got 1.5"),
        ({"epochs": 3, "eta_min": -0.1}, ValueError, r"eta_min must be >= 0.0, got -0.1"),
        ({"epochs": 3, "step_scale": -1}, ValueError, r"step_scale must be >= 0.0, got -1"),
        ({"epochs": 3, "epoch_scale": float("nan")}, ValueError, r"epoch_scale must be finite"),
        ({"epochs": 3, "lf": 0.5}, TypeError, r"lf must be a callable lf\(t, gap\) or None, got 0.5"),
        ({"epochs": 3, "steps": 2}, TypeError, r"steps must be an iterable of ints \(milestone epochs\), got 2"),
        ({"epochs": 3, "steps": [1.5]}, TypeError, r"steps\[0\] must be an int, got 1.5"),
        ({"epochs": 3, "batchs": -1}, ValueError, r"batchs must be an int >= 0, got -1"),
        ({"epochs": 3, "batchs": 4, "counter": StepCounter(5)}, ValueError, r"batchs=4 disagrees with counter"),
        ({"epochs": 3, "counter": 5}, TypeError, r"counter must be a StepCounter or None, got int"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        CosineAnnealingWarmbootingLR(_optimizer(0.1), **kwargs)


def test_bad_optimizer():
    with pytest.raises(TypeError, match=r"optimizer must be a torch.optim.Optimizer, got list"):
        CosineAnnealingWarmbootingLR([], epochs=3)


def test_base_comes_from_initial_lr():
    # A scheduler built after optimizer.load_state_dict: lr is the resumed lr, initial_lr the base.
    optimizer = _optimizer(0.01)
    optimizer.param_groups[0]["initial_lr"] = 0.1
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=4)
    assert scheduler.base_lrs == [0.1]
    scheduler.step()
    assert scheduler.get_last_lr() == [0.1]


def test_param_groups_added_later_are_scheduled():
    optimizer = _optimizer(1.0)
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=4, batchs=2, warmup_epoch=1)
    scheduler.step_batch()
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.5})
    scheduler.step_batch()
    assert scheduler.get_last_lr() == pytest.approx([0.5, 0.25])
    assert scheduler.base_lrs == [1.0, 0.5]


def test_external_iter_sets_the_epoch_counter():
    optimizer = _optimizer(1.0)
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=6, steps=[3])
    assert scheduler.step(external_iter=4) == pytest.approx(0.8 * _cos(1, 3, 0.05))
    assert scheduler.last_epoch == 5
    assert scheduler.step() == pytest.approx(0.8 * _cos(2, 3, 0.05))
    with pytest.raises(ValueError, match=r"external_iter must be an int >= -1, got -2"):
        scheduler.step(external_iter=-2)


def test_counter_mode_equals_the_original_call_order():
    batches = 3
    legacy_opt, counter_opt = _optimizer(0.3, 0.1), _optimizer(0.3, 0.1)
    config = {"epochs": 7, "steps": [3, 5], "warmup_epoch": 1, "eta_min": 0.02}
    legacy = CosineAnnealingWarmbootingLR(legacy_opt, batchs=batches, **config)
    counter = StepCounter(batches)
    driven = CosineAnnealingWarmbootingLR(counter_opt, counter=counter, **config)
    expected = _drive(legacy, legacy_opt, epochs=8, batches=batches)
    seen = []
    for _ in range(8 * batches):
        seen.append([g["lr"] for g in counter_opt.param_groups])
        counter.advance()
        driven.step()  # Lightning's interval="step": after the update, for the next batch
        driven.step()  # calling again changes nothing
    assert seen == expected
    for epoch in range(8):
        for batch in range(batches):
            assert driven.lr_at(epoch, batch) == expected[epoch * batches + batch]


def test_counter_mode_refuses_its_legacy_position():
    counter = StepCounter(2)
    scheduler = CosineAnnealingWarmbootingLR(_optimizer(1.0), epochs=3, counter=counter)
    with pytest.raises(ValueError, match=r"step\(external_iter=1\) conflicts with counter=..."):
        scheduler.step(external_iter=1)
    with pytest.raises(ValueError, match=r"last_epoch is the counter's epoch in counter mode"):
        scheduler.last_epoch = 2


def test_resume_by_last_epoch_does_not_replay_the_warmup():
    config = {"epochs": 6, "batchs": 2, "warmup_epoch": 2}
    optimizer = _optimizer(1.0)
    full = _drive(CosineAnnealingWarmbootingLR(optimizer, **config), optimizer, epochs=6, batches=2)
    optimizer = _optimizer(1.0)
    resumed = CosineAnnealingWarmbootingLR(optimizer, **config)
    resumed.last_epoch = 3
    resumed.step(external_iter=2)  # the lr of epoch 3, as the end of epoch 2 set it
    assert _drive(resumed, optimizer, epochs=3, batches=2) == full[6:]


def _legacy_run(parts, n):
    scheduler, optimizer = parts
    seen = []
    for i in range(n):
        scheduler.step_batch()
        seen.append(scheduler.get_last_lr())
        optimizer.step()
        if i % 3 == 2:
            scheduler.step()
    return seen


class _Legacy:
    """A scheduler and its optimizer, saved and loaded as one (as a checkpoint holds both)."""

    def __init__(self):
        self.optimizer = _optimizer(0.4, 0.04)
        self.scheduler = CosineAnnealingWarmbootingLR(
            self.optimizer, epochs=6, steps=[3], batchs=3, warmup_epoch=1, eta_min=0.1
        )

    def state_dict(self):
        return self.scheduler.state_dict()

    def load_state_dict(self, state):
        self.scheduler.load_state_dict(state)


@pytest.mark.parametrize("before", [1, 2, 4, 9])  # inside the warmup, at its end, after a step()
def test_state_round_trip_continues_identically(before):
    assert_round_trip(_Legacy, lambda s, n: _legacy_run((s.scheduler, s.optimizer), n), before=before, after=12)


def test_counter_mode_state_round_trip():
    counter = StepCounter(3)
    optimizer = _optimizer(0.4)
    scheduler = CosineAnnealingWarmbootingLR(optimizer, epochs=5, warmup_epoch=1, counter=counter)
    for _ in range(4):
        counter.advance()
        scheduler.step()
    state = {"counter": counter.state_dict(), "scheduler": scheduler.state_dict()}
    assert set(state["scheduler"]) == {"base_lrs", "last_lr"}
    counter_2 = StepCounter(3)
    counter_2.load_state_dict(state["counter"])
    scheduler_2 = CosineAnnealingWarmbootingLR(_optimizer(0.4), epochs=5, warmup_epoch=1, counter=counter_2)
    scheduler_2.load_state_dict(state["scheduler"])
    for _ in range(10):
        assert scheduler_2.get_last_lr() == scheduler.get_last_lr()
        for c, s in ((counter, scheduler), (counter_2, scheduler_2)):
            c.advance()
            s.step()


def test_bad_state():
    scheduler = CosineAnnealingWarmbootingLR(_optimizer(0.1), epochs=3)
    with pytest.raises(ValueError, match=r"missing keys \['last_epoch', 'batches_done'\]"):
        scheduler.load_state_dict({"base_lrs": [0.1], "last_lr": [0.1]})
    with pytest.raises(ValueError, match=r"the state holds 2 param groups but the optimizer has 1"):
        scheduler.load_state_dict({"base_lrs": [0.1, 0.1], "last_lr": [0.1, 0.1], "last_epoch": 0, "batches_done": 0})
    assert scheduler.base_lrs == [0.1]


@settings(max_examples=60, deadline=None)
@given(
    epochs=st.integers(1, 12),
    warmup=st.integers(0, 4),
    batchs=st.integers(1, 4),
    steps=st.lists(st.integers(-2, 15), max_size=5),
    eta_min=st.floats(0, 1),
    step_scale=st.floats(0, 1),
    epoch_scale=st.floats(0, 3),
    base=st.floats(1e-6, 10),
)
def test_lr_always_lies_between_zero_and_base(epochs, warmup, batchs, steps, eta_min, step_scale, epoch_scale, base):
    warmup = min(warmup, epochs - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = CosineAnnealingWarmbootingLR(
            _optimizer(base),
            epochs,
            eta_min,
            steps,
            step_scale,
            batchs=batchs,
            warmup_epoch=warmup,
            epoch_scale=epoch_scale,
        )
    for epoch in range(epochs + 3):
        for batch in range(batchs):
            (lr,) = scheduler.lr_at(epoch, batch)
            assert 0.0 <= lr <= base * (1 + 1e-12)


def test_a_number_given_as_a_string_is_refused():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(TypeError, match=r"eta_min must be a number, got '0.1'"):
        CosineAnnealingWarmbootingLR(optimizer, epochs=2, eta_min="0.1")
