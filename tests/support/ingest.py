"""A job, a batch of points and the sequences stored: what the in-process group-commit tests share."""

from __future__ import annotations

from sqlalchemy import text
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_backend.ingest import Ingestor, Prepared
from trainingplatform_backend.store import Store


def new_job(store: Store, name: str = "group commit") -> int:
    """Creates a job and returns its primary key."""
    view, _ = store.create_job(
        framework="timm",
        model_name="resnet10t",
        display_name=name,
        model_config={},
        dataset_config={},
        training_config={},
        advanced_config={},
    )
    return store.job_pk(view.job.job_id)


def metric_batch(ingestor: Ingestor, job_pk: int, first: int, count: int) -> Prepared:
    """`count` points numbered from `first`, prepared for the committer."""
    points = [
        telemetry_pb2.MetricPoint(key="train/loss", value=float(seq), step=seq, wall_time=1.0, sequence=seq)
        for seq in range(first, first + count)
    ]
    return ingestor.prepare_metrics(job_pk, points)


def stored_sequences(store: Store, job_pk: int) -> list[int]:
    """The metric sequences stored for a job, in order."""
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT sequence FROM metrics WHERE job_pk = :pk ORDER BY sequence"), {"pk": job_pk})
        return [row[0] for row in rows]
