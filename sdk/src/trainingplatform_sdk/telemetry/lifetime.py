"""The loggers of this process that are not closed yet: closed at exit, turned off in a forked child.

A DataLoader worker is a fork of the training process: it shares the parent's channel and spool, so its copies of
the parent's loggers must never send, write or close anything.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Protocol

__all__ = ["register", "unregister"]

_LOG = logging.getLogger("trainingplatform_sdk.logger")


class _Closable(Protocol):
    job_id: str

    def close(self) -> object: ...

    def disable_in_forked_child(self) -> None: ...


_LIVE: set[_Closable] = set()
_LIVE_LOCK = threading.Lock()


def register(logger: _Closable) -> None:
    """Closes `logger` at exit unless it was closed before, and turns it off in forked children."""
    with _LIVE_LOCK:
        _LIVE.add(logger)


def unregister(logger: _Closable) -> None:
    """Forgets a closed logger."""
    with _LIVE_LOCK:
        _LIVE.discard(logger)


def _close_at_exit() -> None:
    with _LIVE_LOCK:
        loggers = list(_LIVE)
    for logger in loggers:
        try:
            logger.close()
        except Exception:
            _LOG.exception("job %s: closing the telemetry logger at exit failed", logger.job_id)


def _after_fork_in_child() -> None:
    # A fork can happen while another thread holds the lock; the child has no such thread, so a new lock is safe.
    global _LIVE_LOCK
    _LIVE_LOCK = threading.Lock()
    for logger in list(_LIVE):
        logger.disable_in_forked_child()
    _LIVE.clear()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
