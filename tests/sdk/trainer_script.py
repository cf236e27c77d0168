"""A stand-in trainer process for the SDK tests: logs numbered points through TrainingLogger.from_env.

The value of each point is its index across runs (`--start` onwards), so a test can tell every point apart
after the process is killed and restarted. Progress goes to stdout as JSON lines.

    python trainer_script.py JOB_ID SPOOL_DIR START COUNT MODE

MODE is one of:
  - `close`: log, close, print the report;
  - `hang-when-spooled`: log, wait until every point is in the spool, print `ready`, then wait to be killed;
  - `spool-then-close`: the same, then close;
  - `exit-without-close`: log, set RUNNING and return (the atexit hook delivers);
  - `stream`: log forever, a point every millisecond, printing progress.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from trainingplatform_sdk import LoggerSettings, TrainingLogger


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main() -> None:
    job_id, spool_dir, start, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    settings = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5)
    logger = TrainingLogger.from_env(job_id, spool_dir=spool_dir, settings=settings)
    emit("started", replayed=logger.stats.replayed)
    if mode == "stream":
        index = start
        while True:
            logger.log_metric("train/index", float(index), step=index)
            index += 1
            if index % 100 == 0:
                emit("progress", logged=index - start)
            time.sleep(0.001)
    for index in range(start, start + count):
        logger.log_metric("train/index", float(index), step=index)
    if mode in ("hang-when-spooled", "spool-then-close"):
        while logger.stats.spooled < count:
            time.sleep(0.01)
        emit("ready", stats=dataclasses.asdict(logger.stats))
        if mode == "hang-when-spooled":
            time.sleep(3600)
    if mode == "exit-without-close":
        logger.update_status("running")
        emit("exiting")  # the atexit hook must deliver everything
        return
    report = logger.close(60)
    emit("closed", report=dataclasses.asdict(report))


if __name__ == "__main__":
    main()
