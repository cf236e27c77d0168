"""What telemetry costs training: timm epoch time with the TrainingLogger streaming to a real backend (batch loss
every step) against the same training with telemetry off (a sink that discards), median of several epochs.

Runs alternate off/on, and which of the two goes first alternates too, so that drift of a noisy machine hits both
alike; the first epoch of each run (warm-up) is left out. resnet10t on the built-in digits data at 32x32.

The difference of two noisy epoch times cannot show an overhead of a percent or two on this machine, so the
telemetry's CPU is also measured directly, as a share of the training's wall time with telemetry on (median of the
runs): `training_sdk_cpu_pct`, the CPU of the SDK's threads in the training process (its sender thread, gRPC's
Python threads and gRPC's native threads, from /proc/self/task), and `training_backend_cpu_pct`, the backend
process's. What the training loses is at most their sum spread over the cores they share.

Two placements of the backend, each compared with training on the same CPUs with telemetry off:
  - `training_overhead_pct`: the backend shares every core with the training (the worst case; on a deployment it
    runs on another machine), so its CPU per message counts against training as much as the SDK's does;
  - `training_overhead_pct_backend_own_core`: training (and with it the SDK's sender) on the first CPU, the backend
    on the second, as a trainer machine and a backend machine would be; needs two CPUs.

    .venv/bin/python bench/bench_training_overhead.py [--runs 5] [--epochs 4] [--pinned-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from proc_cpu import process_cpu_s, threads_cpu_s
from support.backend import BackendProcess
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.spec.configs import AdvancedConfig, DatasetConfig, ModelConfig, TrainingConfig
from trainingplatform_sdk.training.adapter import NullSink


class EpochTimes:
    """Forwards every call to a sink and keeps the epochs' `epoch_time_s`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.times: list[float] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, epoch: int | None = None) -> None:
        if "epoch_time_s" in metrics:
            self.times.append(metrics["epoch_time_s"])
        self.inner.log_metrics(metrics, step=step, epoch=epoch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _telemetry_threads_cpu_s() -> dict[int, float]:
    """CPU seconds of each thread of this process that is not the training's: every Python thread but the main one
    (the SDK's sender, gRPC's request consumer and channel spin), and every native thread not named like the
    process (gRPC's event engine and timers; torch's own threads keep the process's name)."""
    main = threading.main_thread().native_id
    python_threads = {thread.native_id for thread in threading.enumerate()} - {main}
    threads = threads_cpu_s()
    own_name = threads[main][0]
    return {tid: cpu for tid, (name, cpu) in threads.items() if tid in python_threads or name != own_name}


def _train(sink: Any, output_dir: Path, epochs: int) -> list[float]:
    from trainingplatform_trainer_timm.adapter import TimmAdapter

    recorder = EpochTimes(sink)
    adapter = TimmAdapter(
        model_config=ModelConfig(name="resnet10t", image_size=32),
        dataset_config=DatasetConfig(name="digits"),
        training_config=TrainingConfig(epochs=epochs, log_every_n_steps=1),
        output_dir=output_dir,
        job_id="bench",
        logger=recorder,
        advanced_config=AdvancedConfig.from_mapping({"seed": 0}),
    )
    adapter.train()
    return recorder.times[1:]  # the first epoch warms up caches and allocators


def run(runs: int = 5, epochs: int = 4, pinned_runs: int = 3) -> dict[str, float]:
    """Median epoch times with telemetry off and on and the overhead in percent, for both placements."""
    results = _measure(runs, epochs)
    cpus = sorted(os.sched_getaffinity(0))
    if pinned_runs and len(cpus) >= 2:
        # A child process pinned before torch starts a thread, so every thread of the training runs on cpus[0].
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--runs",
                str(pinned_runs),
                "--epochs",
                str(epochs),
                "--backend-cpu",
                str(cpus[1]),
            ],
            preexec_fn=lambda: os.sched_setaffinity(0, {cpus[0]}),
            capture_output=True,
            text=True,
        )
        if child.returncode != 0:
            raise RuntimeError(f"the pinned measurement failed:\n{child.stderr[-3000:]}")
        print(child.stderr, end="", file=sys.stderr, flush=True)
        pinned = json.loads(child.stdout)
        results.update(
            {
                "training_epoch_s_telemetry_off_backend_own_core": pinned["training_epoch_s_telemetry_off"],
                "training_epoch_s_telemetry_on_backend_own_core": pinned["training_epoch_s_telemetry_on"],
                "training_overhead_pct_backend_own_core": pinned["training_overhead_pct"],
                "training_sdk_cpu_pct_backend_own_core": pinned["training_sdk_cpu_pct"],
                "training_backend_cpu_pct_backend_own_core": pinned["training_backend_cpu_pct"],
            }
        )
    return results


def _measure(runs: int, epochs: int, backend_cpu: int | None = None) -> dict[str, float]:
    off: list[float] = []
    on: list[float] = []
    sdk_pct: list[float] = []
    backend_pct: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cpus = {backend_cpu} if backend_cpu is not None else None
        backend = BackendProcess(f"sqlite:///{root / 'bench.db'}", root / "data", cpus=cpus)
        backend.start()

        def train_off(index: int) -> None:
            off.extend(_train(NullSink(), root / f"off{index}", epochs))

        def train_on(index: int) -> None:
            job_id, token = backend.create_job()
            threads_before, backend_before = _telemetry_threads_cpu_s(), process_cpu_s(backend.process.pid)  # type: ignore[union-attr]
            started = time.perf_counter()
            logger = TrainingLogger(
                job_id, backend_address=backend.address, token=token, spool_dir=root / f"spool{index}"
            )
            on.extend(_train(logger, root / f"on{index}", epochs))
            wall = time.perf_counter() - started
            threads = _telemetry_threads_cpu_s()
            sdk_cpu = sum(cpu - threads_before.get(tid, 0.0) for tid, cpu in threads.items())
            sdk_pct.append(sdk_cpu / wall * 100)
            backend_pct.append((process_cpu_s(backend.process.pid) - backend_before) / wall * 100)  # type: ignore[union-attr]
            report = logger.close(60)
            if report.pending_metrics or report.dropped or report.committed_metrics != report.logged_metrics:
                raise RuntimeError(f"telemetry was not all delivered: {report}")

        kept = max(0, epochs - 1)  # epochs per run after the warm-up
        try:
            for index in range(runs):
                for train in (train_off, train_on) if index % 2 == 0 else (train_on, train_off):
                    train(index)
                # Each run's epochs on stderr: how far they swing between runs is the noise the medians face.
                print(
                    f"  run {index + 1}/{runs}{'' if backend_cpu is None else ' (backend on its own core)'}: "
                    f"epochs off {_seconds(off[len(off) - kept :])}, on {_seconds(on[len(on) - kept :])}",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            backend.close()
    median_off, median_on = statistics.median(off), statistics.median(on)
    return {
        "training_epoch_s_telemetry_off": median_off,
        "training_epoch_s_telemetry_on": median_on,
        "training_overhead_pct": (median_on - median_off) / median_off * 100,
        "training_sdk_cpu_pct": statistics.median(sdk_pct),
        "training_backend_cpu_pct": statistics.median(backend_pct),
    }


def _seconds(times: list[float]) -> str:
    return " ".join(f"{time_s:.2f}" for time_s in times) + " s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--pinned-runs", type=int, default=3, help="runs with the backend on its own core (0: none)")
    parser.add_argument("--backend-cpu", type=int, help=argparse.SUPPRESS)  # the pinned child: one placement only
    args = parser.parse_args()
    if args.backend_cpu is not None:
        results = _measure(args.runs, args.epochs, args.backend_cpu)
    else:
        results = run(args.runs, args.epochs, args.pinned_runs)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
