"""Log records and status changes of a script run by `tp run`, relayed to `tp run` on the script's stderr.

A job's log stream has exactly one writer: each writer numbers its records 1, 2, 3... and a second writer's
records would collide with the first's and be dropped as duplicates. Under `tp run`, `tp run` itself writes the
job's log stream (the script's stdout and stderr lines), so a `TrainingLogger` of the same job in the script
(`TP_RUN_JOB_ID` names the job) does not stream its log records: it writes each one, as a marked line, to file
descriptor 2, and `tp run` turns the line back into a record with its level, epoch and step. Status changes
take the same path, so that `tp run` moves the job to its final status after the last log line. Metrics, epoch
summaries and run information still go straight from the script to the backend.

A relayed line is `RELAY_MARKER` followed by one JSON object and a newline; it never contains another newline.
"""

from __future__ import annotations

import json
import os
from typing import Any

from trainingplatform_sdk.telemetry.values import utf8_text

__all__ = ["RELAY_JOB_ENV", "RELAY_MARKER", "parse_relayed", "relay_job_id", "write_relayed"]

RELAY_JOB_ENV = "TP_RUN_JOB_ID"
"""Set by `tp run` in the script's environment: the job whose log records and statuses are relayed."""

RELAY_MARKER = "\x1etp-relay "
"""The start of a relayed line (an ASCII record separator, then a tag)."""


def relay_job_id() -> str | None:
    """The job whose records this process relays to `tp run`, or None outside `tp run`."""
    return os.environ.get(RELAY_JOB_ENV, "").strip() or None


def write_relayed(record: dict[str, Any], fd: int = 2) -> bool:
    """Writes one relayed line to `fd` (stderr); False when it cannot be written (`tp run` is gone). Never raises.

    What UTF-8 cannot encode (a lone surrogate, as in a file name decoded with surrogateescape) is replaced by `?`,
    as in the records a logger streams itself.
    """
    try:
        line = RELAY_MARKER + json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        data = utf8_text(line).encode("utf-8")
    except (TypeError, ValueError):
        return False
    try:
        while data:
            written = os.write(fd, data)
            data = data[written:]
    except OSError:
        return False
    return True


def parse_relayed(line: str) -> tuple[str, dict[str, Any]] | None:
    """Splits a line holding a relayed record (with or without its newline) into the text written before the
    marker on the same line (usually empty) and the record; None when the line holds none."""
    index = line.find(RELAY_MARKER)
    if index < 0:
        return None
    try:
        record = json.loads(line[index + len(RELAY_MARKER) :])
    except ValueError:
        return None
    return (line[:index], record) if isinstance(record, dict) else None
