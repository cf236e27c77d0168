"""The caller's buffer: the tuples TrainingLogger appends on the caller's thread and the sender takes out.

A tuple, not an object, because appending one is all that logging a point costs the caller; its first element is
a tag that says what it holds. Nothing is checked on the caller's thread.
"""

from __future__ import annotations

from typing import Final, Literal

from google.protobuf.message import Message

from trainingplatform_sdk.telemetry.sender.calls import FlushWaiter

METRIC: Final = 0
LOG: Final = 1
CALL: Final = 2
FLUSH: Final = 3

MetricItem = tuple[Literal[0], str, float | None, int | None, int | None, float]
"""(METRIC, key, value or None when it was not a number, step, epoch, wall time)."""

LogItem = tuple[Literal[1], str, int, int | None, int | None, float]
"""(LOG, message, level, epoch, step, wall time)."""

CallItem = tuple[Literal[2], str, Message]
"""(CALL, method, request) of a unary call."""

FlushItem = tuple[Literal[3], FlushWaiter]
"""(FLUSH, waiter) of a flush."""

BufferItem = MetricItem | LogItem | CallItem | FlushItem
