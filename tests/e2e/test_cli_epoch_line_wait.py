"""`tp watch` prints a script's own "Epoch N/M: ..." line once it has waited EPOCH_LINE_WAIT_S for the epoch's
summary, even when nothing else comes: a `tp run` script or a custom TrainingLogger script that reports no epoch
summaries, quiet for the rest of its epoch.

The line (and every line after it) was held until the next event of the job came, a whole epoch late: the wait was
only looked at when an event arrived."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path

from support.backend import BackendProcess
from support.tp import TP, backend_env
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.cli.output import EPOCH_LINE_WAIT_S
from trainingplatform_sdk.clients import JobsClient


def _lines(stream: object, into: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line.rstrip("\n"))
    into.put(None)


def _until(lines: queue.Queue[str | None], seen: list[str], text: str, timeout: float) -> None:
    """Reads `tp watch`'s lines into `seen` until one holds `text`; fails when none does within `timeout`."""
    deadline = time.monotonic() + timeout
    while not any(text in line for line in seen):
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"tp watch printed no {text!r} within {timeout}s:\n" + "\n".join(seen)) from None
        assert line is not None, f"tp watch ended before printing {text!r}:\n" + "\n".join(seen)
        seen.append(line)


def test_watch_prints_an_unanswered_epoch_line_before_the_next_event_comes(
    module_backend: BackendProcess, tmp_path: Path
) -> None:
    backend = module_backend
    with JobsClient(backend.address, backend.internal_token) as client:
        created = client.create_job(framework="timm", model="resnet10t", dataset="digits", epochs=2, dispatch=False)
    job_id = created.job.job_id
    logger = TrainingLogger(
        job_id, backend_address=backend.address, token=created.telemetry_token, spool_dir=tmp_path / "spool"
    )
    process = None
    try:
        logger.update_status("running")
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
        _until(lines, seen, "status RUNNING", 60)  # the history is printed: what follows is live

        logger.log_message("Epoch 1/2: loss 0.50")  # no epoch summary answers it, and nothing follows it
        logger.log_message("checkpoint saved")
        assert logger.flush(timeout=30)
        # Only the wait for the summary (and a subscription's delivery) stands between the lines and the screen.
        _until(lines, seen, "checkpoint saved", EPOCH_LINE_WAIT_S + 15)

        logger.log_message("Epoch 2/2: loss 0.25")  # the next event comes only now
        logger.update_status("completed")
        logger.close(timeout=30)
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
    printed = [line.split("] ", 1)[1] for line in seen if line.startswith("[")]
    assert printed == ["Epoch 1/2: loss 0.50", "checkpoint saved", "Epoch 2/2: loss 0.25"], "\n".join(seen)
