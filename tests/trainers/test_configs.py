"""The SDK's typed configs: validation, protobuf and mapping conversion, and the base adapter's loop."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fake_adapters import VAL_ACCURACY, CountingAdapter
from recording import RecordingSink
from trainingplatform.common.v1 import common_pb2
from trainingplatform_sdk.spec.configs import (
    AdvancedConfig,
    Augmentation,
    ConfigError,
    DatasetConfig,
    ModelConfig,
    TrainingConfig,
)
from trainingplatform_sdk.training.adapter import NullSink, Status, TelemetrySink


def test_configs_round_trip_through_protobuf() -> None:
    model = ModelConfig(name="resnet10t", pretrained=True, num_classes=10, image_size=32)
    dataset = DatasetConfig(name="digits")
    training = TrainingConfig(epochs=3, batch_size=64, learning_rate=0.01, device="cpu", log_every_n_steps=5)
    advanced = AdvancedConfig(
        optimizer="sgd",
        lr_scheduler="step",
        momentum=0.9,
        seed=7,
        augmentation=Augmentation(enabled=True, scale=0.5),
        extra={"mosaic": 0.5, "close_mosaic": 3, "name": "x"},
    )
    for config in (model, dataset, training, advanced):
        message = config.to_proto()
        assert type(config).from_proto(type(message).FromString(message.SerializeToString())) == config
    # Unset optional fields stay unset on the wire, so the trainer can tell "default" from "0".
    message = advanced.to_proto()
    assert not message.HasField("weight_decay") and not message.augmentation.HasField("color_jitter")


def test_struct_extra_numbers_come_back_as_ints_when_integral() -> None:
    message = common_pb2.AdvancedConfig()
    message.extra.update({"close_mosaic": 3, "mosaic": 0.5})
    extra = AdvancedConfig.from_proto(message).extra
    assert extra == {"close_mosaic": 3, "mosaic": 0.5}
    assert isinstance(extra["close_mosaic"], int)


def test_empty_advanced_proto_is_all_defaults() -> None:
    assert AdvancedConfig.from_proto(common_pb2.AdvancedConfig()) == AdvancedConfig()


def test_advanced_from_mapping_moves_unknown_keys_into_extra() -> None:
    config = AdvancedConfig.from_mapping(
        {
            "optimizer": "adamw",
            "weight_decay": 0,
            "mosaic": 0.0,
            "augmentation": {"scale": 0.3, "blur": 1},
            "extra": {"plots": True},
        }
    )
    assert config.optimizer == "adamw" and config.weight_decay == 0.0 and isinstance(config.weight_decay, float)
    assert config.augmentation == Augmentation(scale=0.3)
    assert config.extra == {"plots": True, "mosaic": 0.0, "augmentation.blur": 1}
    assert set(config.unknown_keys) == {"mosaic", "augmentation.blur"}
    # to_dict keeps the unknown values (in extra) and reads back to the same config.
    assert AdvancedConfig.from_mapping(config.to_dict()) == config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"weight_decay": "0.1"}, "advanced_config.weight_decay: expected a number or null, got str"),
        ({"seed": 1.5}, "advanced_config.seed: expected an integer or null, got float"),
        ({"seed": True}, "advanced_config.seed: expected an integer or null, got bool"),
        ({"mixed_precision": "yes"}, "advanced_config.mixed_precision: expected a boolean or null, got str"),
        ({"optimizer": 3}, "advanced_config.optimizer: expected a string or null, got int"),
        ({"augmentation": {"scale": "big"}}, "advanced_config.augmentation.scale: expected a number or null"),
        ({"augmentation": [1]}, "advanced_config.augmentation: expected a JSON object, got list"),
        ({"extra": 5}, "advanced_config.extra: expected a JSON object, got int"),
        ({"lr_scheduler": "poly"}, "advanced_config.lr_scheduler: must be one of ['cosine', 'step', 'linear'"),
        ({"momentum": 1.0}, "advanced_config.momentum: must be in [0.0, 1.0)"),
        ({"warmup_epochs": -1}, "advanced_config.warmup_epochs: must be in [0.0, 1000000.0]"),
        ({"seed": -1}, "advanced_config.seed: must be at least 0"),
        ({"seed": 2**64}, "advanced_config.seed: must be at most 4294967295"),
        ({"weight_decay": 1e300}, "advanced_config.weight_decay: must be in [0.0, 100.0]"),
        ({"augmentation": {"horizontal_flip_probability": 2}}, "horizontal_flip_probability: must be in [0.0, 1.0]"),
    ],
)
def test_bad_advanced_values_are_rejected_naming_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        AdvancedConfig.from_mapping(data)
    assert message in str(raised.value)


def test_a_framework_s_bounds_honour_an_open_highest_value() -> None:
    # The ultralytics adapter checked its bounds with its own loop, which took every highest value as allowed.
    bounds = {"momentum": (0.0, 0.9, True), "augmentation.scale": (0.0, 0.5, False)}
    AdvancedConfig.from_mapping({"momentum": 0.89, "augmentation": {"scale": 0.5}}).check_bounds(bounds, "fw")
    with pytest.raises(ConfigError, match=r"^advanced_config\.momentum: must be in \[0, 0\.9\) for fw, got 0\.9$"):
        AdvancedConfig.from_mapping({"momentum": 0.9}).check_bounds(bounds, "fw")
    with pytest.raises(
        ConfigError, match=r"^advanced_config\.augmentation\.scale: must be in \[0, 0\.5\] for fw, got 0\.75"
    ):
        AdvancedConfig.from_mapping({"augmentation": {"scale": 0.75}}).check_bounds(bounds, "fw")


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        (TrainingConfig, {"epochs": "3"}, "training_config.epochs: expected an integer, got str"),
        (TrainingConfig, {"epochs": True}, "training_config.epochs: expected an integer, got bool"),
        (TrainingConfig, {"epochs": 0}, "training_config.epochs: must be at least 1"),
        (TrainingConfig, {"device": "tpu"}, "training_config.device: must be auto, cpu, cuda or cuda:N"),
        # Past the contract's bounds (and protobuf's int32): named, not protobuf's "Value out of range".
        (TrainingConfig, {"epochs": 10**20}, "training_config.epochs: must be at most 1000000"),
        (TrainingConfig, {"batch_size": 2**40}, "training_config.batch_size: must be at most 65536"),
        (TrainingConfig, {"learning_rate": 1e300}, "training_config.learning_rate: must be in [0.0, 100.0]"),
        (ModelConfig, {"name": "m", "image_size": 10**10}, "model_config.image_size: must be at most 8192"),
        (ModelConfig, {"name": "m", "num_classes": 2**31}, "model_config.num_classes: must be at most 1000000"),
        (TrainingConfig, {"epoch": 3}, "training_config: unknown key(s) ['epoch']"),
        (ModelConfig, {"name": ""}, "model_config.name: required"),
        (ModelConfig, {"name": "m", "pretrained": 1}, "model_config.pretrained: expected a boolean, got int"),
        (DatasetConfig, {}, "dataset_config: give a built-in dataset `name` or a `path`"),
        (DatasetConfig, {"name": "d", "format": "coco"}, "dataset_config.format: must be one of"),
        (DatasetConfig, ["digits"], "dataset_config: expected a JSON object, got list"),
    ],
)
def test_bad_basic_config_values_are_rejected_naming_the_key(cls: type, data: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        cls.from_mapping(data)
    assert message in str(raised.value)


def test_defaults_and_derived_values() -> None:
    training = TrainingConfig(device="")
    assert (training.epochs, training.device, training.log_interval) == (1, "auto", 100)
    assert TrainingConfig(log_every_n_steps=7).log_interval == 7
    assert DatasetConfig(name="digits").resolved_format == "builtin"
    assert DatasetConfig(path="/d/data.yaml").resolved_format == "yolo"
    assert DatasetConfig(path="/d/images").resolved_format == "imagefolder"
    assert DatasetConfig(path="/d/images", format="yolo").resolved_format == "yolo"


def test_sdk_modules_do_not_import_torch() -> None:
    code = (
        "import sys, trainingplatform_sdk.training.adapter, trainingplatform_sdk.spec.configs\n"
        "import trainingplatform_sdk.training.train\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'ultralytics', 'numpy') if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_null_sink_implements_the_protocol() -> None:
    assert isinstance(NullSink(), TelemetrySink)
    assert isinstance(RecordingSink(), TelemetrySink)


def _counting_adapter(tmp_path, sink, epochs=3, **advanced) -> CountingAdapter:
    return CountingAdapter(
        ModelConfig(name="counter"),
        DatasetConfig(name="numbers"),
        TrainingConfig(epochs=epochs, log_every_n_steps=3),
        tmp_path,
        "job-1",
        logger=sink,
        advanced_config=AdvancedConfig.from_mapping(advanced),
    )


def test_default_loop_reports_epochs_and_tracks_the_best_checkpoint(tmp_path) -> None:
    sink = RecordingSink()
    adapter = _counting_adapter(tmp_path, sink, epochs=3, unknown_option=1)
    result = adapter.train()

    assert adapter.built == ["data", "model"]
    assert result.status == Status.COMPLETED and result.epochs_completed == 3
    assert (result.best_epoch, result.best_value) == (1, VAL_ACCURACY[1])
    assert result.best_checkpoint == tmp_path / "weights" / "best.pt"
    assert '"epoch": 1' in result.best_checkpoint.read_text()
    assert '"epoch": 2' in result.last_checkpoint.read_text()
    # One set of per-epoch points per epoch, at the global step of the epoch's end.
    assert sink.keys_by_epoch() == {e: ["train/loss", "val/accuracy", "epoch_time_s"] for e in range(3)}
    assert [p.step for p in sink.series("val/accuracy")] == [4, 8, 12]
    assert [p.step for p in sink.series("train/batch_loss")] == [3, 6, 9, 12]
    assert [(e, m["val/accuracy"]) for e, m, _ in sink.summaries()] == list(enumerate(VAL_ACCURACY[:3]))
    assert any("'unknown_option'" in m for m in sink.messages("WARNING"))
    # Status belongs to the entry point, not the adapter.
    assert sink.statuses() == []


def test_default_loop_stops_at_a_batch_boundary_and_checkpoints(tmp_path) -> None:
    sink = RecordingSink()
    adapter = _counting_adapter(tmp_path, sink, epochs=5)
    # Stop when the batch loss of step 6 (second batch of epoch 1) is reported.
    sink.on_metric = lambda p: adapter.request_stop() if p.key == "train/batch_loss" and p.step == 6 else None
    result = adapter.train()

    assert result.status == Status.CANCELLED
    assert result.epochs_completed == 1
    assert adapter.global_step == 6
    assert '"step": 6' in result.last_checkpoint.read_text()
    assert sink.keys_by_epoch().keys() == {0}  # the partial epoch 1 is not reported
