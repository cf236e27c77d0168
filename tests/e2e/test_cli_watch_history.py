"""`tp watch` of a running job tells its story in the order it happened: the history (status changes, log lines,
the progress bar of its metrics) interleaved in time, as the lines and points were logged and the statuses
committed, and then live, with no line missing or printed twice.

It printed every status change first, then a progress bar line from the metrics, then every log line: a job's
"status RUNNING" came before the lines its trainer logged while it was still PENDING."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path

from support.backend import BackendProcess
from support.tp import TP, backend_env
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import JobsClient


def _lines(stream: object, into: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line.rstrip("\n"))
    into.put(None)


def _until(lines: queue.Queue[str | None], seen: list[str], text: str) -> None:
    """Reads `tp watch`'s lines into `seen` until one holds `text`."""
    deadline = time.monotonic() + 60
    while not any(text in line for line in seen):
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, f"tp watch ended before printing {text!r}:\n" + "\n".join(seen)
        seen.append(line)


def _order(seen: list[str], *texts: str) -> list[int]:
    """The index of the one line holding each text (each must be printed exactly once)."""
    indexes = []
    for text in texts:
        found = [index for index, line in enumerate(seen) if text in line]
        assert len(found) == 1, f"{text!r} printed {len(found)} times:\n" + "\n".join(seen)
        indexes.append(found[0])
    return indexes


def test_watch_replays_the_history_in_time_order_then_follows_live(
    module_backend: BackendProcess, tmp_path: Path
) -> None:
    backend = module_backend
    with JobsClient(backend.address, backend.internal_token) as client:
        created = client.create_job(
            framework="timm", model="resnet10t", dataset="digits", epochs=2, dispatch=False, display_name="story"
        )
    job_id = created.job.job_id
    logger = TrainingLogger(
        job_id, backend_address=backend.address, token=created.telemetry_token, spool_dir=tmp_path / "spool"
    )
    process = None
    try:
        logger.log_message("preparing the data set")  # while PENDING
        logger.update_status("running", reason="started")
        # A status is placed by the time the backend committed it, a round trip after the call: what is logged
        # after it waits for it here, so that the order is certain.
        assert logger.flush(timeout=30)
        logger.log_metric("train/loss", 0.9, step=0, epoch=0)
        logger.log_message("first batch")
        logger.log_epoch_summary(0, {"val/accuracy": 0.5}, duration_seconds=1.0)
        logger.log_message("Epoch 1/2: val/accuracy=0.5")
        logger.log_message("after epoch 1")
        assert logger.flush(timeout=30)

        process = subprocess.Popen(
            [TP, "watch", job_id[:8]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=backend_env(backend, tmp_path / "no-config.json"),
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
        seen: list[str] = []
        _until(lines, seen, "after epoch 1")  # the history is printed: what follows is live

        logger.log_metric("train/loss", 0.5, step=1, epoch=1)
        logger.log_message("live line")
        logger.log_epoch_summary(1, {"val/accuracy": 0.7}, duration_seconds=1.0)
        logger.log_message("Epoch 2/2: val/accuracy=0.7")
        logger.update_status("completed")
        assert logger.flush(timeout=30)
        while (line := lines.get(timeout=60)) is not None:
            seen.append(line)
        process.wait(timeout=60)
        assert process.stderr is not None
        err = process.stderr.read()
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.communicate()
        logger.close(timeout=10)

    assert (process.returncode, err) == (0, ""), "\n".join(seen)
    story = _order(
        seen,
        "status PENDING",
        "preparing the data set",
        "status RUNNING (started)",
        "epoch 1/2 [",  # the first progress bar line: the first metric point, logged after RUNNING
        "first batch",
        "epoch 1/2 done in 1.0s",
        "after epoch 1",
        "live line",
        "epoch 2/2 done in 1.0s",
        "status COMPLETED",
    )
    assert story == sorted(story), "\n".join(seen)
    assert not any("Epoch 1/2:" in line or "Epoch 2/2:" in line for line in seen), "\n".join(seen)
