"""Ten jobs started within a second on one trainer service, all tracked in the default local MLflow store.

Every training process opens the same `sqlite:///<data_dir>/mlflow.db`: the first ones create its schema and the
experiment while the others do the same. All ten must train and end SUCCEEDED, each with its own MLflow run.
"""

from __future__ import annotations

import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from trainer_service.trainer_process import FAKE_ADAPTER, TERMINAL_STATES, TrainerProcess, spec, wait_until
from trainingplatform.trainer.v1 import trainer_pb2

JOBS = 10


@pytest.mark.timeout(420)
def test_ten_concurrent_jobs_on_one_trainer_with_the_local_mlflow_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "trainer"
    trainer = TrainerProcess(
        data_dir,
        env={
            "TP_MAX_CONCURRENT_JOBS": str(JOBS),
            "TP_TRAINER_ADAPTER": FAKE_ADAPTER,
            # The default: the local SQLite store in the data directory, created by the first job.
            "TP_MLFLOW_ENABLED": "true",
            "MLFLOW_TRACKING_URI": "",
            "MLFLOW_EXPERIMENT_NAME": "",
        },
    ).start()
    try:
        jobs = [f"job-{uuid.uuid4().hex}" for _ in range(JOBS)]
        job_spec = spec(epochs=1, extra={"fake_batches": 2, "fake_batch_s": 0.01})
        with ThreadPoolExecutor(JOBS) as pool:  # all started within a second
            run_ids = list(pool.map(lambda job: trainer.start_training(job, job_spec), jobs))

        runs = wait_until(
            lambda: (
                (r := [trainer.get(run_id) for run_id in run_ids]) and all(x.state in TERMINAL_STATES for x in r) and r
            ),
            360,
            "every run to end",
        )
        failed = {
            run.job_id: f"{trainer_pb2.RunState.Name(run.state)} {run.error_message}\n" + trainer.train_log(run)[-1500:]
            for run in runs  # type: ignore[attr-defined]
            if run.state != trainer_pb2.RUN_STATE_SUCCEEDED
        }
        assert not failed, f"{len(failed)} of {JOBS} runs did not succeed:\n" + "\n".join(failed.values())

        with sqlite3.connect(data_dir / "mlflow.db") as db:
            names = sorted(row[0] for row in db.execute("SELECT name FROM runs WHERE status = 'FINISHED'"))
            experiments = [row[0] for row in db.execute("SELECT name FROM experiments WHERE name = 'trainingplatform'")]
        assert names == sorted(jobs)
        assert experiments == ["trainingplatform"]
    finally:
        trainer.close()
