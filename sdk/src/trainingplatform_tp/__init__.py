"""The `tp` console script's entry point, outside the `trainingplatform_sdk` package on purpose.

Importing `tp` takes a few tenths of a second (grpc, protobuf, the SDK): a Ctrl-C then raised KeyboardInterrupt in
the console script's own `from trainingplatform_sdk.cli import main`, before `main`'s handling of it, and printed a
Python traceback. This module imports nothing of the SDK before it handles Ctrl-C: the import and the command both
run under `interrupt_once`, and a Ctrl-C anywhere in them exits 130 without a traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

EXIT_INTERRUPTED = 130
"""The exit status after Ctrl-C (128 + SIGINT), as a shell reports a command that SIGINT ended."""


def interrupt_once(signum: int, frame: FrameType | None) -> None:
    """The SIGINT handler of `tp`: the first Ctrl-C raises KeyboardInterrupt and every later one is ignored, so that
    what the first one starts (saying what was left, closing the gRPC channel) cannot itself be interrupted. A
    second Ctrl-C that cut grpc's channel close short left a channel whose collection waited forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def install_interrupt_handler() -> None:
    """Makes `interrupt_once` the SIGINT handler, for the process's life, unless SIGINT has another handler than
    Python's default (a command's own, as `tp up` and `tp run` set, or SIG_IGN, as a shell gives a background job)
    or this is not the main thread (where Python allows no handler to be set)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt_once)


def main() -> int:
    """`tp`: `trainingplatform_sdk.cli.main.main`, imported and run with Ctrl-C handled (exit 130)."""
    install_interrupt_handler()
    try:
        from trainingplatform_sdk.cli.main import main as tp_main

        return tp_main()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
