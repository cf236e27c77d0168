"""What the garbage collector sees while a piece of code runs: the young objects it finds at each collection."""

from __future__ import annotations

import collections
import gc
from collections.abc import Callable
from typing import Any


def young_objects_seen(function: Callable[[], Any], threshold: int = 50) -> collections.Counter[str]:
    """Runs `function` with a collection every `threshold` tracked allocations and counts, by type, the objects the
    youngest generation held at each collection. Code that allocates a tracked object per point (and keeps it
    alive for a while, as `zip(*rows)` keeps an iterator per row) shows thousands; code that works on whole columns,
    a handful."""
    seen: collections.Counter[str] = collections.Counter()

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.update(type(obj).__name__ for obj in gc.get_objects(generation=0))

    previous = gc.get_threshold()
    gc.collect()
    gc.set_threshold(threshold, *previous[1:])
    gc.callbacks.append(callback)
    try:
        function()
    finally:
        gc.callbacks.remove(callback)
        gc.set_threshold(*previous)
    return seen
