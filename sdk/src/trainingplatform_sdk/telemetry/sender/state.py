"""The sender's part of the spool state: each stream's numbering and the calls not yet made, and when to save it."""

from __future__ import annotations

import logging

from trainingplatform_sdk.telemetry.sender.calls import CallQueue
from trainingplatform_sdk.telemetry.sender.codec import BufferedLog, BufferedMetric
from trainingplatform_sdk.telemetry.sender.outbox import Outbox
from trainingplatform_sdk.telemetry.spool import Spool

_LOG = logging.getLogger("trainingplatform_sdk.logger")


class SavedState:
    """Writes the numbering and the pending calls into the spool state.

    Saved as `{"metrics": {"assigned", "committed"}, "logs": {...}, "calls": [...]}` next to what the spool keeps
    there itself. `dirty` says that something changed since the last save that succeeded.
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
        self._spool = spool
        self._metrics = metrics
        self._logs = logs
        self._calls = calls

    def save(self) -> None:
        """Writes the state now; a failure is logged and leaves it dirty."""
        self._spool.state.update(
            {
                self._metrics.name: self._metrics.state(),
                self._logs.name: self._logs.state(),
                "calls": self._calls.saved(),
            }
        )
        try:
            self._spool.save_state()
            self.dirty = False
        except OSError as exc:
            _LOG.error("job %s: cannot write the spool state (%s)", self.job_id, exc)
