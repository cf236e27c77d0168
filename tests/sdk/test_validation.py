"""The checks the sender makes before it numbers a point: the same answer on the fast path (plain ints) and on the
general one (bools, numpy integers, floats, text)."""

from __future__ import annotations

import decimal
import math
import re

import numpy as np
import pytest
from trainingplatform_sdk.spec.limits import MAX_EPOCH, MAX_STEP
from trainingplatform_sdk.telemetry.sender.validation import InvalidPoint, Validator, position


@pytest.mark.parametrize(
    ("step", "epoch", "expected"),
    [
        (None, None, (None, None)),
        (0, None, (0, None)),
        (None, 0, (None, 0)),
        (MAX_STEP, MAX_EPOCH, (MAX_STEP, MAX_EPOCH)),
        (True, False, (1, 0)),
        (np.int64(7), np.int32(2), (7, 2)),
        (3.9, None, (3, None)),
        ("12", None, (12, None)),
    ],
)
def test_a_step_and_epoch_in_range_are_kept_as_ints(step: object, epoch: object, expected: tuple) -> None:
    result = position(step, epoch)  # type: ignore[arg-type]
    assert result == expected
    assert all(value is None or type(value) is int for value in result)


RANGE = "step must be between 0 and 2**53 - 1, epoch between 0 and 999999999"


@pytest.mark.parametrize(
    ("step", "epoch", "problem"),
    [
        (-1, None, RANGE),
        (None, -1, RANGE),
        # The backend's bounds: a point past them used to be sent, and the backend refused its whole stream.
        (MAX_STEP + 1, None, RANGE),
        (0, MAX_EPOCH + 1, RANGE),
        (2**63, None, RANGE),
        (np.int64(-5), None, RANGE),
        ("x", None, "must be integers"),
        (None, [1], "must be integers"),
        (float("nan"), None, "must be integers"),
        # int() of an infinity raises OverflowError: it used to escape and stop the sender thread.
        (math.inf, None, "must be integers"),
        (-math.inf, None, "must be integers"),
        (None, math.inf, "must be integers"),
        (None, -math.inf, "must be integers"),
        (np.inf, None, "must be integers"),
        (np.float64(-np.inf), None, "must be integers"),
        (decimal.Decimal("Infinity"), None, "must be integers"),
    ],
)
def test_a_step_or_epoch_out_of_range_or_not_an_integer_is_refused(step: object, epoch: object, problem: str) -> None:
    with pytest.raises(InvalidPoint, match=re.escape(problem)):
        position(step, epoch)  # type: ignore[arg-type]


def test_a_metric_point_is_checked_field_by_field() -> None:
    validator = Validator()
    assert validator.metric((0, "train/loss", 0.5, 3, 1, 10.0)) == ("train/loss", 0.5, 3, 1, 10.0)
    assert validator.metric((0, "train/loss", 0.25, None, None, 11.0)) == ("train/loss", 0.25, None, None, 11.0)
    with pytest.raises(InvalidPoint, match="not a number"):
        validator.metric((0, "train/loss", None, 3, 1, 12.0))
    with pytest.raises(InvalidPoint, match="1 to"):
        validator.metric((0, "", 0.5, 3, 1, 12.0))
    with pytest.raises(InvalidPoint, match="between 0"):
        validator.metric((0, "train/loss", 0.5, -3, 1, 12.0))


class OddKey(str):
    """A key whose hash raises: a caller's object behaving oddly inside a check."""

    def __hash__(self) -> int:
        raise RuntimeError("no hash today")


class OddMessage(str):
    def isascii(self) -> bool:
        raise RuntimeError("no answer today")


def test_a_check_that_raises_anything_else_refuses_the_point() -> None:
    # The sender catches InvalidPoint only: anything else escaping a check would stop its thread.
    validator = Validator()
    with pytest.raises(InvalidPoint, match=r"could not be checked \(RuntimeError\)"):
        validator.metric((0, OddKey("train/loss"), 0.5, 3, 1, 10.0))
    with pytest.raises(InvalidPoint, match="must be integers"):
        validator.metric((0, "train/loss", 0.5, math.inf, 1, 10.0))
    with pytest.raises(InvalidPoint, match="must be integers"):
        validator.log((0, "a line", 2, -math.inf, None, 10.0))
    with pytest.raises(InvalidPoint, match=r"could not be checked \(RuntimeError\)"):
        validator.log((0, OddMessage("a line"), 2, None, None, 10.0))
    assert validator.metric((0, "train/loss", 0.5, 3, 1, 10.0)) == ("train/loss", 0.5, 3, 1, 10.0)
