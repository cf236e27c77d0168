"""The checks of what the caller logged, made before a point is numbered: key, value, step and epoch.

Pure: no I/O and no gRPC. A refused point raises `InvalidPoint` with the problem in words, the same words for the
same kind of problem, so that the sender can count it and log each kind once.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from trainingplatform_sdk.spec.limits import MAX_EPOCH, MAX_KEY_CHARS, MAX_STEP
from trainingplatform_sdk.telemetry.sender.buffer import LogItem, MetricItem
from trainingplatform_sdk.telemetry.values import utf8_text

_OUT_OF_RANGE = f"step must be between 0 and 2**53 - 1, epoch between 0 and {MAX_EPOCH}"
"""The backend's bounds (MAX_STEP, MAX_EPOCH): a point past them would make it refuse the whole stream."""

KNOWN_KEYS_LIMIT = 10_000
"""Most keys remembered as valid (each is checked once); past it the memory starts again, empty."""

_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f]")

ValidMetric = tuple[str, float, int | None, int | None, float]
"""A metric point that passed the checks: (key, value, step, epoch, wall time)."""

ValidLog = tuple[str, int, int | None, int | None, float]
"""A log record that passed the checks: (message, level, epoch, step, wall time)."""


class InvalidPoint(ValueError):
    """A point or record refused before sending; its message says why."""


def valid_key(key: object) -> TypeGuard[str]:
    """Whether `key` is a metric key: 1 to MAX_KEY_CHARS characters, no control characters, encodable as UTF-8."""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_CHARS or _CONTROL_CHARS.search(key):
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def position(step: int | None, epoch: int | None) -> tuple[int | None, int | None]:
    """(step, epoch) as ints within the backend's bounds: step 0 to MAX_STEP (2**53 - 1), epoch 0 to MAX_EPOCH.

    Raises:
        InvalidPoint: One is not an integer or out of range.
    """
    # The common case first, without a call or a generator: plain ints in range, or None. (`type() is int` leaves
    # bools and numpy integers to the general path below, which converts them.)
    if (step is None or (type(step) is int and 0 <= step <= MAX_STEP)) and (
        epoch is None or (type(epoch) is int and 0 <= epoch <= MAX_EPOCH)
    ):
        return step, epoch
    try:
        step = None if step is None else int(step)
        epoch = None if epoch is None else int(epoch)
    except Exception:  # int() runs the caller's code: TypeError, ValueError, OverflowError (infinity), any other
        raise InvalidPoint("step and epoch must be integers") from None
    if (step is not None and not 0 <= step <= MAX_STEP) or (epoch is not None and not 0 <= epoch <= MAX_EPOCH):
        raise InvalidPoint(_OUT_OF_RANGE)
    return step, epoch


def _unchecked(exc: Exception) -> InvalidPoint:
    """The refusal of a point whose check raised something else than InvalidPoint: a caller's value behaving
    oddly (a `str` subclass whose methods raise...) is counted invalid, and never stops the sender."""
    return InvalidPoint(f"a field could not be checked ({type(exc).__name__})")


class Validator:
    """Checks metric points and log records; remembers the keys it has seen valid.

    Its checks raise nothing but InvalidPoint, whatever the caller logged: the sender counts the point invalid and
    goes on.
    """

    def __init__(self) -> None:
        self._known_keys: set[str] = set()

    def metric(self, item: MetricItem) -> ValidMetric:
        """The checked fields of a metric point.

        Raises:
            InvalidPoint: The key, the value, the step or the epoch is not acceptable.
        """
        _, key, value, step, epoch, wall = item
        try:
            if type(key) is not str or key not in self._known_keys:
                if not valid_key(key):
                    raise InvalidPoint(f"a key must be 1 to {MAX_KEY_CHARS} characters, no control characters")
                if len(self._known_keys) >= KNOWN_KEYS_LIMIT:
                    self._known_keys.clear()
                self._known_keys.add(key)
            if value is None:
                raise InvalidPoint(f"the value of {key!r} is not a number")
            step, epoch = position(step, epoch)
        except InvalidPoint:
            raise
        except Exception as exc:
            raise _unchecked(exc) from None
        return key, value, step, epoch, wall

    @staticmethod
    def log(item: LogItem) -> ValidLog:
        """The checked fields of a log record; text that UTF-8 cannot encode is replaced.

        Raises:
            InvalidPoint: The step or the epoch is not acceptable.
        """
        _, message, level, epoch, step, wall = item
        try:
            step, epoch = position(step, epoch)
            # Lone surrogates cannot be encoded as UTF-8 and would make the whole batch unbuildable.
            message = utf8_text(message)
        except InvalidPoint:
            raise
        except Exception as exc:
            raise _unchecked(exc) from None
        return message, level, epoch, step, wall
