"""The on-disk spool: points not yet committed, kept across restarts of the trainer process.

Layout of a spool directory (one job):
  - `state.0`, `state.1`: per stream kind the highest sequence assigned and the end of the block of sequences
    reserved, the committed cursors and the unary calls not yet delivered, as JSON behind a header (length,
    CRC-32, generation). Each save overwrites the older slot in place with one `pwrite`, so a crash tears at most
    the slot being written and the other one still holds the previous state; the valid slot with the higher
    generation wins. The sender saves the state on every batch it numbers, so this costs one system call where a
    write-and-rename cost a file creation and a rename. Those saves are not synced; a durable save
    (`save_state(durable=True)`, once per block of sequences reserved) writes and fsyncs both slots, so after a
    power loss every valid slot holds at least the last reservation, and a restart never reuses a sequence;
  - `<kind>-<first sequence>.seg`: append-only segments of records. A record is a header (payload length, CRC-32,
    first and last sequence, point count) and a payload (a serialized StreamMetricsRequest or StreamLogsRequest).
    A record torn by a crash fails its length or CRC check and ends the segment's readable part. A segment named
    `<kind>-<first sequence>+<shift>.seg` was renumbered (`renumber`): the real sequences of its points are those
    written in it plus `shift` (its records' `first` and `last` here are the real ones; the sender shifts the
    payload's when it sends it). Renaming is the one atomic step, so a crash leaves each segment either renumbered
    or not, never half;
  - `lock`: locked while a logger uses the directory, so two processes never number the same job's points. A POSIX
    record lock (`lockf`): unlike `flock`, a forked child (a DataLoader worker) does not inherit it, so a child
    that outlives the training process never keeps the spool from being replayed. Such a lock does not exclude
    the process holding it, so the directories locked by this process are also kept in `_HELD`.

A spool is removed (`remove`) by the logger at close once the job has ended and nothing in it is pending.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import json
import logging
import os
import struct
import threading
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

# (device, inode) of the lock files this process holds: a POSIX lock is never refused to its own process.
_HELD: set[tuple[int, int]] = set()
_HELD_LOCK = threading.Lock()


def _forget_locks_in_child() -> None:
    # A forked child holds none of its parent's POSIX locks.
    global _HELD_LOCK
    _HELD_LOCK = threading.Lock()
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


@dataclass(slots=True, eq=False)
class SpoolRecord:
    """One record of a segment: a batch of points with contiguous sequences (slots: a spool near its cap holds
    millions of them)."""

    segment: Segment
    offset: int
    length: int
    first: int
    last: int
    count: int


@dataclass(slots=True, eq=False)
class Segment:
    """An append-only segment file and its records that are not yet committed."""

    path: Path
    size: int
    records: list[SpoolRecord] = field(default_factory=list)
    #: What to add to the sequences written in the segment to get their real ones (see `Spool.renumber`).
    shift: int = 0


def _last_sequence(segment: Segment) -> int:
    """The highest sequence of a segment (one in the spool's lists always holds a record)."""
    return segment.records[-1].last


def _record_last(record: SpoolRecord) -> int:
    return record.last


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
        self._lock_fd = -1
        self._lock_key = self._lock(directory)
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

    def _lock(self, directory: Path) -> tuple[int, int]:
        path = directory / _LOCK_FILE
        in_use = SpoolLockedError(f"spool {directory} is in use by another logger of this process")
        with _HELD_LOCK:
            # Checked before opening: closing any descriptor of the file would release this process's lock on it.
            with contextlib.suppress(FileNotFoundError):
                info = os.stat(path)
                if (info.st_dev, info.st_ino) in _HELD:
                    raise in_use
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            info = os.fstat(fd)
            key = (info.st_dev, info.st_ino)
            if key in _HELD:  # the file appeared between the two looks: leave the descriptor open, never release
                raise in_use
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    raise SpoolLockedError(f"spool {directory} is in use by another process") from None
                raise
            _HELD.add(key)
        self._lock_fd = fd
        return key

    def _load_segment(self, kind: str, path: Path) -> None:
        data = path.read_bytes()
        _, plus, shift = path.stem.rpartition("+")
        segment = Segment(path=path, size=len(data), shift=int(shift) if plus and shift.isdigit() else 0)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, crc, first, last, count = _HEADER.unpack_from(data, offset)
            start = offset + _HEADER.size
            payload = data[start : start + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                _LOG.warning("spool segment %s: torn record at byte %d ignored (a crash while writing)", path, offset)
                break
            segment.records.append(
                SpoolRecord(segment, start, length, first + segment.shift, last + segment.shift, count)
            )
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
        """The first record holding a point above `sequence`, if any.

        A binary search, in the segments and then in the records of one: the sender asks for every message it
        sends from the spool, and a scan from the first record (those sent but not yet committed stay) made a
        replay of N records cost O(N^2), 17 s for 72,000 records. Records, and segments, are in sequence order.
        """
        segments = self._segments[kind]
        index = bisect.bisect_right(segments, sequence, key=_last_sequence)
        if index == len(segments):
            return None
        records = segments[index].records
        return records[bisect.bisect_right(records, sequence, key=_record_last)]

    def lowest_sequence(self, kind: str) -> int | None:
        """The lowest uncommitted sequence on disk, if any."""
        segments = self._segments[kind]
        return segments[0].records[0].first if segments else None

    def highest_sequence(self, kind: str) -> int:
        """The highest sequence on disk, 0 when the spool of this kind is empty."""
        segments = self._segments[kind]
        return segments[-1].records[-1].last if segments else 0

    def append(self, kind: str, payload: bytes, first: int, last: int, count: int) -> bool:
        """Appends one record; returns False (and writes nothing) when it would take the spool past its cap.

        Raises:
            OSError: The record cannot be written (disk full, read-only, permission denied...). Nothing of it is
                left behind: a partly written record is cut off again, and the spool stays usable.
        """
        size = _HEADER.size + len(payload)
        if self.size_bytes + size > self.max_bytes:
            return False
        active = self._active[kind]
        if active is not None and os.fstat(active[1]).st_nlink == 0:
            # Deleted under us (a tmp cleaner, a user freeing disk): what it holds cannot be read back by its path,
            # and nothing more goes into it.
            _LOG.warning("spool segment %s was deleted while in use; starting a new one", active[0].path)
            self._close_active(kind)
            active = None
        if active is None or active[0].size >= self.segment_bytes:
            active = self._open_segment(kind, first)
        segment, fd = active
        data = _HEADER.pack(len(payload), zlib.crc32(payload), first, last, count) + payload
        try:
            # One write per record: a crash tears at most this record, which the CRC check then discards.
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write to {segment.path} ({written} of {len(data)} bytes)")
        except OSError:
            self._abandon_active(kind)
            raise
        segment.records.append(SpoolRecord(segment, segment.size + _HEADER.size, len(payload), first, last, count))
        segment.size += size
        self.size_bytes += size
        self.pending[kind] += count
        return True

    def renumber(self, kind: str, above: int, shift: int) -> int:
        """Moves the sequences of every record numbered above `above` (and not renumbered before) up by `shift`;
        returns how many points moved.

        The sender numbers points before the backend can say what it holds; when its cursor shows the numbering
        must move, the records numbered since move with it. Each segment is renamed to `<name>+<shift>.seg`, the
        last first: a crash halfway leaves the renumbered segments above the others, in order. The directory is
        synced before this returns, so the renames are on disk before the state that follows them.

        Raises:
            OSError: A segment cannot be renamed (those renamed before stay renamed).
        """
        self._close_active(kind)  # later records are numbered anew: they go to a segment of their own
        moved = 0
        try:
            for segment in reversed(self._segments[kind]):
                if segment.shift or not segment.records or segment.records[0].first <= above:
                    continue
                path = segment.path.with_name(f"{segment.path.stem}+{shift}.seg")
                os.rename(segment.path, path)
                segment.path = path
                segment.shift = shift
                for record in segment.records:
                    record.first += shift
                    record.last += shift
                    moved += record.count
        finally:
            self._segments[kind].sort(key=lambda segment: segment.records[0].first)
        if moved:
            _fsync_directory(self.directory)
        return moved

    def _open_segment(self, kind: str, first: int) -> tuple[Segment, int]:
        self._close_active(kind)
        path = self.directory / f"{kind}-{first:015d}.seg"
        suffix = 0
        while path.exists():
            suffix += 1
            path = self.directory / f"{kind}-{first:015d}-{suffix}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        segment = Segment(path=path, size=0)
        self._segments[kind].append(segment)
        self._active[kind] = (segment, fd)
        return segment, fd

    def _abandon_active(self, kind: str) -> None:
        """After a failed write: cuts the active segment back to its last whole record and stops appending to it (a
        new segment is opened for the next record); a segment left without records is deleted."""
        active = self._active[kind]
        if active is None:
            return
        segment, fd = active
        with contextlib.suppress(OSError):
            os.ftruncate(fd, segment.size)
        self._close_active(kind)
        if not segment.records:
            self._segments[kind].remove(segment)
            with contextlib.suppress(OSError):
                segment.path.unlink(missing_ok=True)

    def _close_active(self, kind: str) -> None:
        active = self._active[kind]
        if active is not None:
            os.close(active[1])
            self._active[kind] = None

    def read(self, record: SpoolRecord) -> bytes:
        """The payload of a record, checked against the length and CRC-32 of its header.

        Raises:
            OSError: The segment cannot be read (deleted by a tmp cleaner or a user freeing disk, an I/O error),
                or the record is no longer what was written (cut short, overwritten): errno EIO then.
        """
        with open(record.segment.path, "rb") as handle:
            handle.seek(record.offset - _HEADER.size)
            data = handle.read(_HEADER.size + record.length)
        if len(data) == _HEADER.size + record.length:
            length, crc, *_ = _HEADER.unpack_from(data)
            payload = data[_HEADER.size :]
            if length == record.length and zlib.crc32(payload) == crc:
                return payload
        raise OSError(errno.EIO, f"the record at byte {record.offset} of {record.segment.path} is damaged or cut short")

    def forget(self, kind: str, record: SpoolRecord) -> None:
        """Forgets a record that cannot be read back (`read` failed), deleting its segment once nothing is left in
        it; its segment takes no more records (a new one is opened for the next)."""
        segment = record.segment
        active = self._active[kind]
        if active is not None and active[0] is segment:
            self._close_active(kind)
        segment.records.remove(record)
        self.pending[kind] -= record.count
        if not segment.records:
            self._segments[kind].remove(segment)
            self.size_bytes -= segment.size
            try:
                segment.path.unlink(missing_ok=True)
            except OSError as exc:
                _LOG.warning("cannot delete the unreadable spool segment %s (%s)", segment.path, exc)

    def trim(self, kind: str, committed: int) -> int:
        """Forgets the points at or below the committed cursor, deleting segments left empty; returns how many."""
        removed = 0
        segments = self._segments[kind]
        while segments:
            segment = segments[0]
            records = segment.records
            gone = 0  # whole records committed, removed at once (popping each from the front is quadratic)
            while gone < len(records) and records[gone].first <= committed:
                record = records[gone]
                if record.last <= committed:
                    removed += record.count
                    gone += 1
                else:
                    # Sequences inside a record are contiguous, so the committed part is a prefix of known length.
                    done = min(committed - record.first + 1, record.count - 1)
                    removed += done
                    record.first = committed + 1
                    record.count -= done
                    break
            del records[:gone]
            if records:
                break
            active = self._active[kind]
            if active is not None and active[0] is segment:
                self._close_active(kind)
            segments.pop(0)
            try:
                segment.path.unlink(missing_ok=True)
            except OSError as exc:  # a read-only disk: the records are forgotten all the same (the cursor passed them)
                _LOG.warning("cannot delete the committed spool segment %s (%s)", segment.path, exc)
            self.size_bytes -= segment.size
        self.pending[kind] -= removed
        return removed

    def save_state(self, durable: bool = False) -> None:
        """Writes the state into the older of the two slots: a crash leaves the previous state in the other one.

        Args:
            durable: Also write it into the other slot, and fsync each slot after its write: after a power loss
                both slots hold this state or a later one (a slot torn by a later, unsynced save is ignored).

        Raises:
            OSError: A slot cannot be written.
        """
        if not self._state_fds:
            created = not all((self.directory / name).exists() for name in _STATE_SLOTS)
            fds: list[int] = []
            try:
                for name in _STATE_SLOTS:
                    fds.append(os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError:
                for fd in fds:
                    os.close(fd)
                raise
            self._state_fds = fds
            if created:
                durable = True  # the slots' directory entries must survive a power loss too
                _fsync_directory(self.directory)
        payload = json.dumps(self.state, separators=(",", ":")).encode("utf-8")
        for _ in range(2 if durable else 1):
            generation = self._generation + 1
            # Bytes of a longer earlier payload may follow; the header's length says where this one ends.
            record = _STATE_HEADER.pack(len(payload), zlib.crc32(payload), generation) + payload
            fd = self._state_fds[generation % 2]
            os.pwrite(fd, record, 0)
            if durable:
                os.fsync(fd)
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
            # Closing the descriptor releases the POSIX lock.
            os.close(self._lock_fd)
            self._lock_fd = -1
            with _HELD_LOCK:
                _HELD.discard(self._lock_key)

    def remove(self) -> bool:
        """Deletes the spool's files and then its directory, if nothing in it is pending; closes the spool.

        The directory itself stays when it holds files of someone else. Returns whether the spool was removed.
        """
        if any(self.pending.values()) or self.state.get("calls"):
            self.close()
            return False
        for kind in KINDS:
            self._close_active(kind)
        for segment in (segment for kind in KINDS for segment in self._segments[kind]):
            segment.path.unlink(missing_ok=True)
        for name in (*_STATE_SLOTS, _LOCK_FILE):  # the lock last, while it is still held
            (self.directory / name).unlink(missing_ok=True)
        self.close()
        with contextlib.suppress(OSError):
            self.directory.rmdir()
        return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
