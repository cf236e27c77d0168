"""The spool of an ended run, still locked by another process for a while: the service waits for it, delivers it,
and only then reports the final status.

A forked data loader worker of the ended training process may hold the spool's lock for a moment after the
process itself has exited. Here the FakeAdapter starts a process that shares the lock (`fake_spool_holder_s`) and
keeps it for a few seconds after the training process has exited.
"""

from __future__ import annotations

import json
from pathlib import Path

from support.backend import BackendProcess
from trainingplatform.trainer.v1 import trainer_pb2

from .trainer_process import TrainerProcess, spec, wait_until

HOLD_S = 4.0


def test_a_spool_locked_after_the_run_ended_is_delivered_before_the_status(
    fake_trainer: TrainerProcess, backend: BackendProcess
) -> None:
    job_id, token = backend.create_job()
    backend.stop()  # the process spools everything and leaves it behind
    extra = {"fake_batches": 20, "fake_batch_s": 0.01, "fake_spool_holder_s": HOLD_S}
    run_id = fake_trainer.start_training(job_id, spec(epochs=2, extra=extra), backend.address, token)
    run = fake_trainer.wait_state(run_id, trainer_pb2.RUN_STATE_SUCCEEDED, timeout=180)
    backend.restart()
    wait_until(lambda: backend.job_status(job_id) == "COMPLETED", timeout=120, what="the job to complete")

    holder = json.loads(Path(run.output_dir, "spool_holder.json").read_text())
    assert holder["released"] - holder["acquired"] >= HOLD_S
    steps = [row[3] for row in backend.metric_rows(job_id) if row[1] == "train/batch_loss"]
    assert steps == list(range(1, 41))  # every batch loss, once, in order, before the final status
    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "COMPLETED"]
    assert backend.cursor_row(job_id)["duplicate_count"] == 0
    assert "in use by another process" in fake_trainer.log_text()  # the service met the lock and waited
