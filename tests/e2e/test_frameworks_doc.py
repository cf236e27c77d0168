"""`tp frameworks` as a subprocess: it works offline (no backend, no running trainer), and docs/frameworks.md's
generated tables are exactly what it prints, so the doc cannot drift from the trainers' validation code.

What the tables say is probed against live trainers in tests/trainer_service/test_describe.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support.backend import free_port
from support.tp import TP
from trainingplatform_sdk.cli.frameworks import BEGIN_MARKER, END_MARKER

DOC = Path(__file__).resolve().parents[2] / "docs" / "frameworks.md"
REGENERATE = "run `.venv/bin/tp frameworks --format markdown --write docs/frameworks.md` (or `make docs`) and commit it"


def tp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # No backend anywhere: the address points at a closed port.
    env = {**os.environ, "TP_BACKEND_ADDRESS": f"127.0.0.1:{free_port()}"}
    return subprocess.run(
        [TP, *args], capture_output=True, text=True, env=env, timeout=600, cwd=cwd, stdin=subprocess.DEVNULL
    )


def _section(text: str) -> str:
    assert BEGIN_MARKER in text and END_MARKER in text, f"docs/frameworks.md lost its generated section: {REGENERATE}"
    return text.split(BEGIN_MARKER, 1)[1].split(END_MARKER, 1)[0].strip()


def test_docs_frameworks_md_is_what_tp_frameworks_prints(tmp_path: Path) -> None:
    result = tp("frameworks", "--format", "markdown", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    documented = _section(DOC.read_text(encoding="utf-8"))
    if printed != documented:
        diff = [
            f"doc: {a!r}\ncode: {b!r}"
            for a, b in zip(documented.splitlines(), printed.splitlines(), strict=False)
            if a != b
        ][:3]
        raise AssertionError(
            f"docs/frameworks.md disagrees with the trainers' validation code: {REGENERATE}.\n"
            f"first differing lines:\n" + "\n".join(diff or ["(one is a prefix of the other)"])
        )
    for text in ("### timm", "### ultralytics", "`label_smoothing`", "`mosaic`", "`num_threads`", "`momentum`"):
        assert text in printed


def test_write_rewrites_only_the_generated_section(tmp_path: Path) -> None:
    doc = tmp_path / "frameworks.md"
    doc.write_text(f"# Before\n\n{BEGIN_MARKER}\n\nstale table\n\n{END_MARKER}\n\n## After\n", encoding="utf-8")
    result = tp("frameworks", "--format", "markdown", "--framework", "timm", "--write", str(doc), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {doc}"
    text = doc.read_text(encoding="utf-8")
    assert text.startswith(f"# Before\n\n{BEGIN_MARKER}\n\n### timm\n") and text.endswith(f"{END_MARKER}\n\n## After\n")
    assert "stale table" not in text and "### ultralytics" not in text

    no_markers = tmp_path / "plain.md"
    no_markers.write_text("# nothing generated here\n", encoding="utf-8")
    refused = tp("frameworks", "--format", "markdown", "--write", str(no_markers), cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: no generated section") and len(refused.stderr.splitlines()) == 1
    assert no_markers.read_text(encoding="utf-8") == "# nothing generated here\n"


def test_text_and_json_list_each_frameworks_keys_without_a_backend(tmp_path: Path) -> None:
    text = tp("frameworks", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("timm: image_classification")
    assert any(line.startswith("ultralytics: object_detection") for line in lines)
    assert any(line.split()[:3] == ["label_smoothing", "number", "[0,"] for line in lines)
    assert any(line.split()[:2] == ["close_mosaic", "integer"] for line in lines)
    assert any("optimizer names: adabelief" in line and "lookahead_<name>" in line for line in lines)
    assert any(line.strip() == "lr_scheduler names: cosine, step, linear, constant" for line in lines)

    raw = tp("frameworks", "--format", "json", "--framework", "ultralytics", cwd=tmp_path)
    assert raw.returncode == 0, raw.stderr
    (ultralytics,) = json.loads(raw.stdout)
    assert ultralytics["framework"] == "ultralytics" and ultralytics["builtin_datasets"] == ["shapes"]
    momentum = next(e for e in ultralytics["advanced"] if e["key"] == "momentum")
    assert (momentum["low"], momentum["high"], momentum["high_open"], momentum["range"]) == (0.0, 1.0, True, "[0, 1)")

    unknown = tp("frameworks", "--framework", "tensorflow", cwd=tmp_path)
    assert unknown.returncode == 2 and "no trainer service for framework 'tensorflow'" in unknown.stderr
