"""Constructor-argument checks of the layers: clear errors naming the argument."""

from __future__ import annotations

import numpy as np

from selfy_tf.ops import DEFAULT_WINDOW


def check_positive_int(name: str, value: object) -> int:
    """Returns `value` as an int, or raises a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}."
        )
    return int(value)


def check_bool(name: str, value: object) -> bool:
    """Returns `value` as a bool, or raises a ValueError naming `name`."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}.")
    return bool(value)


def check_channels(name: str, value: object, length: int) -> tuple[int, ...]:
    """Returns `value` as a tuple of `length` positive ints, or raises."""
    try:
        channels = tuple(value)
    except TypeError:
        channels = ()
    if len(channels) != length or not all(
        isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c > 0
        for c in channels
    ):
        raise ValueError(
            f"`{name}` must be {length} positive integers. Received: {name}={value!r}."
        )
    return tuple(int(c) for c in channels)


def check_window(value: object) -> tuple[int, int, int]:
    """Returns the STSS window `(L, U, V)` as ints, or raises a ValueError."""
    try:
        window = tuple(value)
    except TypeError:
        window = ()
    if len(window) != 3 or not all(
        isinstance(size, (int, np.integer)) and not isinstance(size, bool)
        and size > 0 and size % 2 == 1
        for size in window
    ):
        raise ValueError(
            "`window` must be three odd integers (L, U, V). "
            f"Received: window={value!r}. Try window={DEFAULT_WINDOW}."
        )
    return tuple(int(size) for size in window)
