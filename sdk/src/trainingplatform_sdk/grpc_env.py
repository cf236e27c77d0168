"""gRPC's environment, set in every process of the platform before grpc is imported: fork handlers off, and
gRPC's own log lines only from ERROR up.

A training process forks DataLoader workers while its TrainingLogger's streams are open (and the backend's
`--workers` supervisor forks to restart a worker). With gRPC's fork handlers on, a fork that lands while gRPC
starts one of its threads crashed the parent or the child with a segmentation fault (tests/sdk/test_fork_safety.py).
A forked child never uses the parent's channels (the logger turns itself off there), so nothing needs the handlers.

gRPC's core also prints its own log lines on stderr below ERROR (a failed TLS handshake, for one, at INFO), around
the one clear line the platform's programs print for the same failure: `GRPC_VERBOSITY` defaults to ERROR here.

gRPC reads `GRPC_ENABLE_FORK_SUPPORT` and `GRPC_VERBOSITY` when it is imported, so this module is the first thing
the SDK's package imports. A process that set a variable keeps its choice; one that imported grpc before the SDK
without setting it keeps gRPC's handlers on, and the first TrainingLogger of the process says so
(`warn_if_fork_handlers_on`).
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["FORK_HANDLERS_LEFT_ON", "FORK_SUPPORT_ENV", "VERBOSITY_ENV", "warn_if_fork_handlers_on"]

FORK_SUPPORT_ENV = "GRPC_ENABLE_FORK_SUPPORT"
VERBOSITY_ENV = "GRPC_VERBOSITY"

#: True when grpc was imported before this SDK with `GRPC_ENABLE_FORK_SUPPORT` unset: its fork handlers are on.
FORK_HANDLERS_LEFT_ON = "grpc" in sys.modules and FORK_SUPPORT_ENV not in os.environ

os.environ.setdefault(FORK_SUPPORT_ENV, "false")
os.environ.setdefault(VERBOSITY_ENV, "ERROR")

_LOG = logging.getLogger("trainingplatform_sdk.logger")
_warned = False


def warn_if_fork_handlers_on() -> None:
    """Logs once per process, as a warning with the fix, that gRPC's fork handlers are on in this process."""
    global _warned
    if FORK_HANDLERS_LEFT_ON and not _warned:
        _warned = True
        _LOG.warning(
            "grpc was imported before trainingplatform_sdk with %s unset, so gRPC's fork handlers are on: a fork "
            "(a DataLoader worker) while gRPC starts a thread can crash this process; set %s=false in the "
            "environment, or import trainingplatform_sdk before grpc",
            FORK_SUPPORT_ENV,
            FORK_SUPPORT_ENV,
        )
