"""The sender's part of the spool state: each stream's numbering and the calls not yet made, and when to save it."""

from __future__ import annotations

import logging
import time

from trainingplatform_sdk.telemetry.sender.calls import CallQueue
from trainingplatform_sdk.telemetry.sender.codec import BufferedLog, BufferedMetric
from trainingplatform_sdk.telemetry.sender.outbox import AnyOutbox, Outbox
from trainingplatform_sdk.telemetry.spool import Spool

_LOG = logging.getLogger("trainingplatform_sdk.logger")

SEQUENCE_BLOCK = 10_000
"""Sequences reserved at a time per stream: one durable (fsync-ed) save of the state per block."""

SAVE_INTERVAL_S = 0.25
"""Longest time a change of the numbering or of the cursor waits before it is saved (`save_if_due`)."""


class SavedState:
    """Writes the numbering and the pending calls into the spool state.

    Saved as `{"metrics": {"assigned", "reserved", "committed"}, "logs": {...}, "calls": [...]}` next to what the
    spool keeps there itself. `dirty` says that something changed since the last save that succeeded.

    Sequences are reserved in blocks of SEQUENCE_BLOCK: before a point numbered past the reserved block leaves
    memory, the block is moved past it and the state is saved durably (fsync); other saves are not synced. A
    restart numbers after the reserved block, so a crash, even a power loss, never makes a sequence reused (it
    leaves a gap, which the backend accepts). A clean `release` ends the block at the last sequence assigned.

    A change of the calls (`urgent`) or a new block is saved at once; a sequence assigned inside the block or a
    cursor that moved is saved within SAVE_INTERVAL_S (`save_if_due`): losing it to a crash costs nothing (the
    restart numbers after the block, and resends what the backend then says it lacks), and saving it per message
    cost more CPU than the message.
    """

    def __init__(
        self,
        job_id: str,
        spool: Spool,
        metrics: Outbox[BufferedMetric],
        logs: Outbox[BufferedLog],
        calls: CallQueue,
    ) -> None:
        self.job_id = job_id
        self.dirty = False
        #: Set with `dirty` when the pending calls changed: saved at the next `save_if_due`, whatever the interval.
        self.urgent = False
        self._saved_at = 0.0
        self._failing = False
        self._spool = spool
        self._metrics = metrics
        self._logs = logs
        self._calls = calls

    def reserve(self) -> None:
        """Makes sure every sequence assigned is in a reserved block, saving durably when it was not."""
        if self._metrics.assigned > self._metrics.reserved or self._logs.assigned > self._logs.reserved:
            self.save()

    def save_if_due(self) -> None:
        """Saves a dirty state when the calls changed, a new block must be reserved, or SAVE_INTERVAL_S passed."""
        if not self.dirty:
            return
        if (
            self.urgent
            or self._metrics.assigned > self._metrics.reserved
            or self._logs.assigned > self._logs.reserved
            or time.monotonic() - self._saved_at >= SAVE_INTERVAL_S
        ):
            self.save()

    def release(self) -> None:
        """Ends the reserved blocks at the last sequences assigned (the sender stops), saved durably."""
        for outbox in (self._metrics, self._logs):
            outbox.reserved = outbox.assigned
        self._write(durable=True)

    def save(self, durable: bool = False) -> None:
        """Writes the state now (durably when asked or when a new block of sequences is reserved); a failure is
        logged and leaves it dirty."""
        outboxes: tuple[AnyOutbox, ...] = (self._metrics, self._logs)
        reserved = [outbox.reserved for outbox in outboxes]
        for outbox in outboxes:
            if outbox.assigned > outbox.reserved:
                outbox.reserved = outbox.assigned + SEQUENCE_BLOCK
                durable = True
        if not self._write(durable) and durable:
            # Not reserved after all: the next save tries again.
            for outbox, before in zip(outboxes, reserved, strict=True):
                outbox.reserved = before

    def save_at_start(self) -> None:
        """Saves the state as taken up from the spool, durably, before anything is numbered.

        A spool whose state cannot be written must not be used: its points would be spooled under a numbering the
        next logger cannot tell from a checked one (it would send them as they are, and the backend drop them as
        duplicates of what it holds), and its calls kept nowhere.

        Raises:
            OSError: The state cannot be written (permission denied, a read-only file or file system...).
        """
        self._store(durable=True)
        self.dirty = False

    def _store(self, durable: bool) -> None:
        self._spool.state.update(
            {
                self._metrics.name: self._metrics.state(),
                self._logs.name: self._logs.state(),
                "calls": self._calls.saved(),
            }
        )
        self._spool.save_state(durable)

    def _write(self, durable: bool) -> bool:
        try:
            self._store(durable)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                _LOG.error("job %s: cannot write the spool state (%s); logged once until it can", self.job_id, exc)
            return False
        if self._failing:
            self._failing = False
            _LOG.warning("job %s: the spool state can be written again", self.job_id)
        self.dirty = False
        self.urgent = False
        self._saved_at = time.monotonic()
        return True
