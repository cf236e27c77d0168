"""The ingest budget in-process (`ingest.IngestBudget`, TP_MAX_INGEST_BYTES_IN_FLIGHT): what fits goes in at once,
the rest waits first come first served, a message larger than the whole budget goes in alone, a cancelled wait
passes its turn, and a share held for a commit is given back when the commit ends, however it ends. The memory
it bounds, on a real backend: tests/security/test_ingest_memory.py."""

from __future__ import annotations

import asyncio

import pytest
from trainingplatform_backend.ingest import IngestBudget


def test_what_fits_goes_in_at_once_and_the_rest_waits_its_turn_in_order() -> None:
    async def scenario() -> None:
        budget = IngestBudget(100)
        await budget.acquire(60)
        await budget.acquire(40)
        assert budget.held == 100
        order: list[str] = []

        async def take(name: str, size: int) -> None:
            await budget.acquire(size)
            order.append(name)

        large = asyncio.ensure_future(take("large", 80))
        await asyncio.sleep(0)
        small = asyncio.ensure_future(take("small", 10))  # would fit beside the large one, but came later
        await asyncio.sleep(0)
        assert order == []
        budget.release(40)  # 60 held: the large one still does not fit, so the small one behind it waits too
        await asyncio.sleep(0)
        assert order == []
        budget.release(60)
        await asyncio.gather(large, small)
        assert order == ["large", "small"]
        assert budget.held == 90

    asyncio.run(scenario())


def test_a_message_larger_than_the_budget_goes_in_alone() -> None:
    async def scenario() -> None:
        budget = IngestBudget(100)
        await budget.acquire(500)  # nothing held: let in, never refused
        waiting = asyncio.ensure_future(budget.acquire(1))
        await asyncio.sleep(0)
        assert not waiting.done()
        budget.release(500)
        await waiting
        assert budget.held == 1

    asyncio.run(scenario())


def test_a_cancelled_wait_passes_its_turn_and_holds_nothing() -> None:
    async def scenario() -> None:
        budget = IngestBudget(100)
        await budget.acquire(90)
        first = asyncio.ensure_future(budget.acquire(50))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(budget.acquire(10))
        await asyncio.sleep(0)
        assert not second.done()  # behind the first
        first.cancel()  # its client went away
        await second  # the next in line goes in, without any release
        assert budget.held == 100
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(scenario())


@pytest.mark.parametrize("outcome", ["committed", "failed", "cancelled"])
def test_a_share_held_for_a_commit_is_given_back_when_the_commit_ends(outcome: str) -> None:
    async def scenario() -> None:
        budget = IngestBudget(100)
        await budget.acquire(100)
        commit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        budget.hold(100, commit)
        waiting = asyncio.ensure_future(budget.acquire(30))
        await asyncio.sleep(0)
        assert not waiting.done()
        if outcome == "committed":
            commit.set_result(1)
        elif outcome == "failed":
            commit.set_exception(RuntimeError("the database went away"))
            commit.exception()  # retrieved, as the stream does
        else:
            commit.cancel()
        await waiting
        assert budget.held == 30

    asyncio.run(scenario())


def test_the_budget_is_a_setting_of_at_least_one_byte_named_in_its_error() -> None:
    from trainingplatform_backend import settings as backend_settings

    assert backend_settings.load(env={}).max_ingest_bytes_in_flight == 16 * 1024 * 1024
    assert backend_settings.load(env={"TP_MAX_INGEST_BYTES_IN_FLIGHT": "1"}).max_ingest_bytes_in_flight == 1
    for wrong in ("0", "-5", "lots"):
        with pytest.raises(ValueError, match="TP_MAX_INGEST_BYTES_IN_FLIGHT"):
            backend_settings.load(env={"TP_MAX_INGEST_BYTES_IN_FLIGHT": wrong})
