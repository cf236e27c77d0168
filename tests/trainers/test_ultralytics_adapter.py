"""The ultralytics adapter, training YOLO for real on the built-in synthetic shapes dataset on the CPU.

With 24 training images mAP stays near 0 after 1-2 epochs, so the tests assert on losses, callbacks and files.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from recording import RecordingSink
from trainingplatform_sdk.spec.configs import AdvancedConfig, ConfigError, DatasetConfig, ModelConfig, TrainingConfig
from trainingplatform_sdk.training.adapter import Status
from trainingplatform_trainer_ultralytics.adapter import UltralyticsAdapter, resolve_model
from trainingplatform_trainer_ultralytics.datasets import write_shapes_dataset

LOSS_KEYS = {f"{split}/{name}_loss" for split in ("train", "val") for name in ("box", "cls", "dfl")}
EPOCH_KEYS = LOSS_KEYS | {
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP50",
    "metrics/mAP50-95",
    "lr/pg0",
    "lr/pg1",
    "lr/pg2",
    "epoch_time_s",
}
BATCHES_PER_EPOCH = 3  # 24 shapes training images, batch 8


def make_adapter(tmp_path, sink, *, model="yolo11n.yaml", dataset=None, epochs=1, advanced=None, **training):
    return UltralyticsAdapter(
        ModelConfig(name=model, image_size=64),
        dataset or DatasetConfig(name="shapes"),
        TrainingConfig(epochs=epochs, batch_size=8, device="cpu", **training),
        tmp_path / "out",
        "job-yolo",
        logger=sink,
        advanced_config=AdvancedConfig.from_mapping(advanced or {}),
    )


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """yolo11n on shapes at 64 px for 2 epochs, batch loss every 2 batches, with advanced options mapped."""
    tmp_path = tmp_path_factory.mktemp("shapes")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    previous = os.getcwd()
    os.chdir(cwd)  # ultralytics' MLflow autologging would create mlflow.db in the working directory
    try:
        sink = RecordingSink()
        adapter = make_adapter(
            tmp_path,
            sink,
            epochs=2,
            log_every_n_steps=2,
            advanced={
                "optimizer": "adamw",
                "lr_scheduler": "cosine",
                "warmup_epochs": 0,
                "seed": 1,
                "augmentation": {"horizontal_flip_probability": 0.25, "color_jitter": 0.3},
                "mosaic": 0.0,
                "not_an_option": 1,
                "extra": {"close_mosaic": 0},
            },
        )
        result = adapter.train()
    finally:
        os.chdir(previous)
    times = [round(p.value, 2) for p in sink.series("epoch_time_s")]
    print(f"\nyolo11n shapes 64px: epoch_time_s {times}")
    return adapter, result, sink, cwd


def test_training_completes_with_ultralytics_checkpoints(shapes_run) -> None:
    adapter, result, _, _ = shapes_run
    assert result.status == Status.COMPLETED and result.epochs_completed == 2
    assert result.best_checkpoint == adapter.output_dir / "weights" / "best.pt"
    assert result.last_checkpoint == adapter.output_dir / "weights" / "last.pt"
    assert result.best_checkpoint.stat().st_size > 0 and result.last_checkpoint.stat().st_size > 0


def test_each_epoch_reports_each_key_once_and_losses_are_finite(shapes_run) -> None:
    _, _, sink, _ = shapes_run
    by_epoch = sink.keys_by_epoch()
    # Epochs 0 and 1 only: the extra on_fit_epoch_end after the final validation (epoch == 2) adds no points.
    assert set(by_epoch) == {0, 1}
    for keys in by_epoch.values():
        assert sorted(keys) == sorted(EPOCH_KEYS)
    for key in LOSS_KEYS:
        assert all(math.isfinite(p.value) and p.value > 0 for p in sink.series(key)), key
    assert [p.step for p in sink.series("train/box_loss")] == [BATCHES_PER_EPOCH, 2 * BATCHES_PER_EPOCH]
    assert any(m.startswith("Final validation of best.pt") for m in sink.messages("INFO"))


def test_batch_loss_every_n_batches(shapes_run) -> None:
    _, _, sink, _ = shapes_run
    points = sink.series("train/batch_loss")
    assert [(p.step, p.epoch) for p in points] == [(2, 0), (4, 1), (6, 1)]
    assert all(math.isfinite(p.value) and p.value > 0 for p in points)


def test_epoch_summaries(shapes_run) -> None:
    _, _, sink, _ = shapes_run
    summaries = sink.summaries()
    assert [epoch for epoch, _, _ in summaries] == [0, 1]
    assert all(set(metrics) == EPOCH_KEYS and duration > 0 for _, metrics, duration in summaries)


def test_advanced_config_maps_onto_train_arguments(shapes_run) -> None:
    adapter, _, sink, _ = shapes_run
    args = adapter.trainer.args
    assert (args.optimizer, args.cos_lr, args.warmup_epochs, args.seed) == ("AdamW", True, 0, 1)
    assert (args.fliplr, args.hsv_s, args.hsv_v, args.mosaic, args.close_mosaic) == (0.25, 0.3, 0.3, 0.0, 0)
    assert (args.imgsz, args.batch, args.epochs) == (64, 8, 2)
    assert Path(adapter.trainer.save_dir) == adapter.output_dir.resolve()
    warnings = sink.messages("WARNING")
    assert [w for w in warnings if "advanced_config" in w] == [
        "advanced_config: unknown key 'not_an_option' is ignored by the ultralytics trainer"
    ]


def test_ultralytics_stays_offline_and_out_of_home_and_mlflow(shapes_run) -> None:
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    _, _, _, cwd = shapes_run
    assert list(cwd.iterdir()) == []  # no mlflow.db, no runs/
    assert SETTINGS["mlflow"] is False and SETTINGS["sync"] is False
    assert (USER_CONFIG_DIR / "Arial.ttf").is_file()
    assert Path.home() / ".config" not in USER_CONFIG_DIR.parents


def test_stop_request_ends_the_epoch_at_the_next_batch_from_a_local_pt(tmp_path, shapes_run) -> None:
    sink = RecordingSink()
    local_pt = str(shapes_run[1].last_checkpoint)
    adapter = make_adapter(tmp_path, sink, model=local_pt, epochs=3, log_every_n_steps=1, advanced={"mosaic": 0.0})
    sink.on_metric = lambda p: adapter.request_stop() if p.key == "train/batch_loss" and p.step == 1 else None
    result = adapter.train()
    assert result.status == Status.CANCELLED
    # The request came while step 1 was being reported: ultralytics leaves the loop right after that batch.
    assert [p.step for p in sink.series("train/batch_loss")] == [1]
    assert adapter.trainer.stop is True
    assert sink.keys_by_epoch() == {}  # the partial epoch is not reported
    assert result.last_checkpoint is not None and result.last_checkpoint.exists()


def test_unknown_model_suggests_close_names(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown ultralytics model 'yolo11q.yaml'.*closest valid names: .*yolo11n"):
        resolve_model("yolo11q.yaml")
    with pytest.raises(FileNotFoundError, match="trainers never download"):
        make_adapter(tmp_path, RecordingSink(), model="yolo11n.pt").train()


def test_missing_dataset_and_bad_options_are_clear_errors(tmp_path) -> None:
    missing = DatasetConfig(path=str(tmp_path / "none" / "data.yaml"))
    with pytest.raises(FileNotFoundError, match=r"dataset_config\.path: .*data.yaml' does not exist"):
        make_adapter(tmp_path, RecordingSink(), dataset=missing).train()
    with pytest.raises(ConfigError, match="unknown built-in dataset 'coco'"):
        make_adapter(tmp_path, RecordingSink(), dataset=DatasetConfig(name="coco")).train()
    with pytest.raises(ConfigError, match=r"advanced_config\.extra\.num_threads"):
        make_adapter(tmp_path, RecordingSink(), advanced={"num_threads": 0}).train()
    with pytest.raises(ConfigError, match=r"advanced_config\.optimizer: ultralytics supports"):
        make_adapter(tmp_path, RecordingSink(), advanced={"optimizer": "lamb"}).train()
    # Without the trainer service (tp-train), with its message.
    with pytest.raises(
        ConfigError, match=r"^advanced_config\.weight_decay: must be in \[0, 1\] for ultralytics, got 5$"
    ):
        make_adapter(tmp_path, RecordingSink(), advanced={"weight_decay": 5.0}).check()


def test_cache_on_disk_is_refused_before_anything_is_written(tmp_path) -> None:
    # `cache: disk` made ultralytics save a .npy beside each image, inside the data set; tp-train refuses it too.
    data_yaml = write_shapes_dataset(tmp_path / "ds", train_images=2, val_images=1, image_size=32)
    before = _files(tmp_path / "ds")
    adapter = make_adapter(
        tmp_path, RecordingSink(), dataset=DatasetConfig(path=str(data_yaml)), advanced={"extra": {"cache": "disk"}}
    )
    with pytest.raises(ConfigError, match=r"^advanced_config\.extra\.cache: 'disk' would save a \.npy beside each "):
        adapter.train()
    assert _files(tmp_path / "ds") == before
    make_adapter(tmp_path, RecordingSink(), advanced={"extra": {"cache": "ram"}}).check()


def test_shapes_dataset_is_deterministic(tmp_path) -> None:
    first = write_shapes_dataset(tmp_path / "a", train_images=4, val_images=2, seed=5)
    second = write_shapes_dataset(tmp_path / "b", train_images=4, val_images=2, seed=5)
    for split, count in (("train", 4), ("val", 2)):
        labels = sorted((first.parent / "labels" / split).glob("*.txt"))
        assert len(labels) == count
        for path in labels:
            assert path.read_text() == (second.parent / "labels" / split / path.name).read_text()
            for line in path.read_text().splitlines():
                cls, *box = line.split()
                assert cls in {"0", "1"} and all(0 < float(v) <= 1 for v in box)
    assert "names:\n  0: rectangle\n  1: circle\n" in first.read_text()


def test_cli_in_a_clean_home_writes_nothing_outside_the_output_dir(tmp_path) -> None:
    home, cwd, out = tmp_path / "home", tmp_path / "cwd", tmp_path / "out"
    home.mkdir()
    cwd.mkdir()
    removed = ("BACKEND_API_URL", "YOLO_CONFIG_DIR", "MPLCONFIGDIR", "XDG_CONFIG_HOME", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in removed}
    env["HOME"] = str(home)
    command = [
        sys.executable,
        "-m",
        "trainingplatform_sdk.training.train",
        "--job-id=job-cli",
        "--framework=ultralytics",
        '--model-config={"name": "yolo11n.yaml", "image_size": 64}',
        '--dataset-config={"name": "shapes"}',
        '--training-config={"epochs": 1, "batch_size": 8}',
        f"--advanced-config={json.dumps({'mosaic': 0.0})}",
        f"--output-dir={out}",
    ]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert list(home.iterdir()) == [] and list(cwd.iterdir()) == []
    settings = json.loads((out / ".ultralytics" / "Ultralytics" / "settings.json").read_text())
    assert settings["mlflow"] is False and settings["sync"] is False
    assert (out / "weights" / "last.pt").is_file()


def test_augmentation_off_constant_schedule_and_step_warning(tmp_path) -> None:
    sink = RecordingSink()
    adapter = make_adapter(
        tmp_path,
        sink,
        learning_rate=0.02,
        advanced={
            "augmentation": {"enabled": False},
            "lr_scheduler": "step",
            "mixed_precision": False,
            "optimizer": "SGD",
            "momentum": 0.5,
            "extra": {"patience": 3, "epochs": 99},
        },
    )
    args = adapter.train_args(tmp_path / "data.yaml", 64)
    assert all(args[key] == 0.0 for key in ("fliplr", "mosaic", "hsv_s", "scale", "translate"))
    assert (args["optimizer"], args["momentum"], args["amp"], args["lr0"]) == ("SGD", 0.5, False, 0.02)
    assert "cos_lr" not in args and args["patience"] == 3
    assert args["epochs"] == 1  # `extra` cannot override what the adapter owns
    assert any("'step' is not supported" in m for m in sink.messages("WARNING"))
    adapter.advanced_config.lr_scheduler = "constant"
    assert adapter.train_args(tmp_path / "data.yaml", 64)["lrf"] == 1.0


#: A training process that loads with ultralytics' loader and 2 workers, stops on SIGTERM at a batch boundary as
#: tp-train does, and prints its workers' pids, then how its batches went.
_LOADING_PROCESS = """
import os, signal, sys, time
from trainingplatform_trainer_ultralytics.adapter import loader_workers_ignore_stop_signals
from ultralytics.data.build import build_dataloader

class Numbers:
    def __len__(self):
        return 64

    def __getitem__(self, index):
        return index

stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
loader_workers_ignore_stop_signals()
loader = build_dataloader(Numbers(), batch=4, workers=2, shuffle=False, device="cpu")
batches = iter(loader)
next(batches)
workers = loader.iterator._workers
while any(os.getpgid(worker.pid) != worker.pid for worker in workers):  # until each ran its worker_init_fn
    time.sleep(0.01)
print(*[worker.pid for worker in workers], flush=True)
while not stop:
    time.sleep(0.01)
time.sleep(0.5)
print("batches", *[len(next(batches)) for _ in range(10)], flush=True)
"""


def test_loader_workers_outlive_a_stop_signal_sent_to_the_process_group() -> None:
    # On a GPU ultralytics loads with workers (on the CPU with none). A cancel sends SIGTERM to the whole process
    # group: a worker killed by it made torch raise "DataLoader worker (pid ...) is killed by signal: Terminated"
    # in the training process before it could stop at a batch boundary.
    import signal

    process = subprocess.Popen(
        [sys.executable, "-c", _LOADING_PROCESS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        workers = [int(pid) for pid in process.stdout.readline().split()]
        assert len(workers) == 2, process.stderr.read()
        os.killpg(process.pid, signal.SIGTERM)  # as the trainer service cancels a run
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "killed by signal" not in err
    assert out.split() == ["batches"] + ["4"] * 10


def test_a_data_yaml_download_script_never_runs_even_when_its_images_vanish(tmp_path: Path) -> None:
    # Ultralytics runs a data.yaml's `download:` (a URL, or Python code it exec()s) when the yaml's images are
    # missing. A security review deleted `val` after the trainer's checks passed, and the code ran in tp-train. The
    # trainer trains on a copy of the yaml without it.
    from trainingplatform_trainer_ultralytics.datasets import resolve_data_yaml
    from ultralytics.data.utils import check_det_dataset

    root = tmp_path / "y1"
    (root / "images" / "train").mkdir(parents=True)
    marker = tmp_path / "download-ran"
    (root / "data.yaml").write_text(
        "train: images/train\nval: images/val\nnames:\n  0: box\n"
        f"download: |\n  import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n"
    )
    config = DatasetConfig(path=str(root / "data.yaml"), format="yolo")
    (root / "images" / "val").mkdir()  # present for the trainer's checks...
    data_yaml = resolve_data_yaml(config, tmp_path / "work", image_size=64)
    (root / "images" / "val").rmdir()  # ...gone when ultralytics reads the yaml
    with pytest.raises(Exception, match=r"(?i)not found|missing|download"):
        check_det_dataset(str(data_yaml), autodownload=True)
    assert not marker.exists(), "the data.yaml's download code ran"


def test_a_learning_rate_without_an_optimizer_trains_with_it_on_sgd(tmp_path) -> None:
    # With no optimizer, ultralytics' default optimizer=auto replaced lr0 and momentum with its own (AdamW at
    # 0.001667 here) and said so only in its own log: the job log showed `'lr0': 0.0042`.
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink, learning_rate=0.0042, advanced={"momentum": 0.5, "mosaic": 0.0})
    result = adapter.train()
    assert result.status == Status.COMPLETED
    optimizer = adapter.trainer.optimizer
    assert type(optimizer).__name__ == "SGD"
    assert {group["initial_lr"] for group in optimizer.param_groups} == {0.0042}
    assert (adapter.trainer.args.lr0, adapter.trainer.args.momentum) == (0.0042, 0.5)
    said = [m for m in sink.messages("INFO") if "given without advanced_config.optimizer: training with SGD" in m]
    assert len(said) == 1, sink.messages("INFO")


def test_no_learning_rate_and_no_optimizer_keeps_ultralytics_auto(tmp_path) -> None:
    sink = RecordingSink()
    args = make_adapter(tmp_path, sink).train_args(tmp_path / "data.yaml", 64)
    assert "optimizer" not in args and "lr0" not in args
    # An explicit `auto` is the user's choice; it is kept, with a warning that it sets its own learning rate.
    sink = RecordingSink()
    args = make_adapter(tmp_path, sink, learning_rate=0.02, advanced={"optimizer": "auto"}).train_args(
        tmp_path / "data.yaml", 64
    )
    assert args["optimizer"] == "auto"
    assert any("training_config.learning_rate" in m and "auto" in m for m in sink.messages("WARNING"))


def test_a_stop_skips_the_validation_of_the_partial_epoch_and_of_best_pt(tmp_path, monkeypatch) -> None:
    # Ultralytics validated twice after a stop (the partial epoch, then best.pt in final_eval): on a large
    # validation set that outran the cancel's grace, and the SIGKILL came before last.pt was uploaded.
    from ultralytics.engine.validator import BaseValidator

    validations: list[int] = []
    validate = BaseValidator.__call__

    def counting(validator, *args, **kwargs):
        validations.append(adapter.global_step)
        return validate(validator, *args, **kwargs)

    monkeypatch.setattr(BaseValidator, "__call__", counting)
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink, epochs=2, log_every_n_steps=1, advanced={"mosaic": 0.0})
    # Stop during the second epoch: epoch 0 is validated as usual, nothing after the stop.
    sink.on_metric = lambda p: adapter.request_stop() if p.key == "train/batch_loss" and p.step == 4 else None
    result = adapter.train()
    assert result.status == Status.CANCELLED and result.epochs_completed == 1
    assert validations == [BATCHES_PER_EPOCH]  # epoch 0's validation only
    assert result.last_checkpoint is not None and result.last_checkpoint.exists()
    assert result.best_checkpoint is not None  # epoch 0's, validated
    assert not any(m.startswith("Final validation of best.pt") for m in sink.messages("INFO"))


def test_epochs_without_validation_report_no_validation_metrics(tmp_path) -> None:
    # With val=false ultralytics validates only the last epoch; the others carried its placeholder zeros, which
    # were reported as val/box_loss=0 and mAP50-95=0 (and made epoch 0 the best).
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink, epochs=2, advanced={"mosaic": 0.0, "extra": {"val": False}})
    result = adapter.train()
    assert result.status == Status.COMPLETED and result.epochs_completed == 2
    by_epoch = sink.keys_by_epoch()
    assert not [k for k in by_epoch[0] if k.startswith(("val/", "metrics/"))], by_epoch[0]
    assert {"train/box_loss", "lr/pg0", "epoch_time_s"} <= set(by_epoch[0])
    assert {"val/box_loss", "metrics/mAP50-95"} <= set(by_epoch[1])  # the last epoch is validated
    assert result.best_epoch == 1
    assert [epoch for epoch, _, _ in sink.summaries()] == [0, 1]
    assert not any(k.startswith(("val/", "metrics/")) for k in sink.summaries()[0][1])


def test_the_amp_check_never_downloads_and_weights_stay_under_the_config_dir(tmp_path, monkeypatch) -> None:
    # With amp on (the default) on CUDA, ultralytics' check_amp loaded WEIGHTS_DIR/yolo26n.pt, downloading it from
    # GitHub, with WEIGHTS_DIR outside the output directory. A model on the meta device takes the same path on CPU:
    # ultralytics' own trainer setup runs up to its data loaders, its AMP check included, with that model.
    import torch
    from trainingplatform_trainer_ultralytics import offline
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import downloads

    config_dir = tmp_path / "cfg"
    offline.prepare_offline(config_dir, torch.get_num_threads())
    downloaded: list[str] = []

    def no_network(*args, **kwargs):
        downloaded.append(str(kwargs.get("url") or args[0]))
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(downloads, "safe_download", no_network)

    class LoadersReached(Exception):
        pass

    class MetaDeviceTrainer(DetectionTrainer):
        def set_model_attributes(self) -> None:  # the last step before the AMP check that sees the model
            super().set_model_attributes()
            self.model = self.model.to("meta")

        def get_dataloader(self, *args, **kwargs):  # the first step after it
            raise LoadersReached

    data_yaml = write_shapes_dataset(tmp_path / "ds", train_images=2, val_images=1, image_size=32)
    overrides = {"model": "yolo11n.yaml", "data": str(data_yaml), "imgsz": 32, "device": "cpu", "batch": 2}
    trainer = MetaDeviceTrainer(overrides={**overrides, "project": str(tmp_path), "name": "run", "plots": False})
    with pytest.raises(LoadersReached):
        trainer._setup_train()
    assert downloaded == []
    assert trainer.args.amp is True and trainer.amp is True  # AMP on, as ultralytics decides off-line
    assert offline.check_amp(torch.nn.Linear(2, 2)) is False  # AMP is for CUDA only, as in ultralytics
    from ultralytics import utils

    weights = (config_dir / "weights").resolve()
    assert Path(utils.SETTINGS["weights_dir"]) == weights and weights == utils.WEIGHTS_DIR


def test_a_stop_in_the_first_epoch_strips_last_pt_and_returns_no_best_pt(tmp_path) -> None:
    # Skipping ultralytics' final_eval on a stop also skipped its strip_optimizer(last.pt): the cancelled job
    # uploaded a last.pt with its optimizer state and EMA. And with no epoch validated, ultralytics' `best_fitness
    # == fitness` (None == None) wrote best.pt from the partial epoch, which the result named as the best.
    import torch

    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink, epochs=2, log_every_n_steps=1, advanced={"mosaic": 0.0})
    sink.on_metric = lambda p: adapter.request_stop() if p.key == "train/batch_loss" and p.step == 1 else None
    result = adapter.train()
    assert result.status == Status.CANCELLED and result.epochs_completed == 0
    assert result.best_checkpoint is None
    # Nor is that unvalidated best.pt left in the output directory, where it passes for the best checkpoint.
    assert not adapter.best_checkpoint_path.exists()
    assert any("best.pt" in m and "removed" in m for m in sink.messages("INFO"))
    assert result.last_checkpoint is not None
    checkpoint = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    assert checkpoint["optimizer"] is None and checkpoint["ema"] is None and checkpoint["model"] is not None


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_training_writes_nothing_into_the_data_set_directory(tmp_path) -> None:
    # Ultralytics wrote labels/train.cache and labels/val.cache beside the data set's labels: jobs on the same data
    # set rewrote each other's, and a read-only data set mount made it warn. They go under the run's directory.
    data_yaml = write_shapes_dataset(tmp_path / "ds", image_size=64)
    before = _files(tmp_path / "ds")
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink, dataset=DatasetConfig(path=str(data_yaml)), advanced={"mosaic": 0.0})
    assert adapter.train().status == Status.COMPLETED
    assert _files(tmp_path / "ds") == before
    caches = sorted(p.name for p in (tmp_path / "out" / ".ultralytics" / "label_caches").iterdir())
    assert [name.rsplit("-", 1)[-1] for name in caches] == ["train.cache", "val.cache"], caches


def test_a_yolo_data_set_directory_stands_for_its_data_yaml(tmp_path) -> None:
    # A directory was refused with "the ultralytics trainer reads yolo or builtin, not 'imagefolder'".
    from trainingplatform_trainer_ultralytics import datasets

    data_yaml = write_shapes_dataset(tmp_path / "ds", train_images=2, val_images=1, image_size=32)
    directory = DatasetConfig(path=str(tmp_path / "ds"))
    make_adapter(tmp_path, RecordingSink(), dataset=directory).check()
    copy = datasets.resolve_data_yaml(directory, tmp_path / "work", image_size=32)
    assert f"path: {(tmp_path / 'ds').resolve()}" in copy.read_text()
    # The job log names the data.yaml trained on (the job record keeps the directory as given): it named only the
    # copy under the run directory. A stop before training: fit() logs the line and trains nothing.
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink, dataset=directory)
    adapter.request_stop()
    assert adapter.train().status == Status.CANCELLED
    assert any(
        m.startswith(f"Training yolo11n.yaml on {data_yaml.resolve()}, the data yaml of dataset_config.path ")
        for m in sink.messages("INFO")
    ), sink.messages("INFO")
    resolve_dataset = datasets.resolve_dataset
    assert resolve_dataset(directory) == DatasetConfig(path=str(data_yaml))
    # Another name: the directory's one yaml with `train` and `val` entries.
    data_yaml.rename(tmp_path / "ds" / "shapes.yaml")
    (tmp_path / "ds" / "notes.yaml").write_text("author: me\n")
    assert resolve_dataset(directory).path == str(tmp_path / "ds" / "shapes.yaml")
    (tmp_path / "ds" / "other.yml").write_text((tmp_path / "ds" / "shapes.yaml").read_text())
    with pytest.raises(ConfigError, match=r"is a directory with several YOLO data yamls \(.*other.yml', .*shapes"):
        resolve_dataset(directory)
    with pytest.raises(ConfigError, match=r"is a directory without a YOLO data.yaml .*give the path of the data"):
        make_adapter(tmp_path, RecordingSink(), dataset=DatasetConfig(path=str(tmp_path / "ds" / "images"))).check()


def _relabel(label_file: Path, class_id: int) -> None:
    """Gives every object of a YOLO label file the class `class_id`."""
    lines = label_file.read_text().splitlines()
    label_file.write_text("".join(f"{class_id} {line.split(' ', 1)[1]}\n" for line in lines))


def test_images_ultralytics_ignores_are_named_in_the_job_log(tmp_path) -> None:
    # 3 of 8 training label files naming class 5 of a 2-class data set: ultralytics dropped those images, said so
    # only in its own log (train.log), and the job completed with a silent job log.
    data_yaml = write_shapes_dataset(tmp_path / "ds", train_images=8, val_images=2, image_size=64)
    for index in range(3):
        _relabel(tmp_path / "ds" / "labels" / "train" / f"{index:04d}.txt", 5)
    sink = RecordingSink()
    adapter = make_adapter(
        tmp_path, sink, dataset=DatasetConfig(path=str(data_yaml)), log_every_n_steps=1, advanced={"mosaic": 0.0}
    )
    # The warning comes before the first batch, which then ends the training (a stop skips the validations).
    sink.on_metric = lambda point: adapter.request_stop()
    assert adapter.train().status == Status.CANCELLED
    assert sink.messages("WARNING") == [
        "3 of 8 training images ignored: Label class 5 exceeds dataset class count 2. Possible class labels are 0-1 "
        "(labels/train/0000.txt, labels/train/0001.txt, labels/train/0002.txt)"
    ]


def test_a_split_without_a_usable_image_fails_with_the_data_set_and_the_reason(tmp_path) -> None:
    # Every label bad: the job failed with "RuntimeError: No valid images found in .../labels/train.cache", a file
    # that does not exist (the caches live under the run directory), the reasons only on further lines.
    data_yaml = write_shapes_dataset(tmp_path / "ds", train_images=2, val_images=1, image_size=32)
    for label_file in (tmp_path / "ds" / "labels" / "train").glob("*.txt"):
        _relabel(label_file, 5)
    adapter = make_adapter(tmp_path, RecordingSink(), dataset=DatasetConfig(path=str(data_yaml)))
    with pytest.raises(ConfigError) as caught:
        adapter.train()
    assert str(caught.value) == (
        f"dataset_config.path: ultralytics ignored every training image of {str(data_yaml)!r}: Label class 5 exceeds "
        "dataset class count 2. Possible class labels are 0-1; check the label files: one `class x_center y_center "
        "width height` line per object, coordinates normalised to [0, 1], class ids below the data set's number of "
        "classes"
    )


def test_tp_train_refuses_what_the_trainer_service_refuses_about_classes_and_checkpoints(tmp_path) -> None:
    # Without the trainer service (tp-train) the same checks run in check(), before anything trains.
    import torch

    data_yaml = write_shapes_dataset(tmp_path / "ds", train_images=2, val_images=1, image_size=32)
    dataset = DatasetConfig(path=str(data_yaml))

    def adapter(model: ModelConfig, extra: dict | None = None) -> UltralyticsAdapter:
        return UltralyticsAdapter(
            model,
            dataset,
            TrainingConfig(epochs=1, batch_size=2, device="cpu"),
            tmp_path / "out",
            "job-yolo",
            logger=RecordingSink(),
            advanced_config=AdvancedConfig.from_mapping({"extra": extra or {}}),
        )

    with pytest.raises(ConfigError, match=r"^model_config\.num_classes is 3 but the data set \('.*data\.yaml'\) has 2"):
        adapter(ModelConfig(name="yolo11n.yaml", num_classes=3)).check()
    with pytest.raises(ConfigError, match=r"^advanced_config\.extra\.classes: class id\(s\) 4 not in the data set"):
        adapter(ModelConfig(name="yolo11n.yaml"), {"classes": [0, 4]}).check()
    with pytest.raises(ValueError, match=r"^advanced_config\.extra\.quantize: 8 \(INT8 quantization-aware training\)"):
        adapter(ModelConfig(name="yolo11n.yaml"), {"quantize": 8}).check()
    torch.save({"state_dict": {"fc.weight": torch.zeros(2)}}, tmp_path / "timm.pt")
    with pytest.raises(
        ConfigError, match=r"^model_config\.name: '.*timm\.pt' is not an ultralytics checkpoint \(saved"
    ):
        adapter(ModelConfig(name=str(tmp_path / "timm.pt"))).check()
    data_yaml.write_text(data_yaml.read_text().split("names:", 1)[0])
    with pytest.raises(ConfigError, match=r"^dataset_config\.path: '.*data\.yaml' has neither `names`"):
        adapter(ModelConfig(name="yolo11n.yaml")).check()
    data_yaml.write_text(data_yaml.read_text() + "names: [a, b]\n")
    adapter(ModelConfig(name="yolo11n.yaml", num_classes=2), {"classes": [0, 1]}).check()


def test_a_checkpoint_with_another_class_count_gets_a_new_head_and_the_log_says_so(tmp_path, shapes_run) -> None:
    # num_classes was checked against the data set only, never against the .pt's head: ultralytics builds the
    # model for the data set's classes and keeps the checkpoint's other weights, which the job log did not say.
    data_yaml = write_shapes_dataset(tmp_path / "ds", train_images=8, val_images=2, image_size=64)
    _relabel(tmp_path / "ds" / "labels" / "train" / "0000.txt", 2)
    data_yaml.write_text(data_yaml.read_text() + "  2: triangle\n")
    local_pt = str(shapes_run[1].last_checkpoint)  # 2 classes
    sink = RecordingSink()
    adapter = UltralyticsAdapter(
        ModelConfig(name=local_pt, image_size=64, num_classes=3),
        DatasetConfig(path=str(data_yaml)),
        TrainingConfig(epochs=1, batch_size=8, device="cpu"),
        tmp_path / "out",
        "job-new-head",
        logger=sink,
        advanced_config=AdvancedConfig.from_mapping({"mosaic": 0.0, "val": False}),
    )
    result = adapter.train()
    assert result.status == Status.COMPLETED
    assert adapter.trainer.model.nc == 3
    assert (
        f"model_config.name: {local_pt!r} has a 2-class head; ultralytics builds a new 3-class head for this data "
        "set (the checkpoint's other weights are kept)"
    ) in sink.messages("INFO"), sink.messages("INFO")


def test_freeze_by_module_name_freezes_that_module_only(tmp_path) -> None:
    # `freeze: ["23.cv2"]` (ultralytics' documented form) was refused; it freezes the Detect head's box branch.
    data_yaml = write_shapes_dataset(tmp_path / "ds", train_images=2, val_images=1, image_size=64)
    adapter = make_adapter(
        tmp_path,
        RecordingSink(),
        dataset=DatasetConfig(path=str(data_yaml)),
        advanced={"mosaic": 0.0, "val": False, "freeze": [0, "23.cv2"]},
    )
    assert adapter.train().status == Status.COMPLETED
    frozen = {name for name, p in adapter.trainer.model.named_parameters() if not p.requires_grad}
    assert frozen
    assert all(name.startswith(("model.0.", "model.23.cv2.", "model.23.dfl.")) for name in frozen), frozen
    assert any(name.startswith("model.23.cv2.") for name in frozen)


def test_a_per_split_fraction_list_trains_on_that_share_of_each_split(tmp_path) -> None:
    # `fraction: [train, val]`, ultralytics' documented split form, was refused.
    data_yaml = write_shapes_dataset(tmp_path / "ds", train_images=4, val_images=2, image_size=64)
    adapter = make_adapter(
        tmp_path,
        RecordingSink(),
        dataset=DatasetConfig(path=str(data_yaml)),
        advanced={"mosaic": 0.0, "fraction": [0.5, 1]},
    )
    assert adapter.train().status == Status.COMPLETED
    assert len(adapter.trainer.train_loader.dataset) == 2
    assert len(adapter.trainer.validator.dataloader.dataset) == 2
