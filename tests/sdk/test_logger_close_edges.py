"""TrainingLogger at its edges against a real backend: close with odd timeouts or interrupted, an exception in
the with-block, calls after close, a refusal for good, a spool directory that cannot be made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.errors import PlatformError


@pytest.mark.parametrize("where", ["argument", "TP_SPOOL_DIR"])
def test_a_spool_directory_that_cannot_be_made_names_the_setting(
    unreachable_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    if where == "argument":
        spool_dir: Path | None = blocker / "spool"
        setting = "spool_dir"
    else:
        monkeypatch.setenv("TP_SPOOL_DIR", str(blocker / "spools"))
        spool_dir, setting = None, "TP_SPOOL_DIR"
    with pytest.raises(PlatformError) as raised:
        TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=spool_dir)
    assert isinstance(raised.value, OSError)  # as documented before: an OSError
    message = str(raised.value)
    assert str(blocker) in message and setting in message
    assert os.listdir(tmp_path) == ["a-file"]
