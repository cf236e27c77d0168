"""JobsClient.metric_series against a real backend: typed buckets, zoom, key filter, errors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.backend import BackendProcess
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import Cursor, InvalidArgumentError, JobsClient, MetricSeriesResult
from trainingplatform_sdk.errors import PermissionDeniedError


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[BackendProcess]:
    backend = BackendProcess(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "data")
    backend.start()
    yield backend
    backend.close()


def test_metric_series_returns_typed_buckets(sqlite_backend: BackendProcess, tmp_path: Path):
    job_id, token = sqlite_backend.create_job()
    with TrainingLogger(
        job_id, backend_address=sqlite_backend.address, token=token, spool_dir=tmp_path / "spool"
    ) as log:
        for step in range(3000):
            log.log_metric("train/loss", 9.0 if step == 1234 else 1.0 / (step + 1), step=step, epoch=step // 1000)
            if step % 100 == 0:
                log.log_metric("val/accuracy", math.nan if step == 500 else step / 3000, step=step, epoch=step // 1000)

    with JobsClient(sqlite_backend.address, sqlite_backend.read_token) as client:
        result = client.metric_series(job_id, keys=["train/loss"], max_points=30)
        assert isinstance(result, MetricSeriesResult)
        assert result.last_sequence == 3030
        loss = result.series["train/loss"]
        assert loss.total_points == 3000 and len(loss.buckets) == 30
        assert [(b.first_step, b.last_step) for b in loss.buckets] == [(i * 100, i * 100 + 99) for i in range(30)]
        assert max(b.max for b in loss.buckets) == 9.0 and loss.buckets[12].max == 9.0
        assert loss.buckets[0].first_epoch == 0 and loss.buckets[-1].last_epoch == 2
        assert loss.buckets[-1].last == 1.0 / 3000

        everything = client.metric_series(job_id)
        assert list(everything.series) == ["train/loss", "val/accuracy"]
        accuracy = everything.series["val/accuracy"]
        assert accuracy.total_points == 30 and sum(b.nan_count for b in accuracy.buckets) == 1

        zoom = client.metric_series(job_id, keys=["train/loss"], min_step=1230, max_step=1239)
        assert [(b.first_step, b.count) for b in zoom.series["train/loss"].buckets] == [
            (s, 1) for s in range(1230, 1240)
        ]

        # The cursor continues live: nothing after it yet.
        assert result.last_sequence == client.get_job(job_id).last_metric_sequence
        assert Cursor(metric_sequence=result.last_sequence).metric_sequence == 3030

        with pytest.raises(InvalidArgumentError):
            client.metric_series(job_id, min_step=5, max_step=4)
        with pytest.raises(InvalidArgumentError):
            client.metric_series(job_id, max_points=10_001)

    _, other_token = sqlite_backend.create_job()
    with JobsClient(sqlite_backend.address, other_token) as client, pytest.raises(PermissionDeniedError):
        client.metric_series(job_id)
