"""Child processes that end with their parent: `tp up`'s services and `tp-backend --workers`'s workers."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def parent_death_signal() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGTERM when its parent dies (Linux), or None elsewhere.

    `prctl` is looked up here, before the fork, so the child only makes two system calls; in this process's own
    symbols (libc is loaded), not through `ctypes.util.find_library`, which runs `ldconfig -p` as a child process:
    a supervisor's first child then was not a worker, and a SIGTERM sent once "a worker started" could arrive before
    the supervisor's handler (seen as a flaky test under load)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        try:
            prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
        except (OSError, AttributeError):
            return None
    parent = os.getpid()

    def set_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would send the signal
            os.kill(os.getpid(), signal.SIGTERM)

    return set_signal
