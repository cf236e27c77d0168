"""The `tp` console script's entry point, outside the `trainingplatform_sdk` package on purpose.

Importing `tp` takes a few tenths of a second (grpc, protobuf, the SDK): a Ctrl-C then raised KeyboardInterrupt in
the console script's own `from trainingplatform_sdk.cli import main`, before `main`'s handling of it, and printed a
Python traceback. This module imports nothing of the SDK before it handles Ctrl-C: a Ctrl-C during the import, or
anywhere in the command that lets KeyboardInterrupt through, exits 130 without a traceback.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130
"""The exit status after Ctrl-C (128 + SIGINT), as a shell reports a command that SIGINT ended."""


def main() -> int:
    """`tp`: `trainingplatform_sdk.cli.main.main`, imported and run with Ctrl-C handled (exit 130)."""
    try:
        from trainingplatform_sdk.cli.main import main as tp_main

        return tp_main()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
