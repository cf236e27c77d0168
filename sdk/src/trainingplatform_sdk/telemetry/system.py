"""System metrics: the training process's and its host's CPU and memory use, and NVIDIA GPUs', every few seconds.

    sampler = SystemMetricsSampler(logger, interval_s=5.0, step=lambda: adapter.global_step)
    sampler.start()
    ...
    sampler.stop()

The samples are ordinary metrics under the reserved prefix `system/`, logged through the job's `TrainingLogger`
(so they travel on the same stream, with the same guarantees, and chart like any other key):

| key | what |
| --- | --- |
| `system/cpu_percent` | CPU use of this process, in percent of one core (above 100 on several cores) |
| `system/memory_rss_mb` | resident memory of this process, MiB |
| `system/host_cpu_percent` | CPU use of the whole host since the last sample, percent of all its cores (see below) |
| `system/host_memory_percent` | memory in use on the host, percent |
| `system/host_memory_used_mb` | memory in use on the host, MiB |
| `system/gpu<N>_utilization_percent` | GPU N busy, percent of the last sample period (NVIDIA only) |
| `system/gpu<N>_memory_used_mb` | GPU N memory in use, MiB |
| `system/gpu<N>_memory_percent` | GPU N memory in use, percent |

Sampling runs in a daemon thread (`tp-system-metrics`) and never blocks training: a sample costs a few system
calls and a `log_metrics` (an append to the logger's buffer). CPU and memory come from psutil; GPUs from
nvidia-ml-py (`pynvml`), imported when the sampler starts: when it is not installed, or there is no NVIDIA driver or
GPU, the GPU part is skipped (one debug line says why) and costs nothing after.

`host_cpu_percent` is computed from the sampler's own `psutil.cpu_times()` snapshots, not `psutil.cpu_percent`, whose
reference point psutil keeps per thread (or, in psutil 5, in one global any other caller resets); a sample over
which the host counted no CPU time leaves it out rather than report a false 0.

`tp-train` samples by default (`from_env`):

- `TP_SYSTEM_METRICS`: `0`, `false`, `no` or `off` turns sampling off (no `system/` point is logged); anything
  else, or unset, leaves it on.
- `TP_SYSTEM_METRICS_INTERVAL_S`: seconds between two samples, default 5, at least 0.1 (a value that is not a
  number, or below 0.1, is replaced by the default or 0.1, with a warning).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

_log = logging.getLogger(__name__)

PREFIX = "system/"
"""The reserved key prefix of system metrics."""
DEFAULT_INTERVAL_S = 5.0
MIN_INTERVAL_S = 0.1
ENABLED_ENV = "TP_SYSTEM_METRICS"
INTERVAL_ENV = "TP_SYSTEM_METRICS_INTERVAL_S"
_OFF = frozenset({"0", "false", "no", "off"})
_MIB = 1024.0 * 1024.0


class MetricsSink(Protocol):
    """What the sampler logs to: a `TrainingLogger`, or anything with its `log_metrics`."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, epoch: int | None = None) -> None:
        """Logs several values of the same step."""


class _Gpus:
    """The host's NVIDIA GPUs through NVML, or nothing when there is no nvidia-ml-py, driver or GPU."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError:
            _log.debug("no GPU metrics: nvidia-ml-py (pynvml) is not installed")
            return
        try:
            pynvml.nvmlInit()
        except Exception as error:  # pynvml.NVMLError (no driver, no library), or anything else it raises
            _log.debug("no GPU metrics: NVML is not usable here (%s)", error)
            return
        try:
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as error:
            _log.debug("no GPU metrics: NVML lists no usable GPU (%s)", error)
            self._shutdown(pynvml)
            return
        if not self._handles:
            _log.debug("no GPU metrics: NVML finds no GPU")
            self._shutdown(pynvml)
            return
        self._nvml = pynvml

    @property
    def count(self) -> int:
        """GPUs sampled."""
        return len(self._handles)

    def sample(self, into: dict[str, float]) -> None:
        """Adds every GPU's utilization and memory to `into`; a GPU that fails to answer is left out this time."""
        nvml = self._nvml
        if nvml is None:
            return
        for index, handle in enumerate(self._handles):
            try:
                utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as error:
                _log.debug("GPU %d did not answer NVML: %s", index, error)
                continue
            into[f"{PREFIX}gpu{index}_utilization_percent"] = float(utilization.gpu)
            into[f"{PREFIX}gpu{index}_memory_used_mb"] = memory.used / _MIB
            if memory.total:
                into[f"{PREFIX}gpu{index}_memory_percent"] = 100.0 * memory.used / memory.total

    def close(self) -> None:
        """Releases NVML."""
        if self._nvml is not None:
            self._shutdown(self._nvml)
            self._nvml = None

    @staticmethod
    def _shutdown(nvml: Any) -> None:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


class SystemMetricsSampler:
    """Samples CPU, memory and GPU use every `interval_s` seconds in a daemon thread and logs them to `sink`.

    Args:
        sink: The job's `TrainingLogger` (thread-safe: the sampler logs from its own thread).
        interval_s: Seconds between two samples (at least 0.1). The first sample is taken one interval after
            `start`, so that CPU percentages cover a whole interval.
        step: Returns the training's current step (for example `lambda: adapter.global_step`), stamped on each
            sample so that it charts against steps beside the training metrics; None, or a callable that returns
            None or raises, logs the samples without a step.
        gpus: Sample NVIDIA GPUs (when nvidia-ml-py, a driver and a GPU are there).
    """

    def __init__(
        self,
        sink: MetricsSink,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        step: Callable[[], int | None] | None = None,
        gpus: bool = True,
    ) -> None:
        self._sink = sink
        self.interval_s = max(MIN_INTERVAL_S, float(interval_s))
        self._step = step
        self._want_gpus = gpus
        self._gpus: _Gpus | None = None
        self._process: Any = None
        self._psutil: Any = None
        self._host_cpu_times: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False
        self.samples = 0
        """Samples logged so far."""

    @classmethod
    def from_env(
        cls,
        sink: MetricsSink,
        env: Mapping[str, str] | None = None,
        *,
        step: Callable[[], int | None] | None = None,
    ) -> SystemMetricsSampler | None:
        """A sampler configured by `TP_SYSTEM_METRICS` and `TP_SYSTEM_METRICS_INTERVAL_S` (see the module), not
        started; None when `TP_SYSTEM_METRICS` turns sampling off."""
        env = os.environ if env is None else env
        if env.get(ENABLED_ENV, "").strip().lower() in _OFF:
            _log.info("system metrics are off (%s=%s)", ENABLED_ENV, env[ENABLED_ENV])
            return None
        interval = DEFAULT_INTERVAL_S
        text = env.get(INTERVAL_ENV, "").strip()
        if text:
            try:
                interval = float(text)
            except ValueError:
                _log.warning("%s=%r is not a number: sampling every %g s", INTERVAL_ENV, text, DEFAULT_INTERVAL_S)
            else:
                if not math.isfinite(interval):
                    _log.warning("%s=%r is not finite: sampling every %g s", INTERVAL_ENV, text, DEFAULT_INTERVAL_S)
                    interval = DEFAULT_INTERVAL_S
                elif interval < MIN_INTERVAL_S:
                    _log.warning(
                        "%s=%r is below %g: sampling every %g s", INTERVAL_ENV, text, MIN_INTERVAL_S, MIN_INTERVAL_S
                    )
                    interval = MIN_INTERVAL_S
        return cls(sink, interval_s=interval, step=step)

    @property
    def running(self) -> bool:
        """Whether the sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, step: Callable[[], int | None] | None = None) -> SystemMetricsSampler:
        """Starts the sampling thread (once); returns the sampler. `step`, when given, replaces the constructor's."""
        if step is not None:
            self._step = step
        if self._thread is not None:
            return self
        try:
            import psutil  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            _log.warning("no CPU or memory metrics: psutil is not installed")
        else:
            self._psutil = psutil
            self._process = psutil.Process()
            self._process.cpu_percent(None)  # the first call only sets the reference point
            # The host's reference point is ours, not psutil.cpu_percent's: psutil keeps that one per thread (7.x:
            # a prime here, on the caller's thread, is no reference for the sampling thread, whose first reading
            # then covers no time and reads 0.0) or in one module global that any other caller resets (5.x).
            self._host_cpu_times = psutil.cpu_times()
        if self._want_gpus:
            self._gpus = _Gpus()
        self._thread = threading.Thread(target=self._run, name="tp-system-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stops sampling (no sample is logged once this returns, unless the thread outlives `timeout`)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> SystemMetricsSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sample(self) -> dict[str, float]:
        """One sample: every available `system/` value now."""
        values: dict[str, float] = {}
        psutil, process = self._psutil, self._process
        if psutil is not None:
            with process.oneshot():
                values[PREFIX + "cpu_percent"] = float(process.cpu_percent(None))
                values[PREFIX + "memory_rss_mb"] = process.memory_info().rss / _MIB
            memory = psutil.virtual_memory()
            host_cpu = self._host_cpu_percent()
            if host_cpu is not None:
                values[PREFIX + "host_cpu_percent"] = host_cpu
            values[PREFIX + "host_memory_percent"] = float(memory.percent)
            values[PREFIX + "host_memory_used_mb"] = (memory.total - memory.available) / _MIB
        if self._gpus is not None:
            self._gpus.sample(values)
        return values

    def _host_cpu_percent(self) -> float | None:
        """The host's CPU use since the previous sample (or `start`), from our own `cpu_times` snapshots (as
        psutil.cpu_percent computes it); None when no CPU time has passed, or there is no previous snapshot: a
        percentage over no time would be a false 0."""
        now = self._psutil.cpu_times()
        before, self._host_cpu_times = self._host_cpu_times, now
        if before is None:
            return None
        # Each field's growth; a field that went backwards (a kernel quirk psutil and top also ignore) counts 0.
        delta = {field: max(0.0, getattr(now, field) - getattr(before, field)) for field in now._fields}
        # Linux counts guest time in user and nice already; iowait is idle time.
        total = sum(delta.values()) - delta.get("guest", 0.0) - delta.get("guest_nice", 0.0)
        if total <= 0:
            return None
        busy = total - delta["idle"] - delta.get("iowait", 0.0)
        return float(min(100.0, max(0.0, 100.0 * busy / total)))

    def _current_step(self) -> int | None:
        if self._step is None:
            return None
        try:
            step = self._step()
        except Exception:
            return None
        return step if isinstance(step, int) and step >= 0 else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                values = self.sample()
                if values:
                    self._sink.log_metrics(values, step=self._current_step())
                    self.samples += 1
            except Exception:
                if not self._failed:  # once: a sampler that keeps failing must not flood the training's log
                    self._failed = True
                    _log.warning("system metrics: a sample failed (sampling goes on)", exc_info=True)
        if self._gpus is not None:
            self._gpus.close()
