"""argparse types shared by `tp`'s commands: a value refused here is a usage error (exit 2) naming its flag."""

from __future__ import annotations

import argparse
from collections.abc import Callable

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
"""The range of the protos' int32 fields: a value outside it cannot even be sent (protobuf's 'Value out of range')."""


def in_range(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from `minimum` to `maximum` (None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {number}")
        return number

    return parse


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer not below `minimum`."""
    return in_range(minimum)
