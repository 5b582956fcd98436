"""Small argument checks shared by every public constructor.

Each check raises ``TypeError`` for a wrong type and ``ValueError`` for a wrong value, and the message
names the argument, shows the bad value and says what is expected.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) no smaller than ``minimum``.

    Args:
        name: The argument's name, for the message.
        value: The value to check.
        minimum: The smallest allowed value, or ``None`` for no bound.

    Returns:
        The value as a plain Python ``int`` (NumPy and 0-d integer tensors are accepted).

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value`` is smaller than ``minimum``.
    """
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    result = int(value.__index__())
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {result!r}")
    return result


def check_float(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """Return ``value`` as a finite ``float`` inside ``[minimum, maximum]``.

    Args:
        name: The argument's name, for the message.
        value: The value to check: any real number but a ``bool``.
        minimum: The smallest allowed value, or ``None``.
        maximum: The largest allowed value, or ``None``.

    Returns:
        The value as a plain Python ``float``.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is not finite or lies outside the bounds.
    """
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r} of type {type(value).__name__}") from None
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and result > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return result


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``.

    Raises:
        ValueError: ``value`` is not one of ``choices``.
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return str(value)


def check_size(name: str, value: Any) -> tuple[int, int]:
    """Return ``value`` as ``(height, width)``: an int ``s`` means ``(s, s)``.

    Raises:
        TypeError: a side is not an int.
        ValueError: not an int or a pair, or a side below 1.
    """
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int and min(value) > 0:
        return value  # the hot path: sizes from a policy or an earlier check
    pair = tuple(value) if isinstance(value, (tuple, list, torch.Size)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    return (check_int(name, pair[0], minimum=1), check_int(name, pair[1], minimum=1))


def check_range(name: str, value: Any) -> tuple[float, float] | None:
    """Return ``value`` as a ``(low, high)`` pair of finite floats with ``low < high``, or ``None``.

    Raises:
        ValueError: not a pair, not finite, or ``low >= high``.
    """
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a (low, high) pair such as (0, 1), got {value!r}")
    low, high = check_float(f"{name}[0]", value[0]), check_float(f"{name}[1]", value[1])
    if low >= high:
        raise ValueError(f"{name} must have low < high, got {value!r}")
    return (low, high)


def check_dtype(name: str, value: Any, choices: tuple[torch.dtype, ...]) -> torch.dtype | None:
    """Return ``value`` if it is one of ``choices`` or ``None``.

    Raises:
        TypeError: any other value.
    """
    if value is not None and value not in choices:
        raise TypeError(f"{name} must be one of {choices} or None, got {value!r}")
    return value  # type: ignore[no-any-return]


def check_loader(loader: Any) -> None:
    """Check that ``loader`` is iterable.

    Raises:
        TypeError: ``loader`` has no ``__iter__``.
    """
    if not hasattr(loader, "__iter__"):
        raise TypeError(f"loader must be an iterable of batches (a DataLoader), got {type(loader).__name__}")


def check_device(device: Any, *, types: tuple[str, ...] | None = None) -> torch.device:
    """Return ``device`` as a ``torch.device``; ``None`` means CUDA when available, else CPU.

    Args:
        device: A device or its name (``"cuda"``, ``"cuda:1"``, ``"cpu"``), or ``None``.
        types: The device types allowed, or ``None`` for any.

    Raises:
        ValueError: not a device, a type outside ``types``, or CUDA asked for where there is none.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cuda' or 'cpu', got {device!r}") from None
    if types is not None and resolved.type not in types:
        raise ValueError(f"device must be a {' or '.join(types)} device, got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but CUDA is not available; use device='cpu'")
    return resolved


def check_state_keys(owner: str, state: Any, keys: tuple[str, ...]) -> None:
    """Check that a state dict given to ``owner.load_state_dict`` holds exactly ``keys``.

    Raises:
        TypeError: ``state`` is not a dict.
        ValueError: keys are missing or unexpected.
    """
    if not isinstance(state, dict):
        raise TypeError(f"{owner}.load_state_dict expects a dict, got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    unexpected = [k for k in state if k not in keys]
    if missing or unexpected:
        raise ValueError(
            f"{owner}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}; "
            f"pass the dict that {owner}.state_dict() returned"
        )
