"""`run_until_signal`, the loop every service runs: a signal stops the service, and what was still finishing when
it stopped is let finish instead of being cancelled by the event loop's teardown."""

from __future__ import annotations

import asyncio
import os
import signal

from trainingplatform_sdk.server.lifecycle import run_until_signal


def test_a_task_still_finishing_when_the_service_stopped_is_let_finish() -> None:
    # As gRPC's coroutine of a call the client cancelled during the drain: cancelled by asyncio.run's teardown, it
    # made the backend log "Exception not handled ... in servicer method" (a make test run, 2026-12-03).
    finished: list[str] = []
    stopped: list[bool] = []

    class Service:
        async def stop(self) -> None:
            stopped.append(True)

            async def finishing() -> None:
                try:
                    await asyncio.sleep(0.2)
                    finished.append("done")
                except asyncio.CancelledError:
                    finished.append("cancelled")
                    raise

            asyncio.get_running_loop().create_task(finishing())

    async def start() -> Service:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        return Service()

    asyncio.run(run_until_signal(start()))
    assert stopped == [True]
    assert finished == ["done"]
