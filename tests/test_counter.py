import pytest

from fastresize import StepCounter
from tests.conftest import assert_round_trip


def test_fresh_counter_starts_at_epoch_to_start():
    counter = StepCounter(steps_per_epoch=4, epoch_to_start=3)
    assert (counter.epoch, counter.batch) == (3, 0)
    assert counter.global_step == 0
    assert counter.absolute_step == 12


def test_steps_follow_the_original_formula_and_roll_over():
    counter = StepCounter(steps_per_epoch=3, epoch_to_start=2)
    seen = []
    for _ in range(7):
        seen.append((counter.epoch, counter.batch, counter.global_step, counter.absolute_step))
        counter.advance()
    for epoch, batch, global_step, absolute_step in seen:
        assert global_step == (epoch - 2) * 3 + batch
        assert absolute_step == epoch * 3 + batch
    assert [(e, b) for e, b, _, _ in seen] == [(2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2), (4, 0)]
    assert [g for _, _, g, _ in seen] == list(range(7))


def test_one_batch_per_epoch():
    counter = StepCounter(steps_per_epoch=1)
    counter.advance()
    counter.advance()
    assert (counter.epoch, counter.batch, counter.global_step) == (2, 0, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps_per_epoch": 0}, ValueError, r"steps_per_epoch must be an int >= 1, got 0"),
        ({"steps_per_epoch": 2.5}, TypeError, r"steps_per_epoch must be an int, got 2.5"),
        ({"steps_per_epoch": True}, TypeError, r"steps_per_epoch must be an int, got True"),
        ({"steps_per_epoch": "8"}, TypeError, r"steps_per_epoch must be an int, got '8'"),
        ({"steps_per_epoch": 4, "epoch_to_start": -1}, ValueError, r"epoch_to_start must be an int >= 0, got -1"),
        ({"steps_per_epoch": 4, "epoch_to_start": 1.0}, TypeError, r"epoch_to_start must be an int"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        StepCounter(**kwargs)


def _run(counter, n):
    seen = []
    for _ in range(n):
        seen.append((counter.epoch, counter.batch, counter.absolute_step))
        counter.advance()
    return seen


def test_state_round_trip_continues_identically():
    assert_round_trip(lambda: StepCounter(5), _run, before=7, after=12)


@pytest.mark.parametrize(("steps_per_epoch", "taken"), [(4, 8), (20, 10)], ids=["epoch-end", "mid-epoch"])
def test_loading_starts_a_new_run(steps_per_epoch, taken):
    counter = StepCounter(steps_per_epoch)
    for _ in range(taken):
        counter.advance()
    resumed = StepCounter(steps_per_epoch)
    resumed.load_state_dict(counter.state_dict())
    assert (resumed.epoch_to_start, resumed.batch_to_start) == divmod(taken, steps_per_epoch)
    seen = []
    for _ in range(steps_per_epoch + 2):
        seen.append((resumed.global_step, resumed.absolute_step))
        resumed.advance()
    # This process's steps count from 0 at the loaded position (max-size-first runs again), across
    # the epoch boundary; the absolute steps continue.
    assert seen == [(step, taken + step) for step in range(steps_per_epoch + 2)]


@pytest.mark.parametrize(
    ("state", "error", "match"),
    [
        ({"steps_per_epoch": 4, "epoch": 1}, ValueError, r"missing keys \['batch'\]"),
        ({"steps_per_epoch": 5, "epoch": 1, "batch": 0}, ValueError, r"state\['steps_per_epoch'\] is 5"),
        ({"steps_per_epoch": 4, "epoch": 1, "batch": 4}, ValueError, r"state\['batch'\] must be < "),
        ({"steps_per_epoch": 4, "epoch": -2, "batch": 0}, ValueError, r"state\['epoch'\] must be an int >= 0"),
        ([1, 2], TypeError, r"expects a dict, got list"),
    ],
)
def test_bad_state(state, error, match):
    counter = StepCounter(4)
    with pytest.raises(error, match=match):
        counter.load_state_dict(state)
    # Nothing half-loaded:
    assert (counter.epoch, counter.batch, counter.epoch_to_start, counter.batch_to_start) == (0, 0, 0, 0)
