"""The queue behind `update_status`, `log_epoch_summary`, `report_run_info` and `flush`.

Each entry waits behind barriers: the highest sequence of each stream assigned when it was made. A unary call is
made, and a flush finished, only once every point up to its barriers is committed, and only in the order they came,
so a status never overtakes the metrics logged before it.
"""

from __future__ import annotations

import base64
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from trainingplatform.telemetry.v1 import telemetry_pb2

from trainingplatform_sdk.telemetry.sender.outbox import AnyOutbox

CALL_REQUESTS: dict[str, type[Message]] = {
    "UpdateStatus": telemetry_pb2.UpdateStatusRequest,
    "RecordEpochSummary": telemetry_pb2.RecordEpochSummaryRequest,
    "ReportRunInfo": telemetry_pb2.ReportRunInfoRequest,
}
"""The unary methods a logger calls, with their request types (to read calls back from the spool state)."""

SavedCall = dict[str, str | int]
"""A call as the spool state keeps it: method, request (base64), metric_barrier, log_barrier."""


class FlushWaiter:
    """The caller's side of a flush: set when everything logged before it is committed (or when it can no longer be)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result = False

    def finish(self, result: bool) -> None:
        self.result = result
        self.event.set()


@dataclass
class PendingCall:
    """A unary call waiting for every point logged before it to be committed."""

    method: str
    request: Message
    barriers: dict[str, int]
    """The highest sequence of each stream (by outbox name) that must be committed before the call is made."""


@dataclass
class PendingFlush:
    """A flush waiting for every point logged before it to be committed."""

    waiter: FlushWaiter
    barriers: dict[str, int]


class CallQueue:
    """Calls and flushes in the order they were made; only the sender thread changes it."""

    def __init__(self, outboxes: Sequence[AnyOutbox]) -> None:
        self._outboxes = outboxes
        self._entries: deque[PendingCall | PendingFlush] = deque()
        #: Whether the head waits for the committed cursor (so the cursor is asked more often than once per tick).
        self.waiting = False
        self.delivered = 0
        self.failed = 0
        #: Whether a call was refused for good since the last flush finished (the next flush then says False).
        self._refused_since_flush = False

    def __len__(self) -> int:
        return len(self._entries)

    def add_call(self, method: str, request: Message) -> None:
        """Queues a call behind every point numbered so far."""
        self._entries.append(PendingCall(method, request, self._barriers()))

    def add_flush(self, waiter: FlushWaiter) -> None:
        """Queues a flush behind every point numbered so far."""
        self._entries.append(PendingFlush(waiter, self._barriers()))

    def _barriers(self) -> dict[str, int]:
        return {outbox.name: outbox.assigned for outbox in self._outboxes}

    # -- persistence -----------------------------------------------------------------------------------------------

    def load(self, saved_calls: Iterable[Mapping[str, Any]]) -> None:
        """Queues the calls an earlier process left in the spool state (those of an unknown method are skipped)."""
        for saved in saved_calls:
            request_type = CALL_REQUESTS.get(saved.get("method", ""))
            if request_type is None:
                continue
            request = request_type.FromString(base64.b64decode(saved["request"]))
            barriers = {"metrics": int(saved["metric_barrier"]), "logs": int(saved["log_barrier"])}
            self._entries.append(PendingCall(saved["method"], request, barriers))

    def saved(self) -> list[SavedCall]:
        """The calls not yet made, as the spool state keeps them."""
        return [
            {
                "method": call.method,
                "request": base64.b64encode(call.request.SerializeToString()).decode("ascii"),
                "metric_barrier": call.barriers["metrics"],
                "log_barrier": call.barriers["logs"],
            }
            for call in self._entries
            if isinstance(call, PendingCall)
        ]

    def shift_barriers(self, stream: str, base: int, shift: int) -> None:
        """Moves the barriers of `stream` above `base` up by `shift` (the stream's numbering moved)."""
        for entry in self._entries:
            if entry.barriers[stream] > base:
                entry.barriers[stream] += shift

    # -- state -------------------------------------------------------------------------------------------------------

    def count_calls(self) -> int:
        """Calls not yet made (flushes left out); safe from any thread."""
        return sum(1 for entry in list(self._entries) if isinstance(entry, PendingCall))

    def only_flushes(self) -> bool:
        """Whether every call is made (flushes may still wait)."""
        return all(isinstance(entry, PendingFlush) for entry in self._entries)

    def finish_flushes(self, result: bool) -> None:
        """Finishes every waiting flush with `result` (they stay queued)."""
        for entry in self._entries:
            if isinstance(entry, PendingFlush):
                entry.waiter.finish(result)

    # -- delivery ----------------------------------------------------------------------------------------------------

    def release_flushes(self) -> None:
        """Finishes the flushes at the head of the queue whose points are all committed (no network).

        A flush succeeds unless points were dropped, or a call made since the flush before it was refused for good
        (each refusal fails one flush: the first that follows it).
        """
        entries = self._entries
        while entries:
            head = entries[0]
            if not isinstance(head, PendingFlush) or not self._passed(head):
                return
            entries.popleft()
            refused, self._refused_since_flush = self._refused_since_flush, False
            head.waiter.finish(not refused and all(outbox.dropped == 0 for outbox in self._outboxes))

    def next_call(self) -> PendingCall | None:
        """The call at the head once its barriers are passed, after releasing the flushes ahead of it.

        None when the queue is empty or its head must wait (then `waiting` is set).
        """
        if not self._entries:
            return None
        self.release_flushes()
        if not self._entries:
            return None
        head = self._entries[0]
        if isinstance(head, PendingFlush) or not self._passed(head):
            self.waiting = True
            return None
        return head

    def pop(self) -> None:
        """Removes the call at the head: made."""
        self._entries.popleft()
        self.delivered += 1

    def refuse(self) -> None:
        """Removes the call at the head: refused for good; the next flush says False."""
        self._entries.popleft()
        self.failed += 1
        self._refused_since_flush = True

    def _passed(self, entry: PendingCall | PendingFlush) -> bool:
        for outbox in self._outboxes:
            lowest = outbox.lowest()
            if lowest is not None and lowest <= entry.barriers[outbox.name]:
                return False
        return True
