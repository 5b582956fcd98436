"""Shared fixtures: devices, the CUDA skip, and the state round-trip check."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import torch

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA is not available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


def assert_round_trip(make: Callable[[], Any], run: Callable[[Any, int], list[Any]], before: int, after: int) -> None:
    """Save a component after ``before`` steps, load it into a fresh one, and compare the next ``after``.

    The state must be plain Python (JSON-serialisable) and the restored component must continue
    exactly as the original does.
    """
    original = make()
    run(original, before)
    state = original.state_dict()
    json.dumps(state)  # plain Python scalars only
    saved = copy.deepcopy(state)
    expected = run(original, after)
    restored = make()
    restored.load_state_dict(saved)
    assert run(restored, after) == expected
