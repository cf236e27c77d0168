"""`tp-trainer-<framework> --describe` (what `tp frameworks` and docs/frameworks.md show) says what StartTraining
really enforces: every range, type and choice it lists is probed at its edges against a live trainer service of
the framework (`validate_only`, so nothing trains).

Real services: `tp-trainer-timm` and `tp-trainer-ultralytics` with their real adapters; nothing is downloaded.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from trainingplatform.common.v1 import common_pb2
from trainingplatform.trainer.v1 import trainer_pb2

from .trainer_process import VENV_BIN, TrainerProcess, spec

CPUS = os.cpu_count() or 1
_ids = itertools.count()


def _describe(framework: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(VENV_BIN / f"tp-trainer-{framework}"), "--describe"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=["timm", "ultralytics"])
def described(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TrainerProcess, dict[str, Any]]]:
    framework = request.param
    trainer = TrainerProcess(tmp_path_factory.mktemp(f"describe-{framework}"), executable=f"tp-trainer-{framework}")
    trainer.start()
    try:
        yield trainer, _describe(framework)
    finally:
        trainer.close()


def _base(framework: str) -> common_pb2.JobSpec:
    if framework == "ultralytics":
        return spec(framework="ultralytics", model="yolo11n.yaml", dataset="shapes", image_size=64)
    return spec()


def _answer(trainer: TrainerProcess, framework: str, section: str, key: str, value: Any) -> str:
    """ "" when StartTraining (validate_only) accepts the value at `key`, else its INVALID_ARGUMENT message."""
    job_spec = _base(framework)
    try:
        if section == "extra":
            job_spec.advanced.extra.update({key: value})
        else:
            *parents, name = key.split(".")
            target: Any = job_spec.advanced
            for parent in parents:
                target = getattr(target, parent)
            setattr(target, name, value)
    except (TypeError, ValueError) as error:  # the message type cannot even hold it: refused before sending
        return f"unrepresentable: {error}"
    request = trainer_pb2.StartTrainingRequest(job_id=f"probe-{next(_ids)}", spec=job_spec, validate_only=True)
    try:
        trainer.stub.StartTraining(request, metadata=trainer.metadata, timeout=60)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (key, value, error.details())
        return error.details() or "refused"
    return ""


def _probes(entry: dict[str, Any]) -> list[tuple[Any, bool]]:
    """(value, accepted?) pairs at the edges of what the entry says."""
    kind, low, high = entry["type"], entry.get("low"), entry.get("high")
    if kind in ("owned", "ignored"):
        return [(1, False)]
    if kind == "bool":
        return [(True, True), (False, True), ("yes", False)]
    if kind == "str":
        choices = entry.get("choices") or []
        if not choices:
            return [("x", True), (1, False)]
        good = "adamw" if "adamw" in choices else choices[0]
        return [(good, True), (good.upper(), bool(entry.get("case_insensitive"))), ("no-such-name", False)]
    if kind not in ("int", "number", "fraction"):
        return []  # several types: checked by the framework's own check_job (tests/security)
    step = 1 if kind == "int" else 1e-6
    probes: list[tuple[Any, bool]] = [("1", False)]
    if kind == "int":
        probes.append((1.5, False))
    if low is not None:
        probes += [(low, True), (low - step, False)]
    if high is not None:
        probes += [(high, not entry.get("high_open")), (high + step, False)]
        if entry.get("high_open"):
            probes.append((high - step, True))
    if entry.get("bound") == "cpus":
        probes += [(CPUS, True), (CPUS + 1, False)]
    if low is None and high is None:
        probes.append((3 if kind == "int" else 0.25, True))
    return [(int(v) if kind == "int" and isinstance(v, float) and v.is_integer() else v, ok) for v, ok in probes]


def test_every_listed_range_type_and_choice_is_what_start_training_enforces(
    described: tuple[TrainerProcess, dict[str, Any]],
) -> None:
    trainer, description = described
    framework = description["framework"]
    entries = [("advanced", e) for e in description["advanced"]] + [("extra", e) for e in description["extra"] or []]
    assert len(entries) > 10
    wrong: list[str] = []
    probed = 0
    for section, entry in entries:
        for value, accepted in _probes(entry):
            probed += 1
            message = _answer(trainer, framework, section, entry["key"], value)
            if accepted and message:
                wrong.append(f"{section}.{entry['key']}={value!r} ({entry['range']}) refused: {message}")
            elif not accepted and not message:
                wrong.append(f"{section}.{entry['key']}={value!r} ({entry['range']}) accepted")
            elif entry["type"] == "owned" and entry["use_instead"].split(" ")[0] not in message:
                wrong.append(f"{section}.{entry['key']}: the refusal does not name {entry['use_instead']}: {message}")
            elif entry["type"] == "ignored" and "never by training" not in message:
                wrong.append(f"{section}.{entry['key']}: the refusal does not say training ignores it: {message}")
    assert probed > 40
    assert not wrong, "\n".join(wrong)


def test_the_description_names_the_optimizers_schedules_and_framework_keys(
    described: tuple[TrainerProcess, dict[str, Any]],
) -> None:
    trainer, description = described
    framework = description["framework"]
    keys = {e["key"] for e in description["advanced"]}
    assert {"optimizer", "lr_scheduler", "weight_decay", "momentum", "warmup_epochs", "seed"} <= keys
    assert {"augmentation.enabled", "augmentation.scale", "augmentation.horizontal_flip_probability"} <= keys
    assert description["lr_schedulers"] == ["cosine", "step", "linear", "constant"]
    extra = {e["key"]: e for e in description["extra"]}
    assert extra["num_threads"]["bound"] == "cpus"
    if framework == "timm":
        assert {"num_threads", "label_smoothing", "drop_rate"} == set(extra)
        assert {"sgd", "adamw", "lookahead_adamw"} <= set(description["optimizers"])
        assert next(e for e in description["advanced"] if e["key"] == "optimizer")["default"] == "adamw"
    else:
        # ultralytics' own train arguments, with its defaults (default.yaml) and the adapter's
        assert extra["mosaic"]["type"] == "fraction" and extra["mosaic"]["default"] == 1.0
        assert extra["close_mosaic"]["type"] == "int" and extra["close_mosaic"]["doc"]
        assert extra["plots"]["default"] is False  # the adapter turns plots off
        assert extra["device"]["type"] == "owned" and extra["device"]["use_instead"] == "training_config.device"
        assert set(description["optimizers"]) == {"sgd", "adam", "adamw", "nadam", "radam", "rmsprop"} | {
            "adamax",
            "musgd",
            "auto",
        }
    # An extra key the description does not list is refused, naming the closest listed one.
    near = "label_smoothin" if framework == "timm" else "mosiac"
    assert "did you mean" in _answer(trainer, framework, "extra", near, 0.1)


@pytest.mark.parametrize("described", ["timm"], indirect=True)
def test_timm_lists_no_second_order_optimizer_and_still_says_why_it_refuses_one(
    described: tuple[TrainerProcess, dict[str, Any]],
) -> None:
    # `adahessian` and `lookahead_adahessian` were listed (`tp frameworks`, docs/frameworks.md, the optimizer
    # entry's choices), and refused at submit: their step needs a backward pass the training loop does not make.
    trainer, description = described
    choices = next(e for e in description["advanced"] if e["key"] == "optimizer")["choices"]
    for name in ("adahessian", "lookahead_adahessian"):
        assert name not in description["optimizers"]
        assert name not in choices
        message = _answer(trainer, "timm", "advanced", "optimizer", name)
        assert message.startswith(f"advanced_config.optimizer: {name!r} is a second-order optimizer, which the timm"), (
            message
        )
