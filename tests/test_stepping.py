import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, OneCycleLR
from torch.utils.data import DataLoader, TensorDataset

from fastresize import CosineAnnealingWarmbootingLR, wrap
from fastresize.stepping import PerBatchStepper, Stepper, TimmStepper, WarmbootStepper, stepper_for

EPOCHS, BATCHES = 3, 3  # 10 samples in batches of 4


def _loader():
    data = TensorDataset(torch.randint(0, 256, (10, 3, 24, 24), dtype=torch.uint8))
    return DataLoader(data, batch_size=4)


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)


SCHEDULERS = {
    "OneCycleLR": lambda opt: OneCycleLR(opt, max_lr=1.0, epochs=EPOCHS, steps_per_epoch=BATCHES),
    "CosineAnnealingLR": lambda opt: CosineAnnealingLR(opt, T_max=EPOCHS * BATCHES, eta_min=0.01),
    "LambdaLR": lambda opt: LambdaLR(opt, lambda step: 1.0 / (1 + step)),
}


def _loop_lrs(wrapped, optimizer, *, break_at=None):
    """The lr of every batch the loop trains, with an optional break inside the second epoch."""
    lrs = []
    while len(lrs) < EPOCHS * BATCHES:
        for _ in wrapped:
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if len(lrs) == break_at:
                break
    return lrs


@pytest.mark.parametrize("kind", list(SCHEDULERS))
@pytest.mark.parametrize("break_at", [None, 4])
def test_a_per_batch_torch_scheduler_sees_what_a_hand_written_loop_sees(kind, break_at):
    by_hand, optimizer = [], _optimizer()
    scheduler = SCHEDULERS[kind](optimizer)
    for _ in range(EPOCHS * BATCHES):
        by_hand.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()

    optimizer = _optimizer()
    wrapped = wrap(_loader(), 16, 32, device="cpu", scheduler=SCHEDULERS[kind](optimizer))
    assert isinstance(wrapped.stepper, PerBatchStepper)
    assert _loop_lrs(wrapped, optimizer, break_at=break_at) == by_hand
    assert len(set(by_hand)) > 3  # the schedule moves: a frozen lr could not tell the orders apart


def test_one_cycle_past_its_total_steps_is_refused_before_the_epoch():
    optimizer = _optimizer()
    wrapped = wrap(_loader(), 16, 32, device="cpu", scheduler=OneCycleLR(optimizer, max_lr=1.0, total_steps=5))
    for _ in wrapped:
        optimizer.step()
    with pytest.raises(ValueError, match=r"OneCycleLR has total_steps=5 and has taken 3, so 2 are left, but this"):
        next(iter(wrapped))


class _TimmLike:
    """timm's Scheduler interface: step_update(num_updates) after each update, step(epoch) after each epoch."""

    def __init__(self, optimizer):
        self.optimizer, self.calls = optimizer, []

    def step_update(self, num_updates, metric=None):
        self.calls.append(("step_update", num_updates))
        self.optimizer.param_groups[0]["lr"] = 0.1 / (1 + num_updates)

    def step(self, epoch, metric=None):
        self.calls.append(("step", epoch))


def test_a_timm_scheduler_gets_timms_calls():
    # What timm's train.py does: num_updates += 1; step_update(num_updates) per batch, step(epoch + 1) per epoch.
    by_hand = _TimmLike(_optimizer())
    updates = 0
    for epoch in range(EPOCHS):
        for _ in range(BATCHES):
            updates += 1
            by_hand.step_update(num_updates=updates)
        by_hand.step(epoch + 1)

    optimizer = _optimizer()
    driven = _TimmLike(optimizer)
    wrapped = wrap(_loader(), 16, 32, device="cpu", scheduler=driven)
    assert isinstance(wrapped.stepper, TimmStepper)
    _loop_lrs(wrapped, optimizer, break_at=4)
    assert driven.calls == by_hand.calls


def test_a_real_timm_scheduler():
    scheduler_module = pytest.importorskip("timm.scheduler")
    by_hand, optimizer = [], _optimizer()
    scheduler = scheduler_module.CosineLRScheduler(optimizer, t_initial=EPOCHS * BATCHES, warmup_t=3, t_in_epochs=False)
    for update in range(1, EPOCHS * BATCHES + 1):
        by_hand.append(optimizer.param_groups[0]["lr"])
        scheduler.step_update(num_updates=update)

    optimizer = _optimizer()
    scheduler = scheduler_module.CosineLRScheduler(optimizer, t_initial=EPOCHS * BATCHES, warmup_t=3, t_in_epochs=False)
    wrapped = wrap(_loader(), 16, 32, device="cpu", scheduler=scheduler)
    assert _loop_lrs(wrapped, optimizer) == by_hand
    assert len(set(by_hand)) > 3


class _Recorder:
    def __init__(self):
        self.calls = []

    def before_batch(self):
        self.calls.append("before")

    def after_batch(self):
        self.calls.append("after")

    def after_epoch(self):
        self.calls.append("epoch")


def test_any_object_with_the_hooks_is_driven_in_order():
    recorder = _Recorder()
    wrapped = wrap(_loader(), 16, 32, device="cpu", scheduler=recorder)
    assert wrapped.stepper is recorder and isinstance(recorder, Stepper)
    seen = []
    for _ in wrapped:
        seen.append(list(recorder.calls))
    assert seen == [["before"], ["before", "after", "before"], ["before", "after", "before", "after", "before"]]
    assert recorder.calls[-3:] == ["before", "after", "epoch"]


def test_the_warmboot_scheduler_keeps_its_own_call_order():
    scheduler = CosineAnnealingWarmbootingLR(_optimizer(), epochs=4, batchs=BATCHES, warmup_epoch=1)
    assert isinstance(stepper_for(scheduler, wrap(_loader(), 16, 32, device="cpu").counter), WarmbootStepper)


def test_bad_schedulers():
    counter = wrap(_loader(), 16, 32, device="cpu").counter
    with pytest.raises(TypeError, match=r"scheduler must be a CosineAnnealingWarmbootingLR.*got str"):
        stepper_for("cosine", counter)
    scheduler = CosineAnnealingWarmbootingLR(_optimizer(), epochs=4, batchs=5, warmup_epoch=1)
    with pytest.raises(ValueError, match=r"the scheduler's batchs=5 disagrees with the loader's 3 batches per epoch"):
        stepper_for(scheduler, counter)


def _warmboot(optimizer):
    return CosineAnnealingWarmbootingLR(optimizer, epochs=EPOCHS, steps=[2], batchs=BATCHES, warmup_epoch=1)


# (scheduler, the user's own call inside the loop, the calls the message names)
DOUBLE_STEPS = {
    "warmboot-step_batch": (_warmboot, lambda s: s.step_batch(), r"scheduler\.step_batch\(\) and scheduler\.step\(\)"),
    "OneCycleLR": (SCHEDULERS["OneCycleLR"], lambda s: s.step(), r"remove scheduler\.step\(\) from"),
    "timm": (lambda opt: _TimmLike(opt), lambda s: s.step_update(num_updates=99), r"scheduler\.step_update\(\) and"),
}


@pytest.mark.parametrize("case", list(DOUBLE_STEPS))
def test_a_scheduler_also_stepped_by_the_loop_raises_at_the_next_batch(case):
    make, own_step, calls = DOUBLE_STEPS[case]
    optimizer = _optimizer()
    scheduler = make(optimizer)
    wrapped = wrap(_loader(), 16, 32, device="cpu", scheduler=scheduler)
    trained = 0
    with pytest.raises(RuntimeError, match=rf"was stepped outside the loader: wrap\(scheduler=...\).*{calls}"):
        for _ in wrapped:
            trained += 1
            optimizer.step()
            own_step(scheduler)
    assert trained == 1  # raised when the loop came back for the second batch


def test_a_warmboot_step_after_the_epoch_raises_at_the_next_epoch():
    optimizer = _optimizer()
    scheduler = _warmboot(optimizer)
    wrapped = wrap(_loader(), 16, 32, device="cpu", scheduler=scheduler)
    assert len([optimizer.step() for _ in wrapped]) == BATCHES
    scheduler.step()  # the original loop's epoch step
    with pytest.raises(RuntimeError, match=r"the CosineAnnealingWarmbootingLR was stepped outside the loader"):
        next(iter(wrapped))


def test_extra_calls_to_a_counter_driven_scheduler_change_nothing_and_pass():
    optimizer = _optimizer()
    wrapped = wrap(_loader(), 16, 32, device="cpu")
    scheduler = CosineAnnealingWarmbootingLR(
        optimizer, epochs=EPOCHS, batchs=BATCHES, warmup_epoch=1, counter=wrapped.counter
    )
    wrapped = wrap(_loader(), 16, 32, device="cpu", scheduler=scheduler)
    for _ in range(2):
        for _ in wrapped:
            scheduler.step_batch()  # idempotent: the counter sets the lr
    assert wrapped.counter.epoch == 2


def test_loading_a_state_is_not_a_stray_step():
    optimizer = _optimizer()
    wrapped = wrap(_loader(), 16, 32, device="cpu", scheduler=SCHEDULERS["LambdaLR"](optimizer))
    for _ in wrapped:
        pass
    state = wrapped.state_dict()
    for _ in wrapped:
        pass
    wrapped.load_state_dict(state)
    assert len(list(wrapped)) == BATCHES
