"""`tp logs` prints each record's time; a wall time no clock shows (stored before the backend checked the range)
prints as `--:--:--` instead of ending the command with a traceback."""

from __future__ import annotations

import math
import time

import pytest
from trainingplatform_sdk.cli.output import clock


def test_a_wall_time_prints_as_the_local_clock() -> None:
    now = time.time()
    assert clock(now) == time.strftime("%H:%M:%S", time.localtime(now))


@pytest.mark.parametrize("wall_time", [1e300, -1e30, math.nan, math.inf])
def test_a_wall_time_no_clock_shows_prints_as_dashes(wall_time: float) -> None:
    assert clock(wall_time) == "--:--:--"
