"""Without Chromium the browser tests fail with one line saying what to install; they are never skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_a_missing_chromium_fails_the_browser_tests_with_what_to_install(tmp_path: Path) -> None:
    missing = tmp_path / "no-chromium-here"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n0",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'inner'}",
            "tests/dashboard/browser/test_pages.py::test_new_job_form_shows_the_validation_error_beside_its_field",
        ],
        cwd=ROOT,
        env={**os.environ, "TP_CHROMIUM": str(missing)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"Chromium is missing at {missing}: install it with `apt-get install chromium`" in output, output
    assert "1 error" in output and "skipped" not in output, output
