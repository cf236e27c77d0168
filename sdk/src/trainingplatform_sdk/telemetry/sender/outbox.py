"""The outbox of one stream: its numbering and its uncommitted points, on disk then in memory."""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from typing import Generic

from google.protobuf.message import DecodeError
from trainingplatform.telemetry.v1 import telemetry_pb2

from trainingplatform_sdk.telemetry.sender.codec import BufferedLog, BufferedMetric, Codec, Point
from trainingplatform_sdk.telemetry.sender.connection import OpenStream
from trainingplatform_sdk.telemetry.spool import Spool, SpoolRecord

_LOG = logging.getLogger("trainingplatform_sdk.logger")

SPOOL_RETRY_S = 1.0
"""After a spool write failed (disk full, read-only...), how long the points wait in memory before the next try."""


class Outbox(Generic[Point]):
    """The uncommitted points of one stream: in the spool (lower sequences), then in memory (higher).

    Sequences: `assigned` is the highest ever given to a point, `reserved` the end of the block of sequences
    reserved in the spool state (fsync-ed before any point numbered in it leaves memory, so a restart, even after
    a power loss, numbers after it), `committed` the highest the backend is known to hold, `sent` the highest
    handed to the current stream. A point is forgotten only when the committed cursor has passed it, or dropped
    (counted) when neither the spool nor memory (`memory_limit` points) can keep it.
    """

    def __init__(self, codec: Codec[Point], spool: Spool) -> None:
        """Takes up the numbering and the cursor an earlier process left in the spool state."""
        self.codec: Codec[Point] = codec
        self.name = codec.name
        self._spool = spool
        saved = spool.state.get(self.name, {})
        # A restart numbers after the block reserved last, so a state saved (unsynced) later but lost to a crash
        # cannot make it reuse a sequence; after a clean close the block ends at the last sequence assigned.
        self.assigned = max(
            int(saved.get("assigned", 0)), int(saved.get("reserved", 0)), spool.highest_sequence(self.name)
        )
        self.reserved = self.assigned
        #: Whether the numbering was checked against the backend's cursor (`continue_after`) since the spool was
        #: made: until then it is provisional. A spool of an earlier SDK, or one whose state was lost while records
        #: remained, counts as checked.
        self.checked = bool(saved.get("checked", True)) if saved else spool.highest_sequence(self.name) > 0
        #: The highest sequence known to continue the backend's numbering (see `continue_after`): `assigned` as
        #: loaded at start, 0 while the numbering is provisional.
        self.base = self.assigned if self.checked else 0
        self.committed = int(saved.get("committed", 0))
        # Records are append-only, so a partly committed one is trimmed again from the saved cursor.
        spool.trim(self.name, self.committed)
        self.sent = 0
        #: Numbered points with contiguous sequences above the spool's.
        self.memory: deque[Point] = deque()
        self.stream: OpenStream | None = None
        # Counters of the delivery report.
        self.replayed = spool.pending[self.name]
        self.logged = 0
        self.committed_count = 0
        self.spooled = 0
        self.dropped = 0
        self.invalid = 0
        self._invalid_reported: set[str] = set()
        #: Most points kept in memory while the spool cannot be written; beyond it the oldest are dropped.
        self.memory_limit = 100_000
        #: The last error of a spool write, None once a write succeeds again.
        self.spool_error: OSError | None = None
        self._spool_retry_at = 0.0
        #: The highest sequence of a spooled record dropped as unreadable (`_lost`), and whether that was logged.
        self._lost_up_to = 0
        self._lost_logged = False

    def state(self) -> dict[str, int | bool]:
        """The numbering as the spool state keeps it."""
        return {
            "assigned": self.assigned,
            "reserved": self.reserved,
            "committed": self.committed,
            "checked": self.checked,
        }

    @property
    def pending(self) -> int:
        """Points not yet known committed; safe from any thread."""
        return len(self.memory) + self._spool.pending[self.name]

    def lowest(self) -> int | None:
        """The lowest uncommitted sequence, if any."""
        lowest = self._spool.lowest_sequence(self.name)
        if lowest is not None:
            return lowest
        return self.memory[0][0] if self.memory else None

    def refuse(self, problem: str) -> None:
        """Counts a point refused before sending, logging each kind of problem once."""
        self.invalid += 1
        if problem not in self._invalid_reported:
            self._invalid_reported.add(problem)
            _LOG.warning("job %s: %s refused before sending: %s (logged once)", self.codec.job_id, self.name, problem)

    def advance(self, cursor: int) -> bool:
        """Forgets what the committed cursor covers; returns whether the cursor moved."""
        moved = cursor > self.committed
        if moved:
            self.committed = cursor
            removed = self._spool.trim(self.name, cursor)
            memory = self.memory
            while memory and memory[0][0] <= cursor:
                memory.popleft()
                removed += 1
            self.committed_count += removed
        if self._lost_up_to > self.committed:
            # The backend never gets the points of a record that could not be read back: once nothing below them
            # waits, the cursor passes them as it passes a gap.
            lowest = self.lowest()
            if lowest is None or lowest > self._lost_up_to:
                self.committed = self._lost_up_to
                moved = True
        return moved

    def continue_after(self, cursor: int) -> int:
        """Checks the numbering against the backend's first cursor answer: when the cursor is above `base` (the
        spool was new, or its state lost, and the job already has points on the backend), every point numbered
        above `base`, in memory and in the spool, is renumbered after the cursor, so that none is taken for a
        duplicate of what the backend holds. Nothing numbered above `base` was sent before (points are sent only
        after this check), so nothing is stored twice.

        Returns the shift of the numbering, 0 when the cursor is not ahead. `base` becomes the cursor.

        Spooled points that cannot be renumbered (the spool's directory cannot be written) are dropped, counted.
        """
        if cursor <= self.base:
            self.checked = True
            return 0
        shift = cursor - self.base
        try:
            spooled = self._spool.renumber(self.name, self.base, shift)
        except OSError as exc:
            spooled = 0
            self._drop_unrenumbered(exc)
        # Worth a warning when points moved; a logger that has numbered nothing yet (a new spool of a job with
        # points, the relay's metrics) only continues after the cursor.
        _LOG.log(
            logging.WARNING if spooled or self.memory else logging.INFO,
            "job %s: the backend already holds %s up to %d, above the %d this spool knew; the %d points numbered "
            "since (%d of them spooled) are renumbered after it",
            self.codec.job_id,
            self.name,
            cursor,
            self.base,
            spooled + len(self.memory),
            spooled,
        )
        # Concatenation, not `(point[0] + shift, *point[1:])`: mypy cannot type that under a constrained TypeVar.
        self.memory = deque((point[0] + shift,) + point[1:] for point in self.memory)  # noqa: RUF005
        self.assigned += shift  # past `reserved` now, if it was in the block: the next save reserves a new one
        self.base = cursor
        self.checked = True
        return shift

    def _drop_unrenumbered(self, exc: OSError) -> None:
        """Drops (counted, logged) the spooled points numbered above `base` that could not be renumbered: sent
        with their numbers, the backend would take them for duplicates of what it holds."""
        spool = self._spool
        lost = [record for record in spool.records(self.name) if not record.segment.shift and record.first > self.base]
        for record in lost:
            spool.forget(self.name, record)
        count = sum(record.count for record in lost)
        self.dropped += count
        _LOG.error(
            "job %s: cannot renumber the spooled %s (%s); %d points numbered before the backend answered are dropped",
            self.codec.job_id,
            self.name,
            exc,
            count,
        )

    def next_message(self, partial: bool) -> tuple[bytes, int, int] | None:
        """The next request to send, serialized, with its last sequence and its number of points: spooled records
        first, then memory.

        From memory only a full batch, unless `partial`; None when there is nothing (more) to send.
        """
        spool = self._spool
        record = spool.first_record_after(self.name, self.sent)
        while record is not None:
            try:
                payload = spool.read(record)
                if record.segment.shift:
                    payload = _renumbered(self.codec, payload, record.segment.shift)
                # The codec may cut a record written under a larger budget: the rest follows in the next message.
                return self.codec.parse(payload, self.sent)
            except (OSError, DecodeError) as exc:
                self._lost(record, exc)
            record = spool.first_record_after(self.name, self.sent)
        if not self.unsent():
            return None
        memory = self.memory
        start = max(0, self.sent + 1 - memory[0][0])
        points = memory if start == 0 else itertools.islice(memory, start, None)
        batch, full = self.codec.take_batch(points)
        if not full and not partial:
            return None
        return self.codec.encode(batch), batch[-1][0], len(batch)

    def _lost(self, record: SpoolRecord, exc: Exception) -> None:
        """Drops a spooled record that cannot be read back (counted, logged once): the sender goes on with the
        next one, and the committed cursor is taken past it once nothing below it waits (`advance`)."""
        if not self._lost_logged:
            self._lost_logged = True
            _LOG.error(
                "job %s: spooled %s cannot be read back (%s); they are dropped (counted in the delivery report, "
                "logged once)",
                self.codec.job_id,
                self.name,
                exc,
            )
        self._spool.forget(self.name, record)
        self.dropped += record.count
        self.sent = max(self.sent, record.last)
        self._lost_up_to = max(self._lost_up_to, record.last)

    def unsent(self) -> bool:
        """Whether points in memory wait for a message (those in the spool are sent whenever there is room)."""
        return bool(self.memory) and self.memory[-1][0] > self.sent

    def spill(self, force: bool = False) -> int:
        """Moves every point in memory to the spool; returns how many were dropped.

        Points past the spool's cap are dropped. When the spool cannot be written (disk full, read-only, no
        permission), the points stay in memory, the newest `memory_limit` of them, and the writes are tried again
        after SPOOL_RETRY_S (at once when `force`); the older ones are dropped.
        """
        if not self.memory:
            return 0
        if self.spool_error is not None and not force and time.monotonic() < self._spool_retry_at:
            return self._drop_oldest()
        points = list(self.memory)
        self.memory = deque()
        codec = self.codec
        dropped = 0
        start = 0
        while start < len(points):
            batch, _ = codec.take_batch(points[start : start + codec.max_points])
            try:
                appended = self._spool.append(
                    self.name, codec.spool_payload(batch), batch[0][0], batch[-1][0], len(batch)
                )
            except OSError as exc:
                self._spool_failed(exc)
                self.memory = deque(points[start:])
                return dropped + self._drop_oldest()
            if self.spool_error is not None:
                _LOG.warning("job %s: the %s spool can be written again", self.codec.job_id, self.name)
                self.spool_error = None
            start += len(batch)
            if appended:
                self.spooled += len(batch)
            else:
                self.dropped += len(batch)
                dropped += len(batch)
        return dropped

    def _spool_failed(self, exc: OSError) -> None:
        if self.spool_error is None:
            _LOG.error(
                "job %s: cannot write the %s spool (%s); keeping up to %d points in memory and trying again",
                self.codec.job_id,
                self.name,
                exc,
                self.memory_limit,
            )
        self.spool_error = exc
        self._spool_retry_at = time.monotonic() + SPOOL_RETRY_S

    def _drop_oldest(self) -> int:
        """Drops the oldest points beyond `memory_limit` (memory stays contiguous); returns how many."""
        excess = len(self.memory) - self.memory_limit
        if excess <= 0:
            return 0
        popleft = self.memory.popleft
        for _ in range(excess):
            popleft()
        self.dropped += excess
        return excess

    def drop_memory(self) -> int:
        """Drops every point left in memory (the sender is stopping and could not spool them); returns how many."""
        count = len(self.memory)
        self.memory = deque()
        self.dropped += count
        return count

    def cancel_stream(self) -> None:
        """Cancels the open stream, if any."""
        if self.stream is not None:
            self.stream.cancel()
            self.stream = None


def _renumbered(codec: Codec[Point], payload: bytes, shift: int) -> bytes:
    """A spooled record's payload with every sequence moved up by `shift` (a renumbered segment's record)."""
    request = codec.request_type.FromString(payload)
    for point in getattr(request, codec.points_field):
        point.sequence += shift
    if isinstance(request, telemetry_pb2.StreamMetricsRequest) and request.columns.sequences:
        sequences = request.columns.sequences
        moved = [sequence + shift for sequence in sequences]
        del sequences[:]
        sequences.extend(moved)
    return request.SerializeToString()


AnyOutbox = Outbox[BufferedMetric] | Outbox[BufferedLog]
"""The outbox of either stream."""
