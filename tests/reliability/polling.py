"""Polling with a deadline (how the reliability tests wait, never with fixed sleeps) and a status watcher."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from support.backend import BackendProcess

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """Polls `condition` until it returns a truthy value, and returns that value.

    Raises:
        AssertionError: `timeout` seconds passed first; the message says what was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)


class StatusWatch:
    """Watches a job from a thread and records how many metric and log rows were stored when it first saw `status`.

    It reads the status first and the rows after, and rows only grow: a status seen with fewer rows than the
    trainer logged before it means the status was committed before them.

        with StatusWatch(backend, job_id, "COMPLETED") as watch:
            ...  # the trainer logs, then reports COMPLETED
        assert watch.rows_when_seen == (metrics_logged, logs_logged)
    """

    def __init__(self, backend: BackendProcess, job_id: str, status: str) -> None:
        self._backend = backend
        self._job_id = job_id
        self._status = status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watch-{status}", daemon=True)
        self.rows_when_seen: tuple[int, int] | None = None

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self._backend.job_status(self._job_id) == self._status:
                self.rows_when_seen = (
                    len(self._backend.metric_sequences(self._job_id)),
                    len(self._backend.log_sequences(self._job_id)),
                )
                return
            self._stop.wait(0.002)

    def __enter__(self) -> StatusWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # The status may be committed just before the block ends: give the thread time to see it.
        if exc[0] is None:
            wait_until(lambda: self.rows_when_seen is not None, 60, f"the job {self._status}")
        self._stop.set()
        self._thread.join(10)
