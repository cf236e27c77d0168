"""Shared helpers of the trainer tests: the recording sink and the fake adapters live beside this file."""

from __future__ import annotations

import sys
from pathlib import Path

# The tests import `recording` and `fake_adapters` as top-level modules, and the entry point resolves
# `fake_adapters:FailingAdapter` paths, in this process and in subprocesses (through PYTHONPATH).
TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
