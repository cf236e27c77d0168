"""Ctrl-C on `tp`, as a subprocess against a real backend: however and whenever it comes, `tp` exits 130 without a
traceback (README: "Ctrl-C exits 130 and leaves the job running").

- two quick Ctrl-C on `tp watch` of a live job (the second 0-30 ms after the first): the second one cut grpc's
  channel close short, and `tp` either died of SIGINT (exit -2) or hung for good in the channel's `__del__`;
- a Ctrl-C while `tp` still imports (its first few tenths of a second) printed a Python traceback: the console
  script's own import of the CLI ran before `main` handled KeyboardInterrupt.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.tp import TP, backend_env
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import JobsClient

TRIES = 10


@dataclass
class LiveJob:
    backend: BackendProcess
    job_id: str
    config: Path

    def start_tp(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [TP, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=backend_env(self.backend, self.config),
        )


@pytest.fixture(scope="module")
def live_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveJob]:
    """A RUNNING job whose trainer (this test's logger) logs a line and a metric every 50 ms until the module ends."""
    data = tmp_path_factory.mktemp("interrupts")
    backend = BackendProcess(f"sqlite:///{data / 'backend.db'}", data / "backend-data")
    backend.start()
    stop = threading.Event()
    try:
        with JobsClient(backend.address, backend.internal_token) as client:
            created = client.create_job(
                framework="timm", model="resnet10t", dataset="digits", epochs=2, dispatch=False, display_name="live"
            )
        logger = TrainingLogger(
            created.job.job_id, backend_address=backend.address, token=created.telemetry_token, spool_dir=data / "spool"
        )
        logger.update_status("running")

        def train() -> None:
            step = 0
            while not stop.wait(0.05):
                logger.log_message(f"line {step}")
                logger.log_metric("train/loss", 1.0 / (step + 1), step=step, epoch=0)
                step += 1

        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        yield LiveJob(backend, created.job.job_id, data / "no-config.json")
        stop.set()
        trainer.join(10)
        logger.close(timeout=10)
    finally:
        stop.set()
        backend.close()


def _ended(process: subprocess.Popen[str], timeout: float) -> tuple[int | None, str]:
    """The exit status of `process` within `timeout` seconds (None: it hung, and is killed) and its stderr."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        return None, err
    return process.returncode, err


def test_two_quick_ctrl_c_on_watch_exit_130_every_time(live_job: LiveJob) -> None:
    seed = random.randrange(1 << 30)
    gaps = random.Random(seed)
    for attempt in range(TRIES):
        gap = round(gaps.uniform(0.0, 0.03), 3)
        process = live_job.start_tp("watch", live_job.job_id)
        assert process.stdout is not None
        for line in process.stdout:  # following live now, its subscription's stream open
            if line.startswith("status RUNNING"):
                break
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        time.sleep(gap)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        code, err = _ended(process, 20)
        said = f"try {attempt} (seed {seed}), second Ctrl-C {gap * 1000:.0f} ms after the first"
        assert code == 130, f"{said}: exit {code} (None: hung)\n{err}"
        assert "Traceback" not in err and f"job {live_job.job_id} goes on running" in err, f"{said}\n{err}"


def _loaded(pid: int, library: str, timeout: float = 20) -> bool:
    """Waits until process `pid` has mapped a shared library whose path holds `library` (so it is importing the
    module that loads it); False if it ended, or did not get there, first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if library in Path(f"/proc/{pid}/maps").read_text():
                return True
        except OSError:
            return False
        time.sleep(0.001)
    return False


@pytest.mark.parametrize("when", ["cygrpc", "_upb", "0.1", "0.2", "0.3"])
def test_ctrl_c_while_tp_starts_exits_130_without_a_traceback(live_job: LiveJob, when: str) -> None:
    """A Ctrl-C as grpc's or protobuf's native module is loaded (`tp` imports the SDK: before, a traceback and
    death by SIGINT), or some tenths of a second after the start."""
    process = live_job.start_tp("logs", "--follow", live_job.job_id)
    if when[0].isdigit():
        time.sleep(float(when))
    else:
        assert _loaded(process.pid, when), f"tp never loaded {when}"
    process.send_signal(signal.SIGINT)
    code, err = _ended(process, 20)
    assert code == 130, f"Ctrl-C at {when}: exit {code}\n{err}"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
