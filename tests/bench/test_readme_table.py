"""The README's benchmark tables are bench/readme_table.py's output for the committed bench/results/latest.json:
one whole run, every verdict from bench/run.py's targets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import readme_table  # noqa: E402


def test_the_readme_shows_the_committed_run() -> None:
    report = json.loads(readme_table.LATEST.read_text())
    assert not report.get("failed"), f"the committed run had failed benchmarks: {list(report['failed'])}"
    section = readme_table.tables(report)
    readme = readme_table.README.read_text()
    assert f"{readme_table.START}\n{section}\n{readme_table.END}" in readme, (
        "README.md's benchmark tables differ from bench/results/latest.json: run "
        ".venv/bin/python bench/readme_table.py --write"
    )


def test_a_missed_target_shows_as_missed_and_a_met_one_as_met() -> None:
    report = json.loads(readme_table.LATEST.read_text())
    results = dict(report["results"])
    results["reconnect_ms_p99"] = 1500.0
    assert "| p99 ≤ 1 s — **missed** |" in readme_table.tables({**report, "results": results})
    results["reconnect_ms_p99"] = 900.0
    assert "| p99 ≤ 1 s — met |" in readme_table.tables({**report, "results": results})


def test_a_readme_without_the_markers_is_refused() -> None:
    with pytest.raises(SystemExit, match="markers"):
        readme_table.replace_section("# no tables here\n", "section")
    text = f"a\n{readme_table.START}\nold\n{readme_table.END}\nb\n"
    assert readme_table.replace_section(text, "new") == f"a\n{readme_table.START}\nnew\n{readme_table.END}\nb\n"
