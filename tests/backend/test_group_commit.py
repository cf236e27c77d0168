"""The group committer in-process: small SQLite rounds commit on the event loop unless another writer holds the
database, in which case the round waits in a worker thread; either way each point is stored once."""

from __future__ import annotations

import asyncio
import threading

import pytest
from support.ingest import metric_batch, new_job, stored_sequences
from trainingplatform_backend.ingest import GroupCommitter, Ingestor
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
