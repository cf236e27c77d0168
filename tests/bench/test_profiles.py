"""The profilers of a telemetry message's CPU (`bench/profile_sdk.py`, `bench/profile_backend.py`) run briefly end
to end: py-spy attaches, samples, and the per-message and per-thread figures come out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("script", "side"), [("profile_sdk.py", "SDK"), ("profile_backend.py", "backend")])
def test_a_profile_reports_cpu_per_message_per_thread_and_by_function(script: str, side: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--seconds", "4", "--top", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    out = result.stdout
    per_message = re.search(rf"{side} CPU per one-point message: ([0-9.]+) ms \((\d+) messages\)", out)
    assert per_message is not None, out
    assert float(per_message.group(1)) > 0 and int(per_message.group(2)) > 100
    assert re.search(r"^  [0-9.]+ ms/message  \S", out, re.MULTILINE), out  # at least one thread listed
    samples = re.search(r"^samples: (\d+)$", out, re.MULTILINE)
    assert samples is not None and int(samples.group(1)) > 0, out  # py-spy attached and sampled
    assert "top 5 by inclusive samples:" in out
