"""Fixtures of the reliability suite: a seeded random generator per test, and loggers closed at teardown."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator

import pytest
from trainingplatform_sdk import TrainingLogger


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A random generator seeded from TP_RELIABILITY_SEED, else from the system; the seed is printed (pytest shows
    it with a failure) so a failing run can be replayed."""
    seed = int(os.environ.get("TP_RELIABILITY_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{request.node.nodeid}: seed {seed} (replay with TP_RELIABILITY_SEED={seed})")
    return random.Random(seed)


@pytest.fixture
def open_logger() -> Iterator[Callable[..., TrainingLogger]]:
    """`TrainingLogger(...)`, closed at teardown: a test that fails before closing its loggers must not leave
    their sender threads retrying into the next tests. Closing twice returns the first close's report."""
    loggers: list[TrainingLogger] = []

    def open_logger(*args: object, **kwargs: object) -> TrainingLogger:
        logger = TrainingLogger(*args, **kwargs)  # type: ignore[arg-type]
        loggers.append(logger)
        return logger

    yield open_logger
    for logger in loggers:
        logger.close(5)
