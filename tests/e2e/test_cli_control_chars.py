"""Text that reaches `tp` from the backend cannot drive the terminal: whoever holds a job's telemetry token (any
training script) writes its log records and its error message, any front end its display name. `tp logs`,
`tp logs -f`, `tp watch`, `tp show` and `tp jobs` print ESC, the other C0 and C1 control characters, DEL and "\\r"
escaped (`\\x1b`), and bidi overrides too (`\\u202e`), so nothing sets the title, clears the screen or reorders the
rest of a table row; a multi-line record (a traceback) keeps its lines, each continuation indented under the
record, so no record can fake a line of its own (a `status COMPLETED`, another record).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.tp import TP, backend_env
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import JobsClient

ESCAPES = "\x1b[31mred\x1b[0m \x1b]0;TITLE\x07 \x1b[2J\x1b[H"
FAKE = "first line\r12:00:00 [info] faked\nstatus COMPLETED\n\x9b2J del\x7f"
TRACEBACK = 'Traceback (most recent call last):\n  File "train.py", line 3, in <module>\nValueError: bad\tvalue'
ERROR = "boom \x1b[2J\nstatus COMPLETED"
BIDI_NAME = "\u202eevil name that is long enough to be cut"
# What the terminal must never get from a record: ESC, BEL, CR, C1 CSI, DEL, bidi overrides.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@dataclass
class Seeded:
    backend: BackendProcess
    job_id: str
    config: Path

    def tp(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = backend_env(self.backend, self.config)
        # Bytes, decoded as they are: text mode would turn a "\r" into a line break before the test sees it.
        result = subprocess.run([TP, *args], capture_output=True, env=env, timeout=120)
        return subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode(), result.stderr.decode(errors="replace")
        )


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A FAILED job whose records, error and name hold control characters."""
    data = tmp_path_factory.mktemp("control")
    backend = BackendProcess(f"sqlite:///{data / 'backend.db'}", data / "backend-data")
    backend.start()
    try:
        with JobsClient(backend.address, backend.internal_token) as client:
            created = client.create_job(
                framework="timm", model="resnet10t", dataset="digits", epochs=1, dispatch=False, display_name=BIDI_NAME
            )
        logger = TrainingLogger(
            created.job.job_id,
            backend_address=backend.address,
            token=created.telemetry_token,
            spool_dir=data / "spool",
        )
        logger.update_status("running")
        for message in (ESCAPES, FAKE, TRACEBACK):
            logger.log_message(message)
        logger.update_status("failed", ERROR)
        report = logger.close(timeout=30)
        assert report.pending_logs == 0
        yield Seeded(backend, created.job.job_id, data / "no-config.json")
    finally:
        backend.close()


def _assert_harmless(text: str) -> None:
    assert not RAW.search(text), [line for line in text.splitlines() if RAW.search(line)]
    lines = text.split("\n")
    assert "status COMPLETED" not in [line.strip(" ") for line in lines if not line.startswith(" ")]
    assert not any(line.startswith("12:00:00 [info] faked") for line in lines)


@pytest.mark.parametrize("follow", [False, True])
def test_logs_print_control_characters_escaped_and_continuations_indented(seeded: Seeded, follow: bool) -> None:
    result = seeded.tp("logs", seeded.job_id, *(["--follow"] if follow else []))
    assert result.returncode == 0, result.stderr
    _assert_harmless(result.stdout)
    assert r"\x1b[31mred\x1b[0m \x1b]0;TITLE\x07 \x1b[2J\x1b[H" in result.stdout
    assert r"first line\r12:00:00 [info] faked" in result.stdout
    assert r"\x9b2J del\x7f" in result.stdout
    lines = result.stdout.splitlines()
    record = next(i for i, line in enumerate(lines) if line.endswith("Traceback (most recent call last):"))
    prefix = len(lines[record]) - len("Traceback (most recent call last):")
    # The traceback keeps its lines (and its tab), each under the record's text.
    assert lines[record + 1 : record + 3] == [
        " " * prefix + '  File "train.py", line 3, in <module>',
        " " * prefix + "ValueError: bad\tvalue",
    ]


@pytest.mark.parametrize("command", ["show", "watch"])
def test_show_and_watch_print_the_error_and_name_escaped(seeded: Seeded, command: str) -> None:
    result = seeded.tp(command, seeded.job_id)
    assert result.returncode == (1 if command == "watch" else 0), result.stderr
    _assert_harmless(result.stdout)
    assert r"boom \x1b[2J" in result.stdout
    assert r"\u202eevil name" in result.stdout


def test_jobs_leaves_no_bidi_override_open_in_a_cut_cell(seeded: Seeded) -> None:
    result = seeded.tp("jobs")
    assert result.returncode == 0, result.stderr
    _assert_harmless(result.stdout)
    row = next(line for line in result.stdout.splitlines() if line.startswith(seeded.job_id))
    assert r"\u202eevil name" in row and "FAILED" in row
