"""`tp-train`'s training loop samples system metrics while the adapter trains (on by default), and not at all when
TP_SYSTEM_METRICS=0."""

from __future__ import annotations

import time
from pathlib import Path

import fake_adapters
import pytest
from recording import RecordingSink
from trainingplatform_sdk.telemetry import SystemMetricsSampler
from trainingplatform_sdk.training import train

BASIC = {
    "model_config": {"name": "counter"},
    "dataset_config": {"name": "numbers"},
    "training_config": {"epochs": 3},
    "advanced_config": {},
}


@pytest.fixture
def slow_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch of the counting adapter takes 0.05 s: 12 batches, about 0.6 s of training."""
    monkeypatch.setattr(fake_adapters.CountingAdapter, "on_batch", lambda self, epoch, batch: time.sleep(0.05))


def _run(tmp_path: Path, sink: RecordingSink, env: dict[str, str]) -> int:
    sampler = SystemMetricsSampler.from_env(sink, env)
    return train.run_job(
        job_id="job-1",
        framework="fake_adapters:CountingAdapter",
        output_dir=tmp_path,
        logger=sink,
        system_metrics=sampler,
        **BASIC,
    )


def test_system_metrics_are_sampled_at_the_training_step_until_the_final_status(
    tmp_path: Path, slow_batches: None
) -> None:
    sink = RecordingSink()
    assert _run(tmp_path, sink, {"TP_SYSTEM_METRICS_INTERVAL_S": "0.1"}) == 0
    system = [p for p in sink.points if p.key.startswith("system/")]
    assert {"system/cpu_percent", "system/memory_rss_mb", "system/host_memory_percent"} <= {p.key for p in system}
    assert all(p.step is not None and 0 <= p.step <= 12 for p in system)
    # None after the final status.
    completed = sink.calls.index(("status", ("completed", None, None, None)))
    assert not [
        c for c in sink.calls[completed:] if c[0] == "metrics" and any(p.key.startswith("system/") for p in c[1])
    ]


def test_switched_off_there_is_no_system_point(tmp_path: Path, slow_batches: None) -> None:
    sink = RecordingSink()
    assert _run(tmp_path, sink, {"TP_SYSTEM_METRICS": "0", "TP_SYSTEM_METRICS_INTERVAL_S": "0.1"}) == 0
    assert sink.points and not [p for p in sink.points if p.key.startswith("system/")]
