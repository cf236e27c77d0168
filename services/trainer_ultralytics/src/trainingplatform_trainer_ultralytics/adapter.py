"""YOLO object detection with ultralytics: the UltralyticsAdapter.

Ultralytics owns its training loop, so this adapter overrides `fit()` and reports through ultralytics' callbacks.
Metrics reported (epoch is 0-based, step is the global batch count, from 1):

| key                                                  | when                      | value                             |
| ---------------------------------------------------- | ------------------------- | --------------------------------- |
| `train/batch_loss`                                   | every `log_every_n_steps` | box + cls + dfl loss of the batch |
| `train/box_loss`, `train/cls_loss`, `train/dfl_loss` | each epoch                | mean training losses              |
| `val/box_loss`, `val/cls_loss`, `val/dfl_loss`       | each validated epoch      | validation losses                 |
| `metrics/precision`, `metrics/recall`                | each validated epoch      | box precision and recall          |
| `metrics/mAP50`, `metrics/mAP50-95`                  | each validated epoch      | box mAP (mAP50-95 picks best.pt)  |
| `lr/pg0`, `lr/pg1`, `lr/pg2`                         | each epoch                | learning rate per parameter group |
| `epoch_time_s`                                       | each epoch                | wall time of training + validation|

Per-epoch metrics carry step = the global batch count at the epoch's end; an epoch summary follows each epoch.
Ultralytics validates best.pt once more after the last epoch (its `on_fit_epoch_end` fires again, with
epoch == epochs): that result is logged as a message and returned in the TrainingResult, never as a second set of
per-epoch points. With `extra.val = false` ultralytics validates only the last epoch: the other epochs report no
`val/` or `metrics/` keys (ultralytics' placeholder zeros are not passed on).

A stop (`request_stop()`, a cancel) ends the epoch at the next batch and saves last.pt with no validation after
it: neither the partial epoch nor best.pt (ultralytics' final evaluation) is validated, so that last.pt is saved
and uploaded within the cancel's grace period however large the validation set. last.pt is still stripped of its
optimizer state and training EMA, as ultralytics' final evaluation does, which makes it 3-5x smaller. The result
names best.pt only once an epoch was validated: before that, ultralytics writes it from unvalidated weights, and
the adapter removes it when training ends.

`advanced_config` maps onto ultralytics' train arguments: optimizer (sgd, adam, adamw, nadam, radam, rmsprop,
adamax, musgd, auto), weight_decay, momentum, warmup_epochs, seed, mixed_precision -> amp, lr_scheduler (cosine ->
cos_lr; linear -> ultralytics' linear decay; constant -> lrf=1; step is not supported and is warned about), and
augmentation: horizontal_flip_probability -> fliplr, scale -> scale, color_jitter c -> hsv_s = hsv_v = c, and
enabled=false -> every augmentation off (mosaic included). `extra` keys that are ultralytics train arguments
(`mosaic`, `close_mosaic`, `patience`, `plots`, ...) are passed through; `num_threads` sets the CPU threads;
every other key gets a warning here; the trainer service refuses unknown keys and bad values at submit
(options.py). `training_config.learning_rate` -> lr0. Ultralytics' default optimizer, `auto`, picks its own
optimizer, lr0 and momentum (AdamW or MuSGD) and ignores the given ones: so when a job sets learning_rate or
momentum but no optimizer, the adapter trains with SGD (ultralytics' own default when not `auto`, lr0 0.01) and
says so in the job log; an explicit `optimizer: auto` is kept, with a warning. lr0, momentum and weight_decay are
fractions in [0, 1] for ultralytics (`check_fractions`).

Ultralytics drops an image whose label file it cannot use (a class id at or above the data set's number of classes, a
malformed line) and says so only in its own log (train.log): once the data loaders are built the adapter warns in
the job log with the count, the files and the reason; a split it drops every image of fails with a ConfigError
naming the data set and the reason instead of ultralytics' "No valid images found in <a cache that is not there>".

Checkpoints are ultralytics' own: `output_dir/weights/best.pt` and `last.pt`. Everything ultralytics writes
(settings, font, plots, label caches, the `shapes` dataset) stays under `output_dir` — see offline.py. Nothing is
written into the data set's directory: `extra.cache: disk`, which saves each image as a `.npy` beside it, is refused
(`check()`, and the trainer service at submit); one ultralytics behaviour is left as it is: a JPEG with a corrupt
end is rewritten in place (ultralytics' "corrupt JPEG restored and saved").
"""

from __future__ import annotations

import difflib
import math
import pickletools
import re
import zipfile
from collections.abc import Callable
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainingplatform_sdk.host import usable_cpus
from trainingplatform_sdk.spec.configs import AdvancedConfig, ConfigError, DatasetConfig, ModelConfig, TrainingConfig
from trainingplatform_sdk.training.adapter import Status, TrainingAdapter, TrainingResult, loader_worker_init

from trainingplatform_trainer_ultralytics import datasets
from trainingplatform_trainer_ultralytics.offline import prepare_offline, set_threads
from trainingplatform_trainer_ultralytics.options import (
    ADVANCED_BOUNDS,
    NOT_READ_BY_TRAINING,
    check_cache,
    check_extra_values,
)

if TYPE_CHECKING:
    from ultralytics.engine.trainer import BaseTrainer

__all__ = [
    "UltralyticsAdapter",
    "available_model_yamls",
    "check_checkpoint",
    "check_class_ids",
    "check_fractions",
    "check_num_classes",
    "check_pretrained",
    "loader_workers_ignore_stop_signals",
    "resolve_model",
]

DEFAULT_BATCH_SIZE = 16
DEFAULT_IMAGE_SIZE = 640
#: Image size of the built-in `shapes` dataset, and its training size when model_config.image_size is 0.
SHAPES_IMAGE_SIZE = 128
OPTIMIZERS = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "nadam": "NAdam",
    "radam": "RAdam",
    "rmsprop": "RMSProp",
    "adamax": "Adamax",
    "musgd": "MuSGD",
    "auto": "auto",
}
#: Train arguments this adapter sets itself: `extra` may not override them.
OWNED_ARGS = frozenset(
    {"model", "data", "epochs", "project", "name", "exist_ok", "mode", "task", "save_dir", "resume"}
    | {"device", "cfg", "distill_model", "imgsz"}
)
#: Augmentation arguments zeroed by `augmentation.enabled = false`.
AUGMENTATION_ARGS_OFF = (
    *("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud", "fliplr"),
    *("mosaic", "mixup", "cutmix", "copy_paste"),
)
#: The optimizer a learning rate or momentum without an optimizer trains with: ultralytics' `auto` would ignore them.
OPTIMIZER_FOR_GIVEN_LR = "SGD"
# Ultralytics' metric names carry the task suffix "(B)" (boxes); the platform's keys do not.
_BOX_SUFFIX = re.compile(r"\(B\)$")


@cache
def available_model_yamls() -> tuple[str, ...]:
    """The model yaml names ultralytics ships, with each scale spelled out (`yolo11n.yaml`, `yolov8s.yaml`...)."""
    root = Path(find_spec("ultralytics").origin).parent / "cfg" / "models"  # type: ignore[union-attr, arg-type]
    names: set[str] = set()
    for path in root.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8", errors="replace")
        scales = re.search(r"^scales:.*\n((?:[ \t]+.*\n)+)", text, re.MULTILINE)
        letters = re.findall(r"^\s+([nslmxt]):", scales.group(1), re.MULTILINE) if scales else []
        names.add(path.name)
        # Ultralytics reads the scale from the name: yolo11n.yaml is yolo11.yaml at scale n.
        names.update(re.sub(r"(\d+)", rf"\g<1>{letter}", path.stem, count=1) + ".yaml" for letter in letters)
    return tuple(sorted(names))


def resolve_model(name: str) -> str:
    """Checks a model name: a yaml ultralytics ships, or an existing local `.pt`/`.yaml` file.

    Raises:
        FileNotFoundError: A `.pt` that is not a local file (ultralytics would download it; trainers never do).
        ValueError: An unknown model yaml; the message lists the closest valid names.
    """
    if Path(name).is_file():
        return str(Path(name).resolve())
    if name.endswith(".pt"):
        raise FileNotFoundError(
            f"model {name!r} is not a local file; trainers never download weights: give a model yaml "
            f"(e.g. yolo11n.yaml) or the path of a local .pt"
        )
    valid = available_model_yamls()
    if name in valid:
        return name
    stem = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    close = difflib.get_close_matches(stem, valid, n=5, cutoff=0.6)
    hint = f"; closest valid names: {', '.join(close)}" if close else ""
    raise ValueError(f"unknown ultralytics model {name!r} (a model yaml or a local .pt){hint}")


def check_pretrained(model: ModelConfig) -> None:
    """`pretrained` needs a checkpoint: ultralytics' pretrained weights are a `.pt`, which trainers never download.

    The trainer service runs this at StartTraining (server.py's `check_job`), the adapter again in `check()`.

    Raises:
        ConfigError: `pretrained` with a model yaml.
    """
    if model.pretrained and not model.name.endswith(".pt"):
        raise ConfigError(
            "model_config.pretrained: ultralytics pretrained weights come from a local .pt; "
            "give its path as model_config.name"
        )


def check_checkpoint(model: ModelConfig) -> None:
    """A local `.pt` given as the model must be an ultralytics checkpoint: one saved by another framework (a timm
    `.pt`) failed the job when training started with ultralytics' "references types outside the supported
    Ultralytics checkpoint format". Only the checkpoint's pickled structure is read (nothing is unpickled): an
    ultralytics checkpoint refers to ultralytics' classes. A file in torch's legacy format is left to ultralytics.

    The trainer service runs this at StartTraining (server.py's `check_job`), the adapter again in `check()`.

    Raises:
        ConfigError: A `.pt` that refers to no ultralytics class.
    """
    path = Path(model.name)
    if path.suffix != ".pt" or not path.is_file() or not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.rsplit("/", 1)[-1] == "data.pkl"]
            structure = archive.read(pickles[0]) if pickles else b""
        # GLOBAL's argument is "module name"; STACK_GLOBAL's module comes as a string before it.
        ultralytics = any(
            isinstance(arg, str) and arg.startswith("ultralytics.") for _, arg, _ in pickletools.genops(structure)
        )
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError):
        # RuntimeError: an encrypted entry (NotImplementedError: a compression method zipfile lacks); torch reads
        # neither, and it escaped this check as an internal error.
        ultralytics = False
    if not ultralytics:
        raise ConfigError(
            f"model_config.name: {model.name!r} is not an ultralytics checkpoint (saved by another framework?); "
            "give a .pt saved by ultralytics (a job's best.pt or last.pt) or a model yaml such as yolo11n.yaml"
        )


def check_num_classes(model: ModelConfig, dataset: DatasetConfig, classes: int) -> None:
    """Ultralytics takes the class count from the data set (`classes`, `datasets.class_count`): a
    model_config.num_classes other than it was silently trained with the data set's count.

    Raises:
        ConfigError: A num_classes other than 0 (the data set's) and `classes`.
    """
    if model.num_classes and model.num_classes != classes:
        raise ConfigError(
            f"model_config.num_classes is {model.num_classes} but the data set ({datasets.describe(dataset)}) has "
            f"{classes} classes; ultralytics trains with the data set's classes: leave num_classes at 0 or set "
            f"it to {classes}"
        )


def check_class_ids(extra: dict[str, Any], classes: int) -> None:
    """`extra.classes` keeps only the labels of the given class ids: an id the data set lacks (`classes` ids, 0 to
    classes - 1) left nothing to train on, and the job still completed.

    Raises:
        ConfigError: An id of `extra.classes` at or above `classes`.
    """
    value = extra.get("classes")
    ids = value if isinstance(value, list) else [] if value is None else [value]
    outside = [int(i) for i in ids if isinstance(i, int | float) and not isinstance(i, bool) and i >= classes]
    if outside:
        raise ConfigError(
            f"advanced_config.extra.classes: class id(s) {', '.join(map(str, outside))} not in the data set, which "
            f"has {classes} classes (ids 0 to {classes - 1})"
        )


def check_fractions(training: TrainingConfig, advanced: AdvancedConfig) -> None:
    """lr0 and weight_decay are fractions for ultralytics: above 1 its `check_cfg` fails the training at start.

    The trainer service runs this at StartTraining (server.py's `check_job`), after its own check of
    `ADVANCED_BOUNDS` (the weight decay), which is the same `AdvancedConfig.check_bounds`; the adapter runs it
    again in `check()`, also for a run without the service (tp-train).

    Raises:
        ConfigError: training_config.learning_rate above 1, or a field of `ADVANCED_BOUNDS` outside its bounds.
    """
    if training.learning_rate > 1:
        raise ConfigError(
            "training_config.learning_rate: must be in [0, 1] for ultralytics (its lr0), "
            f"got {training.learning_rate:g}"
        )
    advanced.check_bounds(ADVANCED_BOUNDS, UltralyticsAdapter.framework)


def loader_workers_ignore_stop_signals() -> None:
    """Makes ultralytics' loader workers run the platform's `loader_worker_init` after their own seeding.

    On a GPU ultralytics loads with worker processes (on the CPU with none), and a cancel's SIGTERM to the run's
    process group would kill them under the training: see `loader_worker_init`. `build_dataloader` reads its
    `seed_worker` from its module at each call, so this replaces it there. Idempotent.
    """
    from ultralytics.data import build

    if build.seed_worker is not _seed_worker:
        global _ultralytics_seed_worker
        _ultralytics_seed_worker = build.seed_worker
        build.seed_worker = _seed_worker


#: ultralytics' own `seed_worker`, which `_seed_worker` runs first.
_ultralytics_seed_worker: Callable[[int], None] | None = None


def _seed_worker(worker_id: int) -> None:
    if _ultralytics_seed_worker is not None:
        _ultralytics_seed_worker(worker_id)
    loader_worker_init(worker_id)


class UltralyticsAdapter(TrainingAdapter):
    """Trains a YOLO detector with ultralytics; see the module docstring for metrics and options."""

    framework = "ultralytics"
    best_metric = "metrics/mAP50-95"
    best_mode = "max"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The ultralytics trainer once training started (for callbacks and tests).
        self.trainer: BaseTrainer | None = None
        self._result = TrainingResult(status=Status.COMPLETED, epochs_completed=0)
        self._epoch_open = False
        self._epoch_train_metrics: dict[str, float] = {}
        self._stopped_in_epoch = False
        #: Whether ultralytics validated the current epoch (with `val=false` only the last one is).
        self._validated = False
        #: Whether ultralytics validated an epoch (and so chose best.pt by its fitness).
        self._any_validated = False
        self._num_threads = 0
        self._prepared = False

    def _prepare(self) -> None:
        """Sets up ultralytics for offline use; everything that imports ultralytics calls this first."""
        if not self._prepared:
            self._num_threads = int(self.advanced_config.extra.get("num_threads") or usable_cpus())
            prepare_offline(self.output_dir / ".ultralytics", self._num_threads)
            loader_workers_ignore_stop_signals()
            self._prepared = True

    def accepted_extra_keys(self) -> set[str]:
        """`num_threads` and ultralytics' own train arguments (except those the adapter sets itself and those only
        prediction, export or tracking read: a run without the service warns that they are ignored)."""
        self._prepare()
        from ultralytics.utils import DEFAULT_CFG_KEYS

        return {"num_threads", *(set(DEFAULT_CFG_KEYS) - OWNED_ARGS - NOT_READ_BY_TRAINING)}

    def check(self) -> None:
        """Checks the model name, `pretrained` and the dataset without importing ultralytics' trainer."""
        resolve_model(self.model_config.name)
        check_pretrained(self.model_config)
        check_checkpoint(self.model_config)
        check_fractions(self.training_config, self.advanced_config)
        datasets.check_dataset(self.dataset_config)
        classes = datasets.class_count(self.dataset_config)
        check_num_classes(self.model_config, self.dataset_config, classes)
        check_class_ids(self.advanced_config.extra, classes)
        check_extra_values(self.advanced_config.extra)
        optimizer = self.advanced_config.optimizer
        if optimizer is not None and optimizer.lower() not in OPTIMIZERS:
            raise ConfigError(
                f"advanced_config.optimizer: ultralytics supports {sorted(OPTIMIZERS)}, got {optimizer!r}"
            )
        if "cache" in self.advanced_config.extra:
            check_cache(self.advanced_config.extra["cache"])  # never `disk`: it writes into the data set
        threads = self.advanced_config.extra.get("num_threads")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ConfigError(f"advanced_config.extra.num_threads: expected a positive integer, got {threads!r}")

    def fit(self) -> TrainingResult:
        """Runs ultralytics' training with the platform's callbacks."""
        self._prepare()
        from ultralytics import YOLO

        image_size = self.model_config.image_size or (
            SHAPES_IMAGE_SIZE if self.dataset_config.resolved_format == "builtin" else DEFAULT_IMAGE_SIZE
        )
        seed = self.advanced_config.seed if self.advanced_config.seed is not None else 0
        data_yaml = datasets.resolve_data_yaml(
            self.dataset_config, self.output_dir / "data", image_size=SHAPES_IMAGE_SIZE, seed=seed
        )
        try:
            model = YOLO(resolve_model(self.model_config.name))
        except TypeError as error:
            if "outside the supported Ultralytics checkpoint format" not in str(error):
                raise
            raise ConfigError(
                f"model_config.name: {self.model_config.name!r} is not an ultralytics checkpoint (saved by another "
                "framework?); give a .pt saved by ultralytics or a model yaml such as yolo11n.yaml"
            ) from None
        if model.task != "detect":
            raise ConfigError(f"model_config.name: {self.model_config.name!r} is a {model.task} model, not detect")
        self._log_new_head(model)
        for event, callback in (
            ("on_pretrain_routine_end", self._on_pretrain_routine_end),
            ("on_train_start", self._on_train_start),
            ("on_train_epoch_start", self._on_train_epoch_start),
            ("on_train_batch_end", self._on_train_batch_end),
            ("on_train_epoch_end", self._on_train_epoch_end),
            ("on_fit_epoch_end", self._on_fit_epoch_end),
        ):
            model.add_callback(event, callback)
        args = self.train_args(data_yaml, image_size)
        self.log(
            f"Training {self.model_config.name} on {self._data_set_text(data_yaml)} ({self._num_threads} CPU "
            f"threads): {args}"
        )
        if self.stop_requested:
            self._result.status = Status.CANCELLED
            return self._result
        try:
            model.train(**args)
        except RuntimeError as error:
            if "No valid images found" not in str(error):
                raise
            raise ConfigError(self._no_valid_images_text(str(error))) from None

        if self.last_checkpoint_path.exists():
            self._result.last_checkpoint = self.last_checkpoint_path
        if self.best_checkpoint_path.exists() and self._any_validated:
            self._result.best_checkpoint = self.best_checkpoint_path
        elif self.best_checkpoint_path.exists():
            # Without a validated epoch ultralytics' `best_fitness == fitness` (None == None) wrote best.pt from
            # the weights of the last (possibly partial) epoch: not a best checkpoint, so it is not left to pass for
            # one (last.pt holds the same weights).
            self.best_checkpoint_path.unlink()
            self.log("No epoch was validated: the best.pt ultralytics wrote from unvalidated weights is removed")
        if self.stop_requested:
            self._result.status = Status.CANCELLED
        return self._result

    def _log_new_head(self, model: Any) -> None:
        """Says so when a checkpoint's head has another class count than the data set: ultralytics then builds the
        model for the data set's classes (`num_classes` is checked against those) and loads the checkpoint's other
        weights into it, so the job is not refused."""
        head_classes = (getattr(model.model, "yaml", None) or {}).get("nc")
        if not model.ckpt or not isinstance(head_classes, int):
            return
        classes = datasets.class_count(self.dataset_config)
        if head_classes != classes:
            self.log(
                f"model_config.name: {self.model_config.name!r} has a {head_classes}-class head; ultralytics builds "
                f"a new {classes}-class head for this data set (the checkpoint's other weights are kept)"
            )

    def _data_set_text(self, data_yaml: Path) -> str:
        """The data set trained on, as the job log names it: the data.yaml it resolved to (training reads a copy,
        `data_yaml`, without its `download`), with the directory given for it; the built-in data set's yaml."""
        given = self.dataset_config
        resolved = datasets.resolve_dataset(given)
        if resolved.resolved_format != "yolo":
            return str(data_yaml)
        text = str(Path(resolved.path).resolve())
        if resolved.path != given.path:
            # Through the trainer service the path is the data.yaml already; tp-train is given the directory.
            text += f", the data yaml of dataset_config.path {given.path!r}"
        return text

    def train_args(self, data_yaml: Path, image_size: int) -> dict[str, Any]:
        """The keyword arguments of `YOLO.train` for this job's configs."""
        training, advanced = self.training_config, self.advanced_config
        args: dict[str, Any] = {
            "data": str(data_yaml),
            "epochs": training.epochs,
            "imgsz": image_size,
            "batch": training.batch_size or DEFAULT_BATCH_SIZE,
            "workers": training.num_workers,
            "device": _device_arg(training.device),
            # project/name/exist_ok make ultralytics' save_dir exactly output_dir (weights/ lands inside it).
            "project": str(self.output_dir.resolve().parent),
            "name": self.output_dir.name,
            "exist_ok": True,
            "plots": False,
            "verbose": False,
            "seed": advanced.seed if advanced.seed is not None else 0,
        }
        if training.learning_rate:
            args["lr0"] = training.learning_rate
        # A learning rate of 0 means "the trainer's default": only a positive one was given.
        given = [
            name
            for name, value in (
                ("training_config.learning_rate", training.learning_rate or None),
                ("advanced_config.momentum", advanced.momentum),
                ("advanced_config.extra.lr0", advanced.extra.get("lr0")),
                ("advanced_config.extra.momentum", advanced.extra.get("momentum")),
            )
            if value is not None
        ]
        if advanced.optimizer is not None:
            args["optimizer"] = OPTIMIZERS[advanced.optimizer.lower()]
        optimizer = advanced.extra.get("optimizer", args.get("optimizer"))
        if optimizer is None and given:
            # Ultralytics' default, optimizer=auto, would replace lr0 and momentum with its own choice.
            args["optimizer"] = OPTIMIZER_FOR_GIVEN_LR
            self.log(
                f"{' and '.join(given)} given without advanced_config.optimizer: training with "
                f"{OPTIMIZER_FOR_GIVEN_LR}, since ultralytics' default optimizer 'auto' would ignore them"
            )
        elif str(optimizer).lower() == "auto" and given:
            self.log(
                f"advanced_config.optimizer 'auto': ultralytics picks the optimizer, its learning rate and "
                f"momentum itself and ignores {' and '.join(given)}; set another optimizer to use them",
                "WARNING",
            )
        for name in ("weight_decay", "momentum", "warmup_epochs"):
            if getattr(advanced, name) is not None:
                args[name] = getattr(advanced, name)
        if advanced.mixed_precision is not None:
            args["amp"] = advanced.mixed_precision
        if advanced.lr_scheduler == "cosine":
            args["cos_lr"] = True
        elif advanced.lr_scheduler == "constant":
            args["lrf"] = 1.0
        elif advanced.lr_scheduler == "step":
            self.log("advanced_config.lr_scheduler 'step' is not supported by ultralytics: using linear", "WARNING")

        augmentation = advanced.augmentation
        if augmentation.enabled is False:
            args.update(dict.fromkeys(AUGMENTATION_ARGS_OFF, 0.0))
        else:
            if augmentation.horizontal_flip_probability is not None:
                args["fliplr"] = augmentation.horizontal_flip_probability
            if augmentation.scale is not None:
                args["scale"] = augmentation.scale
            if augmentation.color_jitter is not None:
                args["hsv_s"] = args["hsv_v"] = augmentation.color_jitter

        accepted = set(self.accepted_extra_keys()) - {"num_threads"}
        args.update({key: value for key, value in advanced.extra.items() if key in accepted})
        return args

    def _no_valid_images_text(self, error: str) -> str:
        """The job's error for ultralytics' "No valid images found in <labels>.cache" (a cache file that is
        never written, with the reasons on further lines): the data set and why its images were ignored."""
        reasons = sorted({reason for _, reason in _ignored_reasons(error.splitlines()[1:])})
        why = f": {'; '.join(reasons[:_SHOWN])}" if reasons else ""
        prefix = re.search(r"^\s*(?:\x1b\[[0-9;]*m)*(train|val)\w*: ", error, re.MULTILINE)
        split = {"train": "training image", "val": "validation image"}[prefix[1]] if prefix else "image of a split"
        return (
            f"dataset_config.path: ultralytics ignored every {split} of {datasets.describe(self.dataset_config)}"
            f"{why}; check the label files: one `class x_center y_center width height` line per object, "
            "coordinates normalised to [0, 1], class ids below the data set's number of classes"
        )

    # --- Callbacks (run on the training thread) ---------------------------------------------------------------

    def _on_pretrain_routine_end(self, trainer: BaseTrainer) -> None:
        # Ultralytics drops the images whose label (or image) file it finds unusable, saying so only in its own log
        # (train.log): the job log says how many, which, and why.
        root = Path(str(trainer.data.get("path") or "")) if isinstance(trainer.data, dict) else None
        for loader, split in ((trainer.train_loader, "training"), (trainer.test_loader, "validation")):
            text = _ignored_images_text(getattr(loader, "dataset", None), split, root)
            if text:
                self.log(text, "WARNING")

    def _on_train_start(self, trainer: BaseTrainer) -> None:
        self.trainer = trainer
        # Ultralytics reset the threads when it selected the device; set them once more, deliberately.
        set_threads(self._num_threads)
        # Ultralytics calls both as methods of the trainer: these wrappers, set on the instance, replace them.
        validate, final_eval = trainer.validate, trainer.final_eval

        def validate_unless_stopped() -> tuple[dict[str, Any] | None, float | None]:
            if self._stopped_in_epoch:
                # The partial epoch after a stop: no validation, so that last.pt is saved within the cancel's
                # grace. The previous metrics and no fitness: the stopper stays put and best.pt is not replaced.
                return trainer.metrics, None
            self._validated = True
            metrics, fitness = validate()
            if fitness is not None:
                self._any_validated = True
            return metrics, fitness

        def final_eval_unless_stopped() -> None:
            if self.stop_requested:
                self.log("Stopped: the final validation of best.pt is skipped")
                # What final_eval does first, without validating: last.pt without optimizer state and EMA.
                from ultralytics.utils.torch_utils import strip_optimizer

                if trainer.last.exists():
                    strip_optimizer(trainer.last)
                return
            final_eval()

        trainer.validate = validate_unless_stopped  # type: ignore[method-assign]
        trainer.final_eval = final_eval_unless_stopped  # type: ignore[method-assign]

    def _on_train_epoch_start(self, trainer: BaseTrainer) -> None:
        self._epoch_open = False
        self._validated = False

    def _on_train_batch_end(self, trainer: BaseTrainer) -> None:
        self.global_step += 1
        if self.global_step % self.training_config.log_interval == 0 and trainer.loss_items is not None:
            loss = float(sum(value.sum() for value in _loss_values(trainer.loss_items)))
            self.logger.log_metric("train/batch_loss", loss, step=self.global_step, epoch=trainer.epoch)
        if self.stop_requested and not trainer.stop:
            # Ultralytics checks trainer.stop right after this callback and leaves the batch loop; it then
            # validates and saves last.pt like at the end of an epoch.
            trainer.stop = True
            self._stopped_in_epoch = True
            self.log(
                f"Stopping at step {self.global_step}: saving last.pt, without validating",
                epoch=trainer.epoch,
                step=self.global_step,
            )

    def _on_train_epoch_end(self, trainer: BaseTrainer) -> None:
        self._epoch_open = True
        # label_loss_items turns ultralytics' dict of loss tensors into {"train/box_loss": float, ...}.
        self._epoch_train_metrics = {
            **{k: float(v) for k, v in trainer.label_loss_items(trainer.tloss, prefix="train").items()},
            **{k: float(v) for k, v in trainer.lr.items()},
        }

    def _on_fit_epoch_end(self, trainer: BaseTrainer) -> None:
        metrics: dict[str, float] = trainer.metrics or {}
        validation = {_BOX_SUFFIX.sub("", key): float(value) for key, value in metrics.items()}
        if not self._epoch_open:
            # The extra call after the final validation of best.pt: no new epoch, so no per-epoch points.
            self.log("Final validation of best.pt: " + _format(validation))
            return
        self._epoch_open = False
        epoch = trainer.epoch
        if self._stopped_in_epoch:
            return  # a partial epoch: checkpointed by ultralytics, not reported as an epoch
        if not self._validated:
            # trainer.metrics still holds an earlier epoch's validation, or ultralytics' placeholder zeros.
            validation = {}
        metrics = {**self._epoch_train_metrics, **validation}
        metrics.pop("fitness", None)
        duration = float(trainer.epoch_time) if trainer.epoch_time is not None else None
        if duration is not None:
            metrics["epoch_time_s"] = duration
        self.epoch_metrics = metrics
        self.logger.log_metrics(metrics, step=self.global_step, epoch=epoch)
        self.logger.log_epoch_summary(epoch, metrics, duration_seconds=duration)
        self.log(f"Epoch {epoch + 1}/{trainer.epochs}: " + _format(metrics), epoch=epoch, step=self.global_step)

        value = metrics.get(self.best_metric)
        result = self._result
        if value is not None and math.isfinite(value) and (result.best_value is None or value > result.best_value):
            result.best_epoch, result.best_value = epoch, value
        result.epochs_completed += 1
        result.metrics = metrics


#: Ultralytics' label cache message for an image it drops: `<prefix><image path>: ignoring corrupt image/label: why`.
_IGNORED = re.compile(r"(?:\x1b\[[0-9;]*m|\w+: )*(?P<image>.+?): ignoring corrupt image/label: (?P<reason>.+)$")
#: How many reasons, and files per reason, a warning about ignored images names.
_SHOWN = 3


def _ignored_reasons(messages: list[str]) -> list[tuple[str, str]]:
    """(image path, reason) of each of ultralytics' label cache messages about an ignored image."""
    found = (_IGNORED.match(message.strip()) for message in messages)
    return [(match["image"], match["reason"].strip()) for match in found if match]


def _ignored_images_text(dataset: Any, split: str, root: Path | None) -> str:
    """A warning naming the images of an ultralytics YOLODataset that it ignored, with the reasons its label cache
    holds; empty when it kept every image. Its `label_files` are those of every listed image, its `im_files` only
    the kept ones."""
    listed = list(getattr(dataset, "label_files", None) or [])
    kept_images = list(getattr(dataset, "im_files", None) or [])
    if not listed or len(kept_images) >= len(listed):
        return ""
    from ultralytics.data import dataset as dataset_module
    from ultralytics.data.utils import img2label_paths

    kept = set(img2label_paths(kept_images))
    ignored = [label for label in listed if label not in kept]
    try:  # the cache ultralytics just read or wrote (offline.py keeps it under the run directory)
        cache = dataset_module.load_dataset_cache_file(Path(listed[0]).parent.with_suffix(".cache"))
        messages = list(cache.get("msgs") or [])
    except Exception:  # without the cache the warning names no reason
        messages = []
    reason_of = {img2label_paths([image])[0]: reason for image, reason in _ignored_reasons(messages)}
    by_reason: dict[str, list[str]] = {}
    for label in ignored:
        by_reason.setdefault(reason_of.get(label, "unusable image or label file"), []).append(_relative(label, root))
    parts = []
    for reason, files in list(by_reason.items())[:_SHOWN]:
        more = f", and {len(files) - _SHOWN} more" if len(files) > _SHOWN else ""
        parts.append(f"{reason} ({', '.join(files[:_SHOWN])}{more})")
    return f"{len(ignored)} of {len(listed)} {split} images ignored: {'; '.join(parts)}"


def _relative(path: str, root: Path | None) -> str:
    """`path` relative to the data set's root when under it."""
    if root is not None and Path(path).is_relative_to(root):
        return str(Path(path).relative_to(root))
    return path


def _loss_values(loss_items: Any) -> list[Any]:
    # Ultralytics 8.4 gives a dict of tensors; older versions a single tensor.
    return list(loss_items.values()) if isinstance(loss_items, dict) else [loss_items]


def _device_arg(device: str) -> str | None:
    """TrainingConfig.device in ultralytics' spelling: None (auto), `cpu`, `0`."""
    if device == "auto":
        return None
    if device == "cuda":
        return "0"
    return device.removeprefix("cuda:")


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{key}={value:.4g}" for key, value in metrics.items())
