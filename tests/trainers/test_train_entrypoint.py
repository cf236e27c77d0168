"""The training entry point: status sequence, failure reporting, exit codes and SIGTERM handling."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recording import RecordingSink
from trainingplatform_sdk.training import registry, train
from trainingplatform_sdk.training.adapter import Status

TESTS_DIR = Path(__file__).resolve().parent
BASIC = {
    "model_config": {"name": "counter"},
    "dataset_config": {"name": "numbers"},
    "training_config": {"epochs": 3},
    "advanced_config": {},
}


def run(tmp_path: Path, framework: str, sink: RecordingSink, **overrides) -> int:
    configs = {**BASIC, **overrides}
    return train.run_job(job_id="job-1", framework=framework, output_dir=tmp_path, logger=sink, **configs)


def test_completed_job_reports_running_then_completed(tmp_path) -> None:
    sink = RecordingSink()
    assert run(tmp_path, "fake_adapters:CountingAdapter", sink) == 0
    assert sink.statuses() == ["running", "completed"]
    assert sink.calls[0] == ("message", ("INFO", "Starting training: counter"))
    # Every epoch's metrics and summary reach the sink before COMPLETED.
    last_summary = max(i for i, (kind, _) in enumerate(sink.calls) if kind == "summary")
    assert last_summary < sink.calls.index(("status", ("completed", None, None, None)))
    assert (tmp_path / "weights" / "last.pt").exists()


def test_failing_adapter_reports_failed_with_the_error_and_traceback(tmp_path) -> None:
    sink = RecordingSink()
    assert run(tmp_path, "fake_adapters:FailingAdapter", sink) == train.EXIT_FAILED
    assert sink.statuses() == ["running", "failed"]
    _, error, detail, _ = sink.status_calls()[-1]
    assert error == "RuntimeError: loss exploded at epoch 1"
    assert "Traceback" in detail and "fake_adapters.py" in detail
    assert any("loss exploded at epoch 1" in m for m in sink.messages("ERROR"))
    assert len(sink.summaries()) == 1  # epoch 0 finished before the failure and stays reported


def test_a_failure_reports_urls_without_their_credentials(tmp_path) -> None:
    # The job's error, its traceback and its log line carried the password and the signature as they came.
    sink = RecordingSink()
    assert run(tmp_path, "fake_adapters:LeakingAdapter", sink) == train.EXIT_FAILED
    _, error, detail, _ = sink.status_calls()[-1]
    reported = [error, detail, *sink.messages("ERROR")]
    assert not [text for text in reported if "hunter2" in text or "s3cret" in text], reported
    assert error == "ConnectionError: could not fetch https://data.example/shards: connection reset"
    assert "ConnectionError" in detail and "fake_adapters.py" in detail


def test_a_failure_reports_its_message_without_terminal_colour_codes(tmp_path) -> None:
    # ultralytics colours its messages: the job's error and log showed `\x1b[34m\x1b[1mtrain: \x1b[0m...`.
    sink = RecordingSink()
    assert run(tmp_path, "fake_adapters:ColouredErrorAdapter", sink) == train.EXIT_FAILED
    _, error, detail, _ = sink.status_calls()[-1]
    assert error == (
        "RuntimeError: No valid images found in /data/labels/train.cache.\n"
        "train: /data/images/train/0.png: ignoring corrupt image/label: Label class 5 exceeds dataset class count 2."
    )
    reported = [error, detail, *sink.messages("ERROR")]
    assert not [text for text in reported if "\x1b" in text], reported
    assert "train: /data/images/train/0.png" in detail


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("\x1b[34m\x1b[1mtrain: \x1b[0mok", "train: ok"),
        ("\x1b[2K\rline", "\rline"),  # erase-line (a progress bar's), the carriage return kept
        ("\x1b]8;;https://x.example\x1b\\link\x1b]8;;\x1b\\", "link"),  # a terminal hyperlink
        ("a\x1b(Bb", "ab"),  # a character-set switch
        ("no escapes [34m here", "no escapes [34m here"),
    ],
)
def test_strip_ansi_removes_escape_sequences_only(text: str, plain: str) -> None:
    assert train.strip_ansi(text) == plain


def test_bad_config_fails_the_job_before_running(tmp_path) -> None:
    sink = RecordingSink()
    code = run(tmp_path, "fake_adapters:CountingAdapter", sink, advanced_config={"weight_decay": "lots"})
    assert code == train.EXIT_FAILED
    assert sink.statuses() == ["failed"]
    assert "advanced_config.weight_decay: expected a number or null, got str" in sink.status_calls()[0][1]


def test_unknown_framework_fails_the_job(tmp_path) -> None:
    sink = RecordingSink()
    assert run(tmp_path, "tensorflow", sink) == train.EXIT_FAILED
    assert "unknown framework 'tensorflow'" in sink.status_calls()[-1][1]
    assert run(tmp_path, "fake_adapters:RecordingSink", RecordingSink()) == train.EXIT_FAILED


def test_builtin_frameworks_resolve_lazily() -> None:
    assert registry.resolve_adapter("timm").__name__ == "TimmAdapter"
    assert registry.resolve_adapter("ultralytics").__name__ == "UltralyticsAdapter"


def test_sigterm_stops_at_a_batch_boundary_checkpoints_and_cancels(tmp_path) -> None:
    sink = RecordingSink()
    before = signal.getsignal(signal.SIGTERM)
    code = run(tmp_path, "fake_adapters:SelfTerminatingAdapter", sink, training_config={"epochs": 4})

    assert code == train.EXIT_CANCELLED == 143
    assert sink.statuses() == ["running", "cancelled"]
    # SIGTERM arrived before batch 2 of epoch 1: steps 5 and 6 ran, and the checkpoint holds them.
    assert json.loads((tmp_path / "weights" / "last.pt").read_text())["step"] == 6
    # Counted from 1, as the trainer's "Epoch N/M" lines are: it said "epoch 1" of the second epoch.
    assert "Stopped during epoch 2/4 at step 6" in sink.messages("INFO")
    assert [epoch for epoch, _, _ in sink.summaries()] == [0]
    assert signal.getsignal(signal.SIGTERM) is before


def test_main_rejects_unreadable_config_files_as_failed(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("BACKEND_API_URL", raising=False)
    argv = ["--job-id", "j", "--framework", "fake_adapters:CountingAdapter", "--output-dir", str(tmp_path)]
    assert train.main([*argv, "--model-config", "@/nonexistent.json", "--dataset-config", "{}"]) == 1
    assert train.main([*argv, "--model-config", "{not json", "--dataset-config", "{}"]) == 1
    model = tmp_path / "model.json"
    model.write_text('{"name": "counter"}')
    code = train.main([*argv, "--model-config", f"@{model}", "--dataset-config", '{"name": "n"}'])
    assert code == 0
    # The trainer service reads the run's progress from the output dir.
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["epoch"] == 0 and progress["metrics"]["val/accuracy"] == 0.5


def test_main_creates_a_private_data_dir(tmp_path, monkeypatch) -> None:
    # Standalone, tp-train made its data directory (the local artifacts and MLflow store) 0755, where the trainer
    # service and `tp up` make theirs 0700. The default one is the output directory's parent; TP_DATA_DIR another.
    monkeypatch.delenv("BACKEND_API_URL", raising=False)
    monkeypatch.delenv("TP_DATA_DIR", raising=False)
    monkeypatch.setenv("TP_MLFLOW_ENABLED", "false")  # the artifact store alone: no MLflow database to create
    configs = ["--model-config", '{"name": "counter"}', "--dataset-config", '{"name": "numbers"}']
    argv = ["--job-id", "j", "--framework", "fake_adapters:CountingAdapter", *configs]
    assert train.main([*argv, "--output-dir", str(tmp_path / "runs" / "j")]) == 0
    assert (tmp_path / "runs" / "artifacts" / "j" / "j" / "config.json").is_file()
    assert stat.S_IMODE((tmp_path / "runs").stat().st_mode) == 0o700
    monkeypatch.setenv("TP_DATA_DIR", str(tmp_path / "data"))
    assert train.main([*argv, "--output-dir", str(tmp_path / "elsewhere" / "j")]) == 0
    assert (tmp_path / "data" / "artifacts" / "j" / "j" / "config.json").is_file()
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BACKEND_API_URL", "INTERNAL_AUTH_TOKEN")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    return env


def _command(tmp_path: Path, framework: str, epochs: int = 3) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainingplatform_sdk.training.train",
        "--job-id",
        "job-cli",
        "--framework",
        framework,
        "--model-config",
        '{"name": "counter"}',
        "--dataset-config",
        '{"name": "numbers"}',
        "--training-config",
        json.dumps({"epochs": epochs}),
        "--output-dir",
        str(tmp_path / "out"),
    ]


def test_cli_exit_codes(tmp_path) -> None:
    ok = subprocess.run(_command(tmp_path, "fake_adapters:CountingAdapter"), env=_subprocess_env(), capture_output=True)
    assert ok.returncode == 0, ok.stderr.decode()
    failed = subprocess.run(
        _command(tmp_path, "fake_adapters:FailingAdapter"), env=_subprocess_env(), capture_output=True
    )
    assert failed.returncode == 1
    assert b"Training failed: RuntimeError: loss exploded at epoch 1" in failed.stderr
    usage = subprocess.run(_command(tmp_path, "x")[:3], env=_subprocess_env(), capture_output=True)
    assert usage.returncode == 2


def test_cli_sigterm_from_outside_exits_143_with_a_checkpoint(tmp_path) -> None:
    process = subprocess.Popen(
        _command(tmp_path, "fake_adapters:WaitingAdapter", epochs=5), env=_subprocess_env(), stderr=subprocess.PIPE
    )
    started = tmp_path / "out" / "started"
    deadline = time.monotonic() + 60
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), process.stderr.read().decode() if process.poll() is not None else "not started"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr.decode()
    assert b"Training cancelled" in stderr
    assert (tmp_path / "out" / "weights" / "last.pt").exists()


@pytest.mark.parametrize("status", list(Status))
def test_status_values_are_the_contract_strings(status: Status) -> None:
    assert status == status.value and status.value in {"running", "completed", "failed", "cancelled"}
