"""A trainer service's /metrics (TP_METRICS_PORT) against a real `tp-trainer-timm` process running the FakeAdapter
(no torch in the training process): runs started, ended by state, running now, starts refused when full."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.backend import free_port
from support.metrics import scrape, scrape_until
from trainer_service.trainer_process import FAKE_ADAPTER, TrainerProcess, spec
from trainingplatform.trainer.v1 import trainer_pb2

STARTED = "tp_trainer_trainings_started_total"
ENDED = "tp_trainer_trainings_ended_total"
RUNNING = "tp_trainer_running_trainings"


@pytest.fixture
def trainer(tmp_path: Path) -> Iterator[tuple[TrainerProcess, int]]:
    port = free_port()
    process = TrainerProcess(
        tmp_path / "trainer",
        env={"TP_MAX_CONCURRENT_JOBS": "1", "TP_TRAINER_ADAPTER": FAKE_ADAPTER, "TP_METRICS_PORT": str(port)},
    ).start()
    try:
        yield process, port
    finally:
        process.close()


def test_runs_are_counted_by_framework_and_final_state(trainer: tuple[TrainerProcess, int]) -> None:
    process, port = trainer
    before = scrape(port)
    assert before.value("tp_trainer_max_concurrent_jobs", framework="timm") == 1
    assert before.value(RUNNING, framework="timm") == 0
    slow = process.start_training("job-metrics-1", spec(extra={"fake_batches": 400}))
    process.wait_state(slow, trainer_pb2.RUN_STATE_RUNNING)
    scrape_until(port, lambda s: s.value(RUNNING, framework="timm") == 1, what="one running training")
    # Full (one job at a time, no queue): a second start is refused and counted.
    with pytest.raises(grpc.RpcError) as refused:
        process.start_training("job-metrics-2", spec())
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    process.cancel(slow, grace=1)
    process.wait_state(slow, trainer_pb2.RUN_STATE_CANCELLED)
    ok = process.start_training("job-metrics-3", spec())
    process.wait_state(ok, trainer_pb2.RUN_STATE_SUCCEEDED)
    failing = process.start_training("job-metrics-4", spec(extra={"fake_mode": "fail"}))
    process.wait_state(failing, trainer_pb2.RUN_STATE_FAILED)
    after = scrape_until(port, lambda s: s.value(RUNNING, framework="timm") == 0, what="no running training")
    assert after.value(STARTED, framework="timm") == 3
    assert after.value(ENDED, framework="timm", state="cancelled") == 1
    assert after.value(ENDED, framework="timm", state="succeeded") == 1
    assert after.value(ENDED, framework="timm", state="failed") == 1
    assert after.value("tp_trainer_refused_starts_total", framework="timm") == 1
    assert after.value("tp_trainer_pending_reports", framework="timm") == 0
