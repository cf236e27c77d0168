"""The on-disk spool: records, trimming by the cursor, torn writes, restarts, the lock and the cap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.streams import request_points
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk import LoggerSettings, TrainingLogger
from trainingplatform_sdk.telemetry.spool import Spool, SpoolLockedError


def _open(directory: Path, job_id: str = "job-1", max_bytes: int = 1 << 30, segment_bytes: int = 1 << 20) -> Spool:
    return Spool(directory, job_id, max_bytes, segment_bytes)


def test_records_survive_a_reopen(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    assert spool.append("metrics", b"first batch", 1, 10, 10)
    assert spool.append("metrics", b"second batch", 11, 15, 5)
    assert spool.append("logs", b"log batch", 1, 3, 3)
    spool.state["metrics"] = {"assigned": 15}
    spool.save_state()
    spool.close()

    reopened = _open(tmp_path)
    assert [(r.first, r.last, r.count) for r in reopened.records("metrics")] == [(1, 10, 10), (11, 15, 5)]
    assert [reopened.read(r) for r in reopened.records("metrics")] == [b"first batch", b"second batch"]
    assert reopened.pending == {"metrics": 15, "logs": 3}
    assert reopened.highest_sequence("metrics") == 15
    assert reopened.state["metrics"] == {"assigned": 15}
    reopened.close()


def test_trim_forgets_committed_points_and_deletes_empty_segments(tmp_path: Path) -> None:
    spool = _open(tmp_path, segment_bytes=1)  # one record per segment
    for first in (1, 11, 21):
        spool.append("metrics", b"x" * 100, first, first + 9, 10)
    assert len(list(tmp_path.glob("metrics-*.seg"))) == 3

    assert spool.trim("metrics", 15) == 15
    assert [(r.first, r.last, r.count) for r in spool.records("metrics")] == [(16, 20, 5), (21, 30, 10)]
    assert spool.lowest_sequence("metrics") == 16
    assert len(list(tmp_path.glob("metrics-*.seg"))) == 2
    assert spool.pending["metrics"] == 15

    assert spool.trim("metrics", 30) == 15
    assert spool.records("metrics") == []
    assert spool.lowest_sequence("metrics") is None
    assert list(tmp_path.glob("metrics-*.seg")) == []
    assert spool.size_bytes == 0
    spool.close()


def test_a_torn_record_is_ignored(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    spool.append("metrics", b"complete", 1, 2, 2)
    spool.append("metrics", b"torn by a crash", 3, 4, 2)
    spool.close()
    segment = next(tmp_path.glob("metrics-*.seg"))
    segment.write_bytes(segment.read_bytes()[:-3])

    reopened = _open(tmp_path)
    assert [(r.first, r.last) for r in reopened.records("metrics")] == [(1, 2)]
    # New records go to a new segment, never after the torn tail.
    reopened.append("metrics", b"after restart", 5, 5, 1)
    reopened.close()
    again = _open(tmp_path)
    assert [again.read(r) for r in again.records("metrics")] == [b"complete", b"after restart"]
    again.close()


def test_a_corrupted_record_fails_its_checksum(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    spool.append("metrics", b"payload", 1, 1, 1)
    spool.close()
    segment = next(tmp_path.glob("metrics-*.seg"))
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    reopened = _open(tmp_path)
    assert reopened.records("metrics") == []
    reopened.close()


def test_the_cap_refuses_appends(tmp_path: Path) -> None:
    spool = _open(tmp_path, max_bytes=200)
    assert spool.append("metrics", b"x" * 100, 1, 1, 1)
    assert not spool.append("metrics", b"x" * 100, 2, 2, 1)
    assert spool.pending["metrics"] == 1
    spool.close()


def test_past_the_cap_the_spool_keeps_the_oldest_points(tmp_path: Path, unreachable_address: str) -> None:
    # What the spool holds stays; the points that would take it past its cap are dropped, so the spool is a gapless
    # prefix of what was logged (docs/architecture.md says so).
    settings = LoggerSettings(spool_max_bytes=20_000, reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.1)
    logger = TrainingLogger(
        "job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path, settings=settings
    )
    for step in range(3000):
        logger.log_metric("loss", float(step), step=step)
        if step % 100 == 0:
            time.sleep(0.06)  # several spills, so the cap is hit more than once
    report = logger.close(0.2)
    spool = _open(tmp_path)
    steps = [
        point.step
        for record in spool.records("metrics")
        for point in request_points(telemetry_pb2.StreamMetricsRequest.FromString(spool.read(record)))
    ]
    spool.close()
    assert 0 < report.dropped < 3000 and len(steps) == 3000 - report.dropped
    assert steps == list(range(len(steps)))


def test_one_process_at_a_time(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    with pytest.raises(SpoolLockedError):
        _open(tmp_path)
    spool.close()
    _open(tmp_path).close()


def test_a_spool_belongs_to_one_job(tmp_path: Path) -> None:
    spool = _open(tmp_path, job_id="job-1")
    spool.save_state()
    spool.close()
    with pytest.raises(ValueError, match="belongs to job"):
        _open(tmp_path, job_id="job-2")
    # The refused open released the lock.
    _open(tmp_path, job_id="job-1").close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch_sizes=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20),
    cursors=st.lists(st.integers(min_value=0, max_value=1100), max_size=8),
)
def test_trim_accounts_for_every_point_once(tmp_path_factory: pytest.TempPathFactory, batch_sizes, cursors) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp("spool")
    spool = _open(directory, segment_bytes=64)
    sequence = 0
    for size in batch_sizes:
        spool.append("metrics", b"p" * size, sequence + 1, sequence + size, size)
        sequence += size
    removed = 0
    committed = 0
    for cursor in sorted(cursors):
        removed += spool.trim("metrics", cursor)
        committed = max(committed, min(cursor, sequence))
        assert removed == committed
        assert spool.pending["metrics"] == sequence - committed
        lowest = spool.lowest_sequence("metrics")
        assert lowest == (committed + 1 if committed < sequence else None)
    spool.close()
    # A record's committed prefix is forgotten in memory only; the sender keeps the cursor in the state and trims
    # again after a restart.
    reopened = _open(directory)
    reopened.trim("metrics", committed)
    assert reopened.pending["metrics"] == sequence - committed
    reopened.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.tuples(st.integers(1, 30), st.integers(0, 5)), min_size=1, max_size=25),
    cursor=st.integers(min_value=0, max_value=1000),
    forgotten=st.integers(min_value=0, max_value=30),
)
def test_first_record_after_finds_the_record_holding_the_next_point(  # type: ignore[no-untyped-def]
    tmp_path_factory: pytest.TempPathFactory, batches, cursor, forgotten
) -> None:
    # The sender asks it for every message it sends from the spool; it must find the record a scan from the
    # first record would, across segments, after a trim (a record's committed prefix cut), a forgotten record
    # (unreadable) and a reopen.
    directory = tmp_path_factory.mktemp("spool")
    spool = _open(directory, segment_bytes=100)
    sequence = 0
    for size, gap in batches:
        first = sequence + gap + 1  # a gap: sequences renumbered, or points dropped before they were spooled
        spool.append("metrics", b"p" * size, first, first + size - 1, size)
        sequence = first + size - 1
    spool.trim("metrics", cursor)
    records = spool.records("metrics")
    if records:
        spool.forget("metrics", records[forgotten % len(records)])

    def check(opened: Spool) -> None:
        records = opened.records("metrics")
        for sent in range(sequence + 2):
            expected = next((record for record in records if record.last > sent), None)
            assert opened.first_record_after("metrics", sent) is expected, sent
        assert opened.first_record_after("logs", 0) is None

    check(spool)
    spool.close()
    reopened = _open(directory)
    check(reopened)
    reopened.close()


def test_a_save_torn_by_a_crash_leaves_the_previous_state(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    spool.state["metrics"] = {"assigned": 10}
    spool.save_state()
    spool.state["metrics"] = {"assigned": 20}
    spool.save_state()
    spool.close()
    assert _open_state(tmp_path) == {"assigned": 20}

    # The newer slot is torn (a crash in the middle of its write): the older one, one save behind, is used.
    newest = next(path for path in tmp_path.glob("state.*") if b'"assigned":20' in path.read_bytes())
    newest.write_bytes(newest.read_bytes()[:-2])
    assert _open_state(tmp_path) == {"assigned": 10}

    # Saving again overwrites the torn slot, never the good one.
    spool = _open(tmp_path)
    spool.state["metrics"] = {"assigned": 30}
    spool.save_state()
    spool.close()
    assert _open_state(tmp_path) == {"assigned": 30}


def test_a_shorter_state_overwrites_a_longer_one_in_place(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    spool.state["calls"] = [{"method": "UpdateStatus", "request": "x" * 5000}]
    spool.save_state()
    spool.save_state()
    spool.state["calls"] = []
    spool.save_state()
    spool.save_state()
    spool.close()
    reopened = _open(tmp_path)
    assert reopened.state["calls"] == []
    reopened.close()


def _open_state(directory: Path) -> dict:
    spool = _open(directory)
    try:
        return spool.state.get("metrics", {})
    finally:
        spool.close()


def _locked_in_another_process(directory: Path) -> bool:
    """Whether a new process is refused the spool in `directory`."""
    script = (
        "import sys; from pathlib import Path\n"
        "from trainingplatform_sdk.telemetry.spool import Spool, SpoolLockedError\n"
        "try:\n    Spool(Path(sys.argv[1]), 'job-1', 1 << 30, 1 << 20).close()\n"
        "except SpoolLockedError:\n    sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", script, str(directory)], check=False).returncode == 3


def test_a_forked_child_does_not_inherit_the_lock(tmp_path: Path) -> None:
    # A DataLoader worker forked while the spool is open outlives the training process: the spool must still be
    # free for the replay once the training process has closed it.
    spool = _open(tmp_path)
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    try:
        spool.close()
        assert not _locked_in_another_process(tmp_path)
        _open(tmp_path).close()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_refused_second_open_in_the_same_process_keeps_the_lock(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    with pytest.raises(SpoolLockedError):
        _open(tmp_path)
    assert _locked_in_another_process(tmp_path)
    spool.close()
    assert not _locked_in_another_process(tmp_path)


def test_remove_deletes_an_empty_spool_only(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = _open(directory)
    spool.append("metrics", b"pending", 1, 1, 1)
    spool.save_state()
    assert not spool.remove()  # a point is pending: kept
    assert directory.is_dir()
    spool = _open(directory)
    spool.trim("metrics", 1)
    assert spool.remove()
    assert not directory.exists()


def test_renumbered_records_keep_their_numbers_across_a_reopen(tmp_path: Path) -> None:
    spool = _open(tmp_path, segment_bytes=64)
    spool.append("metrics", b"x" * 100, 1, 10, 10)  # before the backend answered: numbered from 1
    spool.append("metrics", b"x" * 100, 11, 20, 10)
    assert spool.renumber("metrics", 0, 100) == 20  # the backend already held 100
    spool.append("metrics", b"x" * 100, 121, 130, 10)  # numbered after it
    expected = [(101, 110), (111, 120), (121, 130)]
    assert [(r.first, r.last) for r in spool.records("metrics")] == expected
    spool.close()
    reopened = _open(tmp_path)
    assert [(r.first, r.last) for r in reopened.records("metrics")] == expected
    assert [r.segment.shift for r in reopened.records("metrics")] == [100, 100, 0]
    assert reopened.trim("metrics", 110) == 10
    reopened.close()


def test_a_renumbering_cut_short_leaves_the_segments_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A crash (here: a failed rename) halfway through: the segments are renamed last first, so those renumbered
    # lie above those not yet, and a reopened spool still has them in order.
    spool = _open(tmp_path, segment_bytes=64)
    for first in (1, 11, 21):
        spool.append("metrics", b"x" * 100, first, first + 9, 10)
    real_rename = os.rename
    renames: list[str] = []

    def rename_once(source: Path, target: Path) -> None:
        if renames:
            raise OSError(5, "Input/output error")
        renames.append(str(target))
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename_once)
    with pytest.raises(OSError):
        spool.renumber("metrics", 0, 100)
    monkeypatch.setattr(os, "rename", real_rename)
    assert [(r.first, r.last) for r in spool.records("metrics")] == [(1, 10), (11, 20), (121, 130)]
    spool.close()
    reopened = _open(tmp_path)
    assert [(r.first, r.last) for r in reopened.records("metrics")] == [(1, 10), (11, 20), (121, 130)]
    assert reopened.renumber("metrics", 0, 100) == 20  # the rest follows on the next try
    assert [(r.first, r.last) for r in reopened.records("metrics")] == [(101, 110), (111, 120), (121, 130)]
    reopened.close()


def test_an_outage_leaves_about_one_record_per_second_and_stream(tmp_path: Path, unreachable_address: str) -> None:
    # Each spooled record costs memory while the spool holds it: an outage must not leave one per flush interval
    # (20 a second and stream; an hour's outage was 17 MB per stream).
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
    start = time.monotonic()
    step = 0
    while time.monotonic() - start < 3:
        logger.log_metric("loss", 1.0, step=step)
        logger.log_message(f"line {step}")
        step += 1
        time.sleep(0.01)
    report = logger.close(0.2)
    assert report.pending_metrics == report.pending_logs == step  # nothing lost by spilling less often
    spool = _open(tmp_path)
    records = [len(spool.records(kind)) for kind in ("metrics", "logs")]
    spool.close()
    assert all(1 <= count <= 6 for count in records), records  # 3 s, the close's, and some slack
