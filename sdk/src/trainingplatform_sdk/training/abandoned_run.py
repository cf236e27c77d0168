"""`python -m trainingplatform_sdk.training.abandoned_run OUTPUT_DIR STATUS REASON`: ends the MLflow run of a
training process that died before it could end it itself (see `recorder.end_abandoned_run`).

The trainer service runs it in a process of its own, with the training process's environment, when a run's process
has exited without ending its MLflow run: MLflow's import and a slow tracking server stay out of the service's
event loop. It prints at most one line (what it did, or why it could not) and exits 0, or 1 when the tracking
store did not answer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trainingplatform_sdk.errors import TrackingError
from trainingplatform_sdk.training.recorder import end_abandoned_run

__all__ = ["main"]

_STATUSES = ("FINISHED", "FAILED", "KILLED")


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns its exit code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[1] not in _STATUSES:
        print(f"usage: abandoned_run OUTPUT_DIR {{{','.join(_STATUSES)}}} REASON", file=sys.stderr)
        return 2
    output_dir, status, reason = Path(args[0]), args[1], args[2]
    try:
        line = end_abandoned_run(output_dir, status, reason, os.environ)
    except TrackingError as error:
        print(f"the MLflow run of {output_dir} is left RUNNING: {error}")
        return 1
    if line:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
