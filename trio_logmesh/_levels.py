"""Python logging levels as the driver gives them (a number or a name) and children take them."""

from __future__ import annotations

import logging


def level_number(level: int | str) -> int:
    """``logging.INFO``, ``20``, ``"info"`` or ``"INFO"`` as the number ``20``.

    Raises ``TypeError`` for anything but an int or a str (a bool included) and ``ValueError``
    for an unknown level name.
    """
    if isinstance(level, bool):
        raise TypeError("level must be a logging level (int or name), not a bool")
    if isinstance(level, int):
        return level
    if isinstance(level, str):
        if level.strip().lstrip("-").isdigit():
            return int(level)
        number = logging.getLevelName(level.strip().upper())
        if isinstance(number, int):
            return number
        raise ValueError(f"unknown logging level name {level!r}")
    raise TypeError(f"level must be a logging level (int or name), not {type(level).__name__}")
