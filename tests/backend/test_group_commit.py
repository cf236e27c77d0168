"""The group committer in-process: small SQLite rounds commit on the event loop unless another writer holds the
database, in which case the round waits in a worker thread; either way each point is stored once."""

from __future__ import annotations

import asyncio
import threading

import pytest
from support.gc_churn import young_objects_seen
from support.ingest import metric_batch, new_job, stored_sequences
from trainingplatform.common.v1 import common_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_backend.ingest import GroupCommitter, Ingestor, MetricColumns
from trainingplatform_backend.store import Store


def test_commit_without_waiting_commits_on_sqlite_only_when_the_write_lock_is_free(store: Store) -> None:
    ingestor = Ingestor(store)
    job_pk = new_job(store)
    assert store.try_write_lock()
    try:
        # Another writer holds the database: nothing is done, the caller must use the waiting path.
        assert ingestor.commit_without_waiting([metric_batch(ingestor, job_pk, 1, 3)]) is None
    finally:
        store.release_write_lock()
    assert stored_sequences(store, job_pk) == []

    results = ingestor.commit_without_waiting([metric_batch(ingestor, job_pk, 1, 3)])
    if not store.is_sqlite:
        assert results is None  # PostgreSQL commits wait on the network: never on the event loop
        assert stored_sequences(store, job_pk) == []
        return
    assert results is not None
    assert [(r.committed, r.duplicates, r.last_sequence) for r in results] == [(3, 0, 3)]
    assert stored_sequences(store, job_pk) == [1, 2, 3]
    # The lock was released: a blocking commit goes through at once, and a resend is a duplicate.
    again = ingestor.commit([metric_batch(ingestor, job_pk, 3, 2)])
    assert [(r.committed, r.duplicates, r.last_sequence) for r in again] == [(1, 1, 4)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_round_waits_for_a_writer_that_holds_the_database_and_loses_nothing(store: Store) -> None:
    # SQLite only: PostgreSQL has no process-wide write lock (row locks serialise its writers).
    ingestor = Ingestor(store)
    job_pk = new_job(store)

    async def scenario() -> list[tuple[int, int, int]]:
        committer = GroupCommitter(ingestor)
        committer.start()
        held = threading.Event()
        release = threading.Event()

        def other_writer() -> None:
            with store.write_lock():
                held.set()
                release.wait(5)

        writer = threading.Thread(target=other_writer)
        writer.start()
        held.wait(10)
        # Small rounds while the lock is held: they cannot commit on the loop, so they wait in a worker thread.
        futures = [committer.enqueue(metric_batch(ingestor, job_pk, first, 2)) for first in (1, 3, 5)]
        # Had the loop waited for the lock itself, this sleep would end only once the writer gave up (5 s), with
        # the rounds committed by then.
        await asyncio.sleep(0.2)
        assert not any(future.done() for future in futures)
        release.set()
        results = await asyncio.wait_for(asyncio.gather(*futures), timeout=10)
        # Once the database is free, a small round commits again (on the loop for SQLite).
        results.append(await asyncio.wait_for(committer.submit(metric_batch(ingestor, job_pk, 7, 1)), timeout=10))
        writer.join()
        await committer.close()
        return [(r.committed, r.duplicates, r.last_sequence) for r in results]

    assert asyncio.run(scenario()) == [(2, 0, 2), (2, 0, 4), (2, 0, 6), (1, 0, 7)]
    assert stored_sequences(store, job_pk) == list(range(1, 8))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_validating_a_batch_allocates_no_tracked_object_per_point_beyond_its_rows(store: Store) -> None:
    # Such objects, alive mid-validation, are promoted by the collector and set off full collections: 0.58 us a
    # point of GC ingesting 5,000-point messages when the checks transposed the rows with zip(*rows).
    ingestor = Ingestor(store)
    job_pk = new_job(store)
    count = 5000
    points = [
        telemetry_pb2.MetricPoint(key="train/loss", value=0.5, step=seq, wall_time=1.0, sequence=seq)
        for seq in range(1, count + 1)
    ]
    records = [
        telemetry_pb2.LogRecord(level=common_pb2.LOG_LEVEL_INFO, message="m", wall_time=1.0, sequence=seq)
        for seq in range(1, count + 1)
    ]
    columns = MetricColumns.of(
        telemetry_pb2.MetricColumns(
            keys=["train/loss"],
            key_indexes=[0] * count,
            values=[0.5] * count,
            wall_times=[1.0] * count,
            sequences=range(1, count + 1),
        )
    )
    # A row is a tuple per point by design; anything else per point is churn.
    for name, prepare in (
        ("points", lambda: ingestor.prepare_metrics(job_pk, points)),
        ("logs", lambda: ingestor.prepare_logs(job_pk, records)),
    ):
        seen = young_objects_seen(prepare)
        assert sum(n for kind, n in seen.items() if kind != "tuple") < count // 10, (name, seen.most_common(5))
    seen = young_objects_seen(lambda: ingestor.prepare_metrics(job_pk, columns).flat())
    assert sum(seen.values()) < count // 10, seen.most_common(5)
