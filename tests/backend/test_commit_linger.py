"""The group committer's linger in-process: a round of small batches of an unwatched job waits `linger_s` for more,
unless the batch is watched live, the round is full, or a flush (cursor read, status change, end of a stream,
shutdown) asks for it now; either way each point is stored once and nothing completes before its commit."""

from __future__ import annotations

import asyncio
import time

from support.ingest import metric_batch, new_job, stored_sequences
from trainingplatform_backend.ingest import GroupCommitter, Ingestor
from trainingplatform_backend.store import Store


def test_a_round_of_small_batches_lingers_then_commits_them_together(store: Store) -> None:
    job_pk = new_job(store)
    ingestor = Ingestor(store)
    committed: list[int] = []

    async def scenario() -> float:
        committer = GroupCommitter(ingestor, linger_s=0.3)
        started = time.monotonic()
        futures = [
            committer.enqueue(
                metric_batch(ingestor, job_pk, first, 2), lambda result: committed.append(result.max_sequence)
            )
            for first in (1, 3, 5)
        ]
        await asyncio.sleep(0.1)
        assert not any(future.done() for future in futures)
        assert stored_sequences(store, job_pk) == [] and committed == []
        results = await asyncio.wait_for(asyncio.gather(*futures), timeout=10)
        assert [r.committed for r in results] == [2, 2, 2]
        assert [r.last_sequence for r in results] == [2, 4, 6]
        await committer.close()
        return time.monotonic() - started

    assert asyncio.run(scenario()) >= 0.25
    assert committed == [2, 4, 6]  # each batch published the moment it was committed, in order
    assert stored_sequences(store, job_pk) == list(range(1, 7))


def test_a_flush_a_watched_batch_a_full_round_and_the_shutdown_end_the_linger(store: Store) -> None:
    job_pk = new_job(store)
    ingestor = Ingestor(store)

    async def scenario() -> None:
        committer = GroupCommitter(ingestor, linger_s=60, inline_round_rows=8)
        # A flush (a cursor read, a status change) commits everything queued before it.
        lingering = [committer.enqueue(metric_batch(ingestor, job_pk, first, 2)) for first in (1, 3)]
        await asyncio.sleep(0.05)
        assert not any(future.done() for future in lingering)
        await asyncio.wait_for(committer.flush(), timeout=10)
        assert all(future.done() for future in lingering)
        assert stored_sequences(store, job_pk) == [1, 2, 3, 4]
        # A batch someone watches live does not wait, nor does what lingered before it.
        before = committer.enqueue(metric_batch(ingestor, job_pk, 5, 1))
        watched = committer.enqueue(metric_batch(ingestor, job_pk, 6, 1), linger=False)
        await asyncio.wait_for(asyncio.gather(before, watched), timeout=10)
        # A round that reaches inline_round_rows is committed at once.
        full = [committer.enqueue(metric_batch(ingestor, job_pk, first, 4)) for first in (7, 11)]
        await asyncio.wait_for(asyncio.gather(*full), timeout=10)
        # The shutdown commits what still lingers.
        last = committer.enqueue(metric_batch(ingestor, job_pk, 15, 1))
        await asyncio.wait_for(committer.close(), timeout=10)
        assert last.done() and last.result().committed == 1

    asyncio.run(scenario())
    assert stored_sequences(store, job_pk) == list(range(1, 16))


def test_a_flush_with_nothing_queued_returns_at_once(store: Store) -> None:
    async def scenario() -> None:
        committer = GroupCommitter(Ingestor(store), linger_s=60)
        await asyncio.wait_for(committer.flush(), timeout=1)
        await committer.close()

    asyncio.run(scenario())


def test_a_failed_round_fails_what_its_streams_queued_behind_it_and_nothing_else(store: Store) -> None:
    job_pk = new_job(store)
    ingestor = Ingestor(store)
    missing_job = job_pk + 1000  # no cursor rows: its round fails

    async def scenario() -> None:
        committer = GroupCommitter(ingestor, linger_s=60, max_round_rows=1)  # one batch per round
        failing = committer.enqueue(metric_batch(ingestor, missing_job, 1, 1))
        other = committer.enqueue(metric_batch(ingestor, job_pk, 1, 1))
        behind = committer.enqueue(metric_batch(ingestor, missing_job, 2, 1))  # would commit past the failed batch
        await asyncio.wait_for(committer.flush(), timeout=10)
        for future in (failing, behind):
            assert isinstance(future.exception(), Exception)
        assert other.result().committed == 1
        await committer.close()

    asyncio.run(scenario())
    assert stored_sequences(store, job_pk) == [1]
    assert stored_sequences(store, missing_job) == []


def test_the_linger_is_a_documented_setting_with_a_clear_error(tmp_path) -> None:
    """TP_COMMIT_LINGER_S reaches the backend; a value that is not 0 to 1 s stops `tp-backend` in one line."""
    import subprocess
    import sys
    from pathlib import Path

    from trainingplatform_backend import settings as backend_settings

    assert backend_settings.load(env={}).commit_linger_s == 0.05
    assert backend_settings.load(env={"TP_COMMIT_LINGER_S": "0"}).commit_linger_s == 0
    for wrong in ("soon", "-1", "5"):
        result = subprocess.run(
            [str(Path(sys.executable).parent / "tp-backend"), "--data-dir", str(tmp_path)],
            env={"PATH": "/usr/bin:/bin", "TP_COMMIT_LINGER_S": wrong},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert "TP_COMMIT_LINGER_S" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_flush_for_one_job_commits_what_that_job_queued_and_leaves_other_jobs_lingering(store: Store) -> None:
    # A trainer's cursor read needs its own job's batches committed, not everyone's: a read that committed every
    # job's lingering batches cut every unwatched job's group commit short (docs/capacity.md).
    job_pk, other_pk, idle_pk = new_job(store), new_job(store), new_job(store)
    ingestor = Ingestor(store)

    async def scenario() -> None:
        committer = GroupCommitter(ingestor, linger_s=60)
        lingering = committer.enqueue(metric_batch(ingestor, other_pk, 1, 2))
        await asyncio.wait_for(committer.flush(idle_pk), timeout=1)  # nothing of its own queued: at once
        assert not lingering.done() and stored_sequences(store, other_pk) == []
        mine = committer.enqueue(metric_batch(ingestor, job_pk, 1, 3))
        await asyncio.wait_for(committer.flush(job_pk), timeout=10)
        assert mine.done() and mine.result().committed == 3
        # The round took what was queued before (the other job's batch too): a round is not split by job.
        assert lingering.done()
        # A batch committing in a worker thread (PostgreSQL, or a large round) is waited for too.
        watched = committer.enqueue(metric_batch(ingestor, job_pk, 4, 2), linger=False)
        await asyncio.wait_for(committer.flush(job_pk), timeout=10)
        assert watched.done() and watched.result().committed == 2
        await committer.close()

    asyncio.run(scenario())
    assert stored_sequences(store, job_pk) == [1, 2, 3, 4, 5]
    assert stored_sequences(store, other_pk) == [1, 2]


def test_the_jobs_a_flush_can_wait_for_are_forgotten_once_committed(store: Store, monkeypatch) -> None:
    # One entry per job that queued a batch: a backend serving many short jobs must not keep one per job forever,
    # and must never forget a job whose batches are still queued.
    from trainingplatform_backend import ingest

    monkeypatch.setattr(ingest, "_MAX_TRACKED_JOBS", 2)
    first, second, third, fourth = (new_job(store) for _ in range(4))
    ingestor = Ingestor(store)

    async def scenario() -> None:
        committer = GroupCommitter(ingestor, linger_s=60)
        for job_pk in (first, second):
            committer.enqueue(metric_batch(ingestor, job_pk, 1, 1))
        await committer.flush()
        lingering = committer.enqueue(metric_batch(ingestor, third, 1, 1))  # the committed two are dropped
        assert set(committer._last_queued) == {third}
        other = committer.enqueue(metric_batch(ingestor, fourth, 1, 1))
        await asyncio.wait_for(committer.flush(first), timeout=1)  # forgotten, and nothing of it queued
        assert not lingering.done() and not other.done()
        await asyncio.wait_for(committer.flush(third), timeout=10)
        assert lingering.done() and other.done()
        await committer.close()

    asyncio.run(scenario())
    assert [stored_sequences(store, job_pk) for job_pk in (first, second, third, fourth)] == [[1]] * 4
