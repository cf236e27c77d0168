"""A tiny TrainingAdapter for supervisor tests: no torch, no data, and a run that lasts as long as a test needs.

The service runs it through `tp-train --framework trainer_service.fake_adapter:FakeAdapter` (TP_TRAINER_ADAPTER),
with the tests directory on PYTHONPATH. `advanced_config.extra` controls it:

- `fake_batches` (default 5) batches per epoch of `fake_batch_s` seconds (default 0.05) each;
- `fake_mode`: `ok` (default), `fail` (raises during the first epoch) or `stubborn` (ignores stop requests,
  so only SIGKILL ends it);
- `fake_spool_holder_s`: at the end of the last epoch, start a process in its own session that takes the
  spool's lock the moment this process lets go of it (as a data loader worker of the process might still hold it)
  and keeps it this many seconds; it then writes `<output_dir>/spool_holder.json` with when it held it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trainingplatform_sdk.spec.configs import MetricsResult
from trainingplatform_sdk.trainer_service import ProgressSink, write_progress
from trainingplatform_sdk.training.adapter import TrainingAdapter


class FakeAdapter(TrainingAdapter):
    """Sleeps through its batches, reporting a batch loss per step and writing progress like `tp-train` does."""

    framework = "timm"
    supported_extra_keys = frozenset({"fake_batches", "fake_batch_s", "fake_mode", "fake_spool_holder_s"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Harmless when tp-train already wraps its logger the same way: both write the same file.
        self.logger = ProgressSink(self.logger, self.output_dir, total_epochs=self.training_config.epochs)
        extra = self.advanced_config.extra
        self.batches = int(extra.get("fake_batches", 5))
        self.batch_s = float(extra.get("fake_batch_s", 0.05))
        self.mode = str(extra.get("fake_mode", "ok"))
        self.spool_holder_s = float(extra.get("fake_spool_holder_s", 0))

    def build_data(self) -> None:
        write_progress(self.output_dir, epoch=0, total_epochs=self.training_config.epochs)

    def build_model(self) -> None:
        pass

    def train_epoch(self, epoch: int) -> MetricsResult:
        for batch in range(self.batches):
            if self.stop_requested and self.mode != "stubborn":
                return MetricsResult(stopped=True)
            if self.mode == "fail" and batch == 1:
                raise RuntimeError("fake failure in training")
            time.sleep(self.batch_s)
            self.global_step += 1
            self.logger.log_metric("train/batch_loss", 1.0 / self.global_step, step=self.global_step, epoch=epoch)
        if self.spool_holder_s and epoch == self.training_config.epochs - 1:
            self._hold_spool_lock()
        return MetricsResult(metrics={"train/loss": 1.0 / (epoch + 1)}, num_samples=self.batches)

    def _hold_spool_lock(self) -> None:
        # Both kinds of lock (flock and POSIX), whichever the spool uses; taken as soon as this process lets go.
        script = (
            "import fcntl, json, os, sys, time\n"
            "lock, hold, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]\n"
            "fd = os.open(lock, os.O_RDWR)\n"
            "while True:\n"
            "    try:\n"
            "        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "        break\n"
            "    except OSError:\n"
            "        fcntl.flock(fd, fcntl.LOCK_UN)\n"
            "        time.sleep(0.001)\n"
            "acquired = time.time()\n"
            "time.sleep(hold)\n"
            "json.dump({'acquired': acquired, 'released': time.time()}, open(out, 'w'))\n"
        )
        lock = self.output_dir / "spool" / "lock"
        out = self.output_dir / "spool_holder.json"
        command = [sys.executable, "-c", script, str(lock), str(self.spool_holder_s), str(out)]
        subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)

    def validate(self, epoch: int) -> MetricsResult:
        return MetricsResult(metrics={"val/accuracy": min(1.0, 0.5 + 0.1 * epoch)})

    def save_checkpoint(self, epoch: int, is_best: bool) -> Path:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.last_checkpoint_path.write_text(f"epoch {epoch}\n")
        return self.last_checkpoint_path
