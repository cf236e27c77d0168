"""The log of refused calls: one line for the first refusal of each reason, then one summary line per reason
and interval, so a flood of bad calls cannot flood the log (2,000 refusals a second would otherwise write a
line each)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

__all__ = ["SUMMARY_INTERVAL_S", "RefusalLog"]

SUMMARY_INTERVAL_S = 60.0
"""How often the refusals counted since the last line are summarised, per reason."""


@dataclass
class _Window:
    count: int = 0
    last_method: str = ""
    flush_scheduled: bool = False


class RefusalLog:
    """Counts refused calls per reason and logs them at INFO: the first of a reason at once, the rest as a
    count per interval. Reasons are the refusals' messages, which never contain a token.

    Args:
        log: Where the lines go.
        interval_s: The summary interval.
    """

    def __init__(self, log: logging.Logger, interval_s: float = SUMMARY_INTERVAL_S) -> None:
        self._log = log
        self._interval_s = interval_s
        self._windows: dict[str, _Window] = {}
        self._quiet_until: dict[str, float] = {}

    def refused(self, method: str, reason: str) -> None:
        """Records one refused call of `method` (`/package.Service/Method`) for `reason`."""
        now = time.monotonic()
        if now >= self._quiet_until.get(reason, 0.0):
            self._quiet_until[reason] = now + self._interval_s
            self._log.info(
                "refused %s: %s (more refusals for this reason are counted, one line per %.0f s)",
                method,
                reason,
                self._interval_s,
            )
            return
        window = self._windows.setdefault(reason, _Window())
        window.count += 1
        window.last_method = method
        if not window.flush_scheduled:
            window.flush_scheduled = True
            delay = max(0.0, self._quiet_until[reason] - now)
            asyncio.get_running_loop().call_later(delay, self._flush, reason)

    def _flush(self, reason: str) -> None:
        window = self._windows.pop(reason, None)
        if window is None or not window.count:
            return
        self._quiet_until[reason] = time.monotonic() + self._interval_s
        self._log.info(
            "refused %d more call(s) in the last %.0f s: %s (last: %s)",
            window.count,
            self._interval_s,
            reason,
            window.last_method,
        )
