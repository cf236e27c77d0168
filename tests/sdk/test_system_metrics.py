"""System metrics (telemetry/system.py): samples reach a real backend as `system/` points, the GPU path without
a GPU (nvidia-ml-py missing, NVML failing) costs nothing and raises nothing, and the environment switches it off."""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support.backend import BackendProcess
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import JobsClient
from trainingplatform_sdk.telemetry import SystemMetricsSampler
from trainingplatform_sdk.telemetry import system as system_module

CPU_AND_MEMORY = {
    "system/cpu_percent",
    "system/memory_rss_mb",
    "system/host_cpu_percent",
    "system/host_memory_percent",
    "system/host_memory_used_mb",
}


class _Sink:
    """Records log_metrics calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, float], int | None]] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, epoch: int | None = None) -> None:
        self.calls.append((dict(metrics), step))


def _wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[BackendProcess]:
    backend = BackendProcess(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "data")
    backend.start()
    yield backend
    backend.close()


def test_samples_reach_the_backend_as_system_metrics(sqlite_backend: BackendProcess, tmp_path: Path):
    job_id, token = sqlite_backend.create_job()
    step = 0
    with TrainingLogger(
        job_id, backend_address=sqlite_backend.address, token=token, spool_dir=tmp_path / "spool"
    ) as log:
        sampler = SystemMetricsSampler(log, interval_s=0.2, step=lambda: step).start()
        assert sampler.running
        for step in range(1, 8):  # the "training": a step every 0.1 s
            log.log_metric("train/loss", 1.0 / step, step=step)
            time.sleep(0.1)
        _wait_for(lambda: sampler.samples >= 3)
        sampler.stop()
        assert not sampler.running
        taken = sampler.samples
    with JobsClient(sqlite_backend.address, sqlite_backend.read_token) as client:
        points = list(client.metrics(job_id))
        system = [p for p in points if p.key.startswith("system/")]
        assert {p.key for p in system} >= CPU_AND_MEMORY
        assert len([p for p in system if p.key == "system/memory_rss_mb"]) == taken
        assert all(p.step is not None and 0 <= p.step <= 7 for p in system)
        rss = [p.value for p in system if p.key == "system/memory_rss_mb"]
        assert all(10 < value < 1_000_000 for value in rss)  # MiB: a Python process with grpc loaded
        assert all(0 < p.value <= 100 for p in system if p.key == "system/host_memory_percent")
        assert all(p.value >= 0 for p in system if p.key.endswith("cpu_percent"))
        # ... and they chart like any other key.
        series = client.metric_series(job_id, keys=["system/memory_rss_mb"])
        assert series.series["system/memory_rss_mb"].total_points == taken


def test_without_nvidia_ml_py_there_are_no_gpu_keys(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    caplog.set_level(logging.DEBUG, logger=system_module.__name__)
    sink = _Sink()
    sampler = SystemMetricsSampler(sink, interval_s=0.1).start()
    _wait_for(lambda: len(sink.calls) >= 2)
    sampler.stop()
    assert all(set(values) == CPU_AND_MEMORY for values, _ in sink.calls)
    assert all(step is None for _, step in sink.calls)
    gpu_lines = [r for r in caplog.records if "no GPU metrics" in r.getMessage()]
    assert len(gpu_lines) == 1 and gpu_lines[0].levelno == logging.DEBUG
    assert "not installed" in gpu_lines[0].getMessage()


def _fake_nvml(*, init_error: bool = False, gpus: int = 0) -> types.ModuleType:
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init() -> None:
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")

    module.NVMLError = NVMLError  # type: ignore[attr-defined]
    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: gpus  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda index: index  # type: ignore[attr-defined]
    module.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=40 + handle, memory=5)  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(  # type: ignore[attr-defined]
        used=512 * 1024 * 1024, total=2048 * 1024 * 1024, free=1536 * 1024 * 1024
    )
    return module


def test_nvml_failing_to_initialise_means_no_gpu_keys(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(init_error=True))
    caplog.set_level(logging.DEBUG, logger=system_module.__name__)
    sink = _Sink()
    with SystemMetricsSampler(sink, interval_s=0.1):
        _wait_for(lambda: len(sink.calls) >= 2)
    assert all(set(values) == CPU_AND_MEMORY for values, _ in sink.calls)
    gpu_lines = [r for r in caplog.records if "no GPU metrics" in r.getMessage()]
    assert len(gpu_lines) == 1 and "NVML Shared Library Not Found" in gpu_lines[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_gpus_are_sampled_when_nvml_answers(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(gpus=2))
    sink = _Sink()
    with SystemMetricsSampler(sink, interval_s=0.1, step=lambda: 42):
        _wait_for(lambda: len(sink.calls) >= 1)
    values, step = sink.calls[0]
    assert step == 42
    assert values["system/gpu0_utilization_percent"] == 40 and values["system/gpu1_utilization_percent"] == 41
    assert values["system/gpu1_memory_used_mb"] == 512 and values["system/gpu0_memory_percent"] == 25


def test_the_environment_switches_sampling_off_and_sets_the_interval(caplog: pytest.LogCaptureFixture):
    sink = _Sink()
    for off in ("0", "false", "OFF", "no"):
        assert SystemMetricsSampler.from_env(sink, {"TP_SYSTEM_METRICS": off}) is None
    sampler = SystemMetricsSampler.from_env(sink, {})
    assert sampler is not None and sampler.interval_s == 5.0 and not sampler.running
    sampler = SystemMetricsSampler.from_env(sink, {"TP_SYSTEM_METRICS": "1", "TP_SYSTEM_METRICS_INTERVAL_S": "0.5"})
    assert sampler is not None and sampler.interval_s == 0.5
    with caplog.at_level(logging.WARNING):
        for bad, expected in (("soon", 5.0), ("nan", 5.0), ("0.001", 0.1)):
            sampler = SystemMetricsSampler.from_env(sink, {"TP_SYSTEM_METRICS_INTERVAL_S": bad})
            assert sampler is not None and sampler.interval_s == expected
    assert len([r for r in caplog.records if "TP_SYSTEM_METRICS_INTERVAL_S" in r.getMessage()]) == 3
    assert sink.calls == []


def test_a_failing_step_source_or_sink_never_stops_sampling_or_raises(caplog: pytest.LogCaptureFixture):
    class Flaky(_Sink):
        def log_metrics(self, metrics, step=None, epoch=None):  # type: ignore[no-untyped-def,override]
            super().log_metrics(metrics, step=step, epoch=epoch)
            if len(self.calls) == 1:
                raise RuntimeError("sink broke once")

    def broken_step() -> int:
        raise AttributeError("no adapter yet")

    sink = Flaky()
    with caplog.at_level(logging.WARNING), SystemMetricsSampler(sink, interval_s=0.1, step=broken_step):
        _wait_for(lambda: len(sink.calls) >= 3)
    assert all(step is None for _, step in sink.calls)
    assert len([r for r in caplog.records if "a sample failed" in r.getMessage()]) == 1


class _FakeCpuTimes:
    """Stands in for `psutil.cpu_times()`: the host's CPU clock stands still until the test `advance`s it (as
    between two kernel ticks), so an interval of zero length, or one measured from the wrong reference, shows."""

    def __init__(self, real: Any) -> None:
        self._now = real._replace(**dict.fromkeys(real._fields, 0.0))

    def advance(self, *, busy: float, idle: float) -> None:
        self._now = self._now._replace(user=self._now.user + busy, idle=self._now.idle + idle)

    def __call__(self, percpu: bool = False) -> Any:
        assert not percpu
        return self._now


def test_the_first_host_cpu_sample_covers_the_interval_since_start(monkeypatch: pytest.MonkeyPatch):
    """The first `host_cpu_percent` once read 0.0 in every training: start() primed psutil's system-wide
    cpu_percent on the caller's thread, while psutil keeps that reference point per thread (7.x) or in one
    module global any caller resets (5.x), so the sampling thread's first reading covered no time at all."""
    psutil = pytest.importorskip("psutil")
    monkeypatch.setitem(sys.modules, "pynvml", None)
    clock = _FakeCpuTimes(psutil.cpu_times())
    monkeypatch.setattr(psutil, "cpu_times", clock)
    sink = _Sink()
    sampler = SystemMetricsSampler(sink, interval_s=0.2).start()
    # Between the start and the first sample: the host works (3 busy ticks, 1 idle), and third-party code (an
    # MLflow or ultralytics monitor) reads psutil's cpu_percent on its own account.
    clock.advance(busy=3.0, idle=1.0)
    psutil.cpu_percent(None)
    psutil.cpu_percent(None)
    _wait_for(lambda: len(sink.calls) >= 1)
    sampler.stop()
    first, _ = sink.calls[0]
    assert first["system/host_cpu_percent"] == pytest.approx(75.0)


def test_a_sample_over_no_host_cpu_time_leaves_host_cpu_out(monkeypatch: pytest.MonkeyPatch):
    psutil = pytest.importorskip("psutil")
    monkeypatch.setitem(sys.modules, "pynvml", None)
    clock = _FakeCpuTimes(psutil.cpu_times())
    monkeypatch.setattr(psutil, "cpu_times", clock)
    sampler = SystemMetricsSampler(_Sink(), interval_s=600).start()  # the thread never samples: the test does
    try:
        values = sampler.sample()  # the clock has not moved since start(): no percentage, rather than a false 0
        assert "system/host_cpu_percent" not in values
        assert set(values) == CPU_AND_MEMORY - {"system/host_cpu_percent"}
        clock.advance(busy=1.0, idle=3.0)
        assert sampler.sample()["system/host_cpu_percent"] == pytest.approx(25.0)
        clock.advance(busy=3.0, idle=1.0)  # measured from the previous sample, not from start()
        assert sampler.sample()["system/host_cpu_percent"] == pytest.approx(75.0)
    finally:
        sampler.stop()


def test_the_first_host_cpu_sample_of_a_busy_host_is_not_zero():
    psutil = pytest.importorskip("psutil")
    stop = threading.Event()

    def burn() -> None:  # keeps a core busy, as a training does
        while not stop.is_set():
            pass

    burner = threading.Thread(target=burn, daemon=True)
    burner.start()
    sink = _Sink()
    try:
        sampler = SystemMetricsSampler(sink, interval_s=0.3, gpus=False).start()
        psutil.cpu_percent(None)  # another caller, between the start and the first sample
        _wait_for(lambda: len(sink.calls) >= 1)
        sampler.stop()
    finally:
        stop.set()
        burner.join()
    first, _ = sink.calls[0]
    assert 0 < first["system/host_cpu_percent"] <= 100
