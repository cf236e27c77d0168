"""The on-disk spool: points not yet committed, kept across restarts of the trainer process.

Layout of a spool directory (one job):
  - `state.0`, `state.1`: the highest sequence ever assigned per stream kind, the committed cursors and the unary
    calls not yet delivered, as JSON behind a header (length, CRC-32, generation). Each save overwrites the older
    slot in place with one `pwrite`, so a crash tears at most the slot being written and the other one still holds
    the previous state; the valid slot with the higher generation wins. The sender saves the state on every batch
    it numbers, so this costs one system call where a write-and-rename cost a file creation and a rename;
  - `<kind>-<first sequence>.seg`: append-only segments of records. A record is a header (payload length, CRC-32,
    first and last sequence, point count) and a payload (a serialized StreamMetricsRequest or StreamLogsRequest).
    A record torn by a crash fails its length or CRC check and ends the segment's readable part;
  - `lock`: flock-ed while a logger uses the directory, so two processes never number the same job's points.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainingplatform_sdk.errors import SpoolLockedError

_LOG = logging.getLogger("trainingplatform_sdk.logger")

KINDS = ("metrics", "logs")
_HEADER = struct.Struct("<IIqqI")
_STATE_HEADER = struct.Struct("<IIQ")  # payload length, CRC-32 of the payload, generation
_STATE_SLOTS = ("state.0", "state.1")
_LOCK_FILE = "lock"


@dataclass
class SpoolRecord:
    """One record of a segment: a batch of points with contiguous sequences."""

    segment: Segment
    offset: int
    length: int
    first: int
    last: int
    count: int


@dataclass
class Segment:
    """An append-only segment file and its records that are not yet committed."""

    path: Path
    size: int
    records: list[SpoolRecord] = field(default_factory=list)


class Spool:
    """Segments of uncommitted points plus the small state file of one job, in one directory.

    Only the logger's sender thread uses an instance, so it has no locking of its own.
    """

    def __init__(self, directory: Path, job_id: str, max_bytes: int, segment_bytes: int) -> None:
        """Opens (creating it if needed) and locks the spool directory and reads what an earlier process left.

        Raises:
            SpoolLockedError: Another process holds the directory.
            ValueError: The directory belongs to another job.
            OSError: The directory cannot be created or written.
        """
        self.directory = directory
        self.job_id = job_id
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolLockedError(f"spool {directory} is in use by another process") from None
        self._state_fds: list[int] = []
        self._generation, state = _load_state(directory)
        self.state: dict[str, Any] = state
        if self.state.get("job_id", job_id) != job_id:
            self.close()
            raise ValueError(f"spool {directory} belongs to job {self.state['job_id']!r}, not {job_id!r}")
        self.state["job_id"] = job_id
        self._segments: dict[str, list[Segment]] = {kind: [] for kind in KINDS}
        self._active: dict[str, tuple[Segment, int] | None] = {kind: None for kind in KINDS}
        self.size_bytes = 0
        self.pending: dict[str, int] = {kind: 0 for kind in KINDS}
        for kind in KINDS:
            for path in sorted(directory.glob(f"{kind}-*.seg")):
                self._load_segment(kind, path)
            self._segments[kind].sort(key=lambda segment: segment.records[0].first)

    def _load_segment(self, kind: str, path: Path) -> None:
        data = path.read_bytes()
        segment = Segment(path=path, size=len(data))
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, crc, first, last, count = _HEADER.unpack_from(data, offset)
            start = offset + _HEADER.size
            payload = data[start : start + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                _LOG.warning("spool segment %s: torn record at byte %d ignored (a crash while writing)", path, offset)
                break
            segment.records.append(SpoolRecord(segment, start, length, first, last, count))
            offset = start + length
        if segment.records:
            self._segments[kind].append(segment)
            self.size_bytes += segment.size
            self.pending[kind] += sum(record.count for record in segment.records)
        else:
            path.unlink(missing_ok=True)

    def records(self, kind: str) -> list[SpoolRecord]:
        """The records of a kind not yet committed, in sequence order."""
        return [record for segment in self._segments[kind] for record in segment.records]

    def first_record_after(self, kind: str, sequence: int) -> SpoolRecord | None:
        """The first record holding a point above `sequence`, if any."""
        for segment in self._segments[kind]:
            for record in segment.records:
                if record.last > sequence:
                    return record
        return None

    def lowest_sequence(self, kind: str) -> int | None:
        """The lowest uncommitted sequence on disk, if any."""
        segments = self._segments[kind]
        return segments[0].records[0].first if segments else None

    def highest_sequence(self, kind: str) -> int:
        """The highest sequence on disk, 0 when the spool of this kind is empty."""
        segments = self._segments[kind]
        return segments[-1].records[-1].last if segments else 0

    def append(self, kind: str, payload: bytes, first: int, last: int, count: int) -> bool:
        """Appends one record; returns False (and writes nothing) when it would take the spool past its cap."""
        size = _HEADER.size + len(payload)
        if self.size_bytes + size > self.max_bytes:
            return False
        active = self._active[kind]
        if active is None or active[0].size >= self.segment_bytes:
            active = self._open_segment(kind, first)
        segment, fd = active
        # One write per record: a crash tears at most this record, which the CRC check then discards.
        os.write(fd, _HEADER.pack(len(payload), zlib.crc32(payload), first, last, count) + payload)
        segment.records.append(SpoolRecord(segment, segment.size + _HEADER.size, len(payload), first, last, count))
        segment.size += size
        self.size_bytes += size
        self.pending[kind] += count
        return True

    def _open_segment(self, kind: str, first: int) -> tuple[Segment, int]:
        self._close_active(kind)
        path = self.directory / f"{kind}-{first:015d}.seg"
        suffix = 0
        while path.exists():
            suffix += 1
            path = self.directory / f"{kind}-{first:015d}-{suffix}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        segment = Segment(path=path, size=0)
        self._segments[kind].append(segment)
        self._active[kind] = (segment, fd)
        return segment, fd

    def _close_active(self, kind: str) -> None:
        active = self._active[kind]
        if active is not None:
            os.close(active[1])
            self._active[kind] = None

    def read(self, record: SpoolRecord) -> bytes:
        """The payload of a record."""
        with open(record.segment.path, "rb") as handle:
            handle.seek(record.offset)
            return handle.read(record.length)

    def trim(self, kind: str, committed: int) -> int:
        """Forgets the points at or below the committed cursor, deleting segments left empty; returns how many."""
        removed = 0
        segments = self._segments[kind]
        while segments:
            segment = segments[0]
            while segment.records and segment.records[0].first <= committed:
                record = segment.records[0]
                if record.last <= committed:
                    removed += record.count
                    segment.records.pop(0)
                else:
                    # Sequences inside a record are contiguous, so the committed part is a prefix of known length.
                    done = min(committed - record.first + 1, record.count - 1)
                    removed += done
                    record.first = committed + 1
                    record.count -= done
                    break
            if segment.records:
                break
            active = self._active[kind]
            if active is not None and active[0] is segment:
                self._close_active(kind)
            segments.pop(0)
            segment.path.unlink(missing_ok=True)
            self.size_bytes -= segment.size
        self.pending[kind] -= removed
        return removed

    def save_state(self) -> None:
        """Writes the state into the older of the two slots: a crash leaves the previous state in the other one.

        Raises:
            OSError: The slot cannot be written.
        """
        if not self._state_fds:
            self._state_fds = [os.open(self.directory / name, os.O_WRONLY | os.O_CREAT, 0o600) for name in _STATE_SLOTS]
        payload = json.dumps(self.state, separators=(",", ":")).encode("utf-8")
        generation = self._generation + 1
        # Bytes of a longer earlier payload may follow; the header's length says where this one ends.
        record = _STATE_HEADER.pack(len(payload), zlib.crc32(payload), generation) + payload
        os.pwrite(self._state_fds[generation % 2], record, 0)
        self._generation = generation

    def close(self) -> None:
        """Closes the open segments and releases the directory lock."""
        for kind in KINDS:
            with contextlib.suppress(AttributeError):
                self._close_active(kind)
        for fd in self._state_fds:
            os.close(fd)
        self._state_fds = []
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def read_state(directory: Path) -> dict[str, Any]:
    """The last saved state of the spool in `directory` ({} if none), read without taking its lock."""
    return _load_state(directory)[1]


def _load_state(directory: Path) -> tuple[int, dict[str, Any]]:
    """(generation, state) of the newest valid state slot; (0, {}) when there is none."""
    best: tuple[int, dict[str, Any]] | None = None
    for name in _STATE_SLOTS:
        path = directory / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        slot = _parse_state_slot(data)
        if slot is None:
            if data:
                # Torn by a crash while it was written: the other slot holds the state before that save.
                _LOG.warning("spool state slot %s is torn or damaged; using the other slot", path)
            continue
        if best is None or slot[0] > best[0]:
            best = slot
    return best if best is not None else (0, {})


def _parse_state_slot(data: bytes) -> tuple[int, dict[str, Any]] | None:
    """(generation, state) of a state slot, or None when it is empty, torn or damaged."""
    if len(data) < _STATE_HEADER.size:
        return None
    length, crc, generation = _STATE_HEADER.unpack_from(data)
    payload = data[_STATE_HEADER.size : _STATE_HEADER.size + length]
    if len(payload) != length or zlib.crc32(payload) != crc:
        return None
    try:
        state = json.loads(payload)
    except ValueError:
        return None
    return (generation, state) if isinstance(state, dict) else None
