"""Image classification with any timm model: the TimmAdapter.

Metrics reported (epoch is 0-based, step is the global optimizer step, counted from 1):

| key                  | when                         | value                                                       |
| -------------------- | ---------------------------- | ----------------------------------------------------------- |
| `train/batch_loss`   | every `log_every_n_steps`    | loss of that batch (step = the step just taken)             |
| `train/loss`         | each epoch                   | mean training loss over the epoch (augmented data)          |
| `train/accuracy`     | each epoch                   | top-1 accuracy on the epoch's training batches              |
| `val/loss`           | each epoch                   | mean validation loss                                        |
| `val/accuracy`       | each epoch                   | top-1 validation accuracy (picks the best checkpoint)       |
| `lr`                 | each epoch                   | learning rate of the first parameter group after the epoch  |
| `epoch_time_s`       | each epoch                   | wall time of training plus validation                       |
| `train/images_per_s` | each epoch                   | training throughput                                         |

Per-epoch metrics carry step = the global step at the epoch's end; an epoch summary follows each epoch.

`advanced_config`: `optimizer` (any `timm.optim.create_optimizer_v2` name but the second-order adahessian and
lookahead_adahessian; default adamw), `lr_scheduler`
(cosine (default), step (x0.1 at 1/3 and 2/3 of training), linear (to 0), constant), `warmup_epochs` (linear,
fractional allowed), `weight_decay` (default 0.05), `momentum` (SGD-style optimizers), `augmentation` (off by
default: see datasets.py), `mixed_precision` (float16 autocast on CUDA; ignored with a log line on CPU), `seed`
(default 0). `extra` keys used: `num_threads` (torch threads; default: the CPUs this process may use),
`label_smoothing` (cross-entropy label smoothing), `drop_rate` (classifier dropout). Other keys get a warning here;
the trainer service refuses them at submit (see server.py).

Input: images are resized to `model_config.image_size` (default: a checkpoint's, 32 for `digits`, else the model's
pretrained input size) and normalised with the mean and standard deviation of the model's pretrained config (0.5 for
most ViTs, CLIP's for `*_clip_*` models, ImageNet's for most CNNs), for training and validation alike. Models built
for one input size (ViT, Swin, ...) are created for the image size (timm's `img_size`, which also resizes pretrained
position embeddings); the others (CNNs) take any size. A few take `img_size` and ignore it: swiftformer takes any
size anyway, efficientformer_l1/l3/l7 only 224x224. So a fixed-size model is first run once at the image size, on
the meta device (no memory, no compute): one that fails is refused before training, naming its pretrained size.

Checkpoints: `output_dir/weights/last.pt` after every epoch and `best.pt` for the best validation accuracy, each a
`torch.save` dict with `state_dict` and metadata (model name, classes, image size, normalisation mean and std, epoch,
metrics, job id). `model_config.name` may also be the path of such a checkpoint (loaded with torch's `weights_only`;
another framework's is refused), to continue from its weights, with its normalisation; at another `image_size`, a
fixed-size model's input size is changed with its `set_input_size` (ViT, Swin, ...; one without it is refused). On a
dataset whose classes differ from the checkpoint's (another count, or other names), the classifier is replaced by a
new one for the dataset's classes, trained from scratch, and the job log warns so; the rest of the model keeps the
checkpoint's weights.

Distributed data-parallel: started by `torchrun` (WORLD_SIZE > 1 in the environment), every rank runs this adapter
and joins one process group (`gloo` on CPU, `nccl` on CUDA, each rank on `cuda:LOCAL_RANK`). The model is wrapped
in DistributedDataParallel with the same initial weights on every rank; each rank trains on its DistributedSampler
shard (`batch_size` is per rank: a step sees `batch_size x WORLD_SIZE` images) with its own augmentation seed
(`seed + RANK`), and validates on every WORLD_SIZE-th image with the sums added across ranks, so the metrics cover
each validation image exactly once. `train/batch_loss` is the mean over the ranks' batches, the epoch metrics sum
every rank's images. Only rank 0 writes checkpoints; telemetry is rank 0's alone (`tp-train` gives the other ranks
a sink that discards it), and rank 0's log names the world size and each rank's device. A stop (SIGTERM) is agreed
across ranks at each batch boundary, so all ranks stop at the same step. See docs/distributed.md.
"""

from __future__ import annotations

import difflib
import math
import os
import random
import shutil
import time
import zipfile
from collections.abc import Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

# Set before timm imports huggingface_hub, which reads it once at import: without it, pretrained=True with an
# empty cache retries the network for ~50 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
import torch.distributed as dist
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from timm.models import get_pretrained_cfg
from timm.optim import create_optimizer_v2
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from trainingplatform_sdk.host import usable_cpus
from trainingplatform_sdk.spec.configs import ConfigError, MetricsResult, ModelConfig
from trainingplatform_sdk.training.adapter import TrainingAdapter, TrainingResult, loader_worker_init

from trainingplatform_trainer_timm import datasets

__all__ = [
    "SECOND_ORDER_REFUSAL",
    "DistributedRun",
    "TimmAdapter",
    "check_pretrained",
    "load_checkpoint",
    "refuse_second_order",
    "resolve_model_name",
]

DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_OPTIMIZER = "adamw"
DEFAULT_WEIGHT_DECAY = 0.05
DEFAULT_SEED = 0
DEFAULT_LR_SCHEDULER = "cosine"
CHECKPOINT_SUFFIXES = (".pt", ".pth")
# Skipped dataset files named in the job log; the count covers them all.
_SKIPPED_SHOWN = 10


def resolve_model_name(name: str) -> str:
    """Returns `name` when timm knows it (with or without a `.pretrained_tag`, which must be one of the model's).

    Raises:
        ValueError: Unknown name; the message lists the closest valid names.
        ConfigError: A pretrained tag timm does not know for the model; the message lists the model's tags.
    """
    architecture, dot, tag = name.partition(".")
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; closest valid names: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm model {name!r}{hint}")
    if dot:  # `resnet10t.` too: timm's pretrained config lookup (the adapter's, and pretrained) refuses the empty tag
        try:
            get_pretrained_cfg(name)  # timm's own check, which create_model runs too: "Invalid pretrained tag"
        except RuntimeError:
            tags = [known.partition(".")[2] for known in timm.list_pretrained(f"{architecture}.*")]
            listed = ", ".join(tags) or "none"
            if not tag:
                raise ConfigError(
                    f"model_config.name: {name[:100]!r} has no pretrained tag after its '.' (the tags of the timm "
                    f"model {architecture!r} are {listed}; or give {architecture!r} alone)"
                ) from None
            valid = f"its tags are {listed}" if tags else "it has none"
            raise ConfigError(
                f"model_config.name: {tag[:100]!r} is not a pretrained tag of the timm model {architecture!r} "
                f"({valid}; or give {architecture!r} alone)"
            ) from None
    return name


def _is_checkpoint_path(name: str) -> bool:
    return name.endswith(CHECKPOINT_SUFFIXES)


def check_pretrained(model: ModelConfig) -> None:
    """`pretrained` needs timm's weights of the model in a local cache: trainers never download.

    Looks where `timm.create_model(pretrained=True)` would (the Hugging Face hub cache, `HF_HUB_CACHE`, or torch.hub's
    `TORCH_HOME`), without loading anything. A model given as a checkpoint path brings its own weights. The trainer
    service runs this at StartTraining (server.py's `check_job`), the adapter again before it builds the model.

    Raises:
        ConfigError: `pretrained` for a model timm has no weights of, or whose weights are not cached.
    """
    if model.pretrained and not _is_checkpoint_path(model.name):
        _check_pretrained_weights(resolve_model_name(model.name))


def _check_pretrained_weights(name: str) -> None:
    where = _cached_weights(name)
    if where is None:
        raise ConfigError(f"model_config.pretrained: timm has no pretrained weights of {name!r}; set it to false")
    location, cached = where
    if not cached:
        raise ConfigError(
            f"model_config.pretrained: the pretrained weights of {name!r} are not in the local cache ({location}); "
            "trainers never download: put them there, or set it to false"
        )


def _cached_weights(name: str) -> tuple[str, bool] | None:
    """Where timm reads `name`'s pretrained weights from, and whether they are there; None when it has none."""
    import huggingface_hub.constants
    from huggingface_hub import try_to_load_from_cache
    from timm.models._builder import _resolve_pretrained_source  # what create_model(pretrained=True) follows
    from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives, hf_split

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    source, location = _resolve_pretrained_source(cfg.to_dict())
    if source == "hf-hub":
        repo, filename = location if isinstance(location, tuple) else (location, HF_WEIGHTS_NAME)
        repo_id, revision = hf_split(repo)
        names = [filename] if filename.endswith(".safetensors") else [*_get_safe_alternatives(filename), filename]
        cache = huggingface_hub.constants.HF_HUB_CACHE
        found = any(
            isinstance(try_to_load_from_cache(repo_id, file, cache_dir=cache, revision=revision), str) for file in names
        )
        return f"{repo_id} in {cache}", found
    if source == "url":
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(str(location)).path).name
        return str(cached), cached.is_file()
    if source in ("file", "local-dir"):
        return str(location), Path(str(location)).exists()
    return None if source == "" else ("the model's pretrained config", True)


def load_checkpoint(path: str, *, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint this trainer saved (see the module docstring), loaded on the CPU with torch's `weights_only`.

    Args:
        path: The `.pt` / `.pth` file.
        mmap: Map the tensors' storage instead of reading it (the trainer service's cheap check at submit); a file
            in torch's old, non-zip format, which cannot be mapped, is read.

    Raises:
        OSError: The file cannot be read.
        ConfigError: Not a checkpoint of the timm trainer: another framework's (a `weights_only` load refuses the
            classes it pickled), another dict, or not a torch file at all. It is never loaded without `weights_only`,
            and torch's advice to do so "if you trust the source" is not passed on.
    """
    refused = f"model_config.name: {path!r} is not a checkpoint of the timm trainer (saved by another framework?)"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except OSError:
        raise
    except Exception:  # pickle.UnpicklingError for another framework's classes; anything for a file of another kind
        raise ConfigError(refused) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "model_name" not in checkpoint:
        raise ConfigError(refused)
    return checkpoint


#: Why a second-order optimizer is refused (after its quoted name); the service refuses those names at submit.
SECOND_ORDER_REFUSAL = (
    "is a second-order optimizer, which the timm trainer does not support (its training step does not keep the "
    "gradients' graph); choose another optimizer"
)


def refuse_second_order(optimizer: torch.optim.Optimizer, name: str) -> None:
    """Refuses a second-order optimizer (adahessian, lookahead_adahessian): its step needs the gradients' own graph
    (`backward(create_graph=True)`), which this trainer's loop does not keep, so its first step would fail.

    Raises:
        ConfigError: `optimizer` is second-order (timm's `is_second_order`).
    """
    if getattr(optimizer, "is_second_order", False):
        raise ConfigError(f"advanced_config.optimizer: {name[:100]!r} {SECOND_ORDER_REFUSAL}")


@dataclass(frozen=True)
class DistributedRun:
    """This process's place in a torchrun job (the variables torchrun sets)."""

    rank: int
    """RANK: 0 reports the job's telemetry and writes checkpoints."""
    world_size: int
    """WORLD_SIZE: processes in the job, on all machines."""
    local_rank: int
    """LOCAL_RANK: this process's index on its machine, and its CUDA device."""
    local_world_size: int
    """LOCAL_WORLD_SIZE: processes on this machine, which share its CPUs."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DistributedRun | None:
        """The run described by `env`; None for a single process (WORLD_SIZE unset or 1)."""
        world_size = int(env.get("WORLD_SIZE") or 1)
        if world_size <= 1:
            return None
        local_world_size = int(env.get("LOCAL_WORLD_SIZE") or world_size)
        return cls(
            rank=int(env.get("RANK") or 0),
            world_size=world_size,
            local_rank=int(env.get("LOCAL_RANK") or 0),
            local_world_size=local_world_size,
        )


class TimmAdapter(TrainingAdapter):
    """Trains a timm image classifier; see the module docstring for metrics and options."""

    framework = "timm"
    best_metric = "val/accuracy"
    best_mode = "max"
    supported_extra_keys = frozenset({"num_threads", "label_smoothing", "drop_rate"})

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set under torchrun; None for a single process.
        self.distributed = DistributedRun.from_env(os.environ)
        # True while this adapter's process group is up: stop requests are then agreed across ranks.
        self._group_active = False
        self._owns_group = False
        self._stop_agreed = False

    def check(self) -> None:
        """Checks the model name (or checkpoint file) and the dataset without building anything."""
        name = self.model_config.name
        if _is_checkpoint_path(name):
            if not Path(name).is_file():
                raise FileNotFoundError(f"model checkpoint {name!r} does not exist")
        else:
            resolve_model_name(name)
        classes = datasets.check_dataset(self.dataset_config)
        datasets.check_num_classes(self.model_config, self.dataset_config, classes)
        check_pretrained(self.model_config)
        extra = self.advanced_config.extra
        for key, kinds in (("num_threads", int), ("label_smoothing", (int, float)), ("drop_rate", (int, float))):
            if key in extra and (not isinstance(extra[key], kinds) or isinstance(extra[key], bool)):
                raise ConfigError(f"advanced_config.extra.{key}: expected a number, got {extra[key]!r}")

    # --- Building -------------------------------------------------------------------------------------------

    def build_data(self) -> None:
        """Picks the device and threads, seeds, and builds the data loaders."""
        advanced = self.advanced_config
        if self.distributed is not None:
            # First, before anything that could fail on one rank only: the others then fail at their next
            # collective instead of waiting for this rank to join.
            self._init_process_group()
        self.device = self._select_device()
        # Ranks on one machine share its CPUs: one rank each using all of them would oversubscribe them.
        local_ranks = self.distributed.local_world_size if self.distributed is not None else 1
        threads = int(advanced.extra.get("num_threads") or max(1, usable_cpus() // local_ranks))
        torch.set_num_threads(threads)
        self.seed = advanced.seed if advanced.seed is not None else DEFAULT_SEED
        random.seed(self.seed)
        torch.manual_seed(self.seed)
        self.use_amp = bool(advanced.mixed_precision) and self.device.type == "cuda"
        if advanced.mixed_precision and not self.use_amp:
            self.log("mixed_precision is ignored on CPU: training in float32", level="WARNING")
        self.log(f"Device {self.device}, {torch.get_num_threads()} CPU threads, seed {self.seed}")

        self.checkpoint_meta = self._checkpoint_metadata()
        self.image_size = self._image_size()
        self.mean, self.std = self._normalization()
        data = datasets.load_classification_data(
            self.dataset_config, self.image_size, advanced.augmentation, mean=self.mean, std=self.std
        )
        self.classes = data.classes
        if data.skipped:
            self._log_skipped_files(data.skipped)
        batch_size = self.training_config.batch_size or DEFAULT_BATCH_SIZE
        workers = self.training_config.num_workers
        common: dict[str, Any] = {
            "batch_size": batch_size,
            "num_workers": workers,
            "pin_memory": self.device.type == "cuda",
            "persistent_workers": workers > 0,
            "worker_init_fn": loader_worker_init,
        }
        # torch's Dataset declares no __len__; these (tensor and image-folder datasets) have one.
        train_size, val_size = len(cast(Sized, data.train)), len(cast(Sized, data.val))
        run = self.distributed
        # Batch norm cannot train on a batch of one image (at 1x1 features it raises): a last batch of exactly one
        # is dropped, every other batch kept. Under torchrun each rank's shard holds ceil(train_size / WORLD_SIZE).
        shard = train_size if run is None else math.ceil(train_size / run.world_size)
        drop_last = batch_size > 1 and shard > 1 and shard % batch_size == 1
        if drop_last:
            self.log(
                f"The last training batch would hold 1 image ({shard} images, batch size {batch_size}): it is left "
                "out of each epoch, since batch norm cannot train on a batch of one"
            )
        if run is None:
            generator = torch.Generator().manual_seed(self.seed)
            self.train_loader = DataLoader(data.train, shuffle=True, drop_last=drop_last, generator=generator, **common)
            self.val_loader = DataLoader(data.val, shuffle=False, **common)
        else:
            # The same seed on every rank: the shards are one shuffle of the dataset, cut in WORLD_SIZE parts.
            sampler: DistributedSampler[Any] = DistributedSampler(
                data.train, num_replicas=run.world_size, rank=run.rank, seed=self.seed
            )
            self.train_loader = DataLoader(data.train, sampler=sampler, drop_last=drop_last, **common)
            # Not a DistributedSampler: it pads the shards with repeated images, which would count twice.
            self.val_loader = DataLoader(data.val, sampler=range(run.rank, val_size, run.world_size), **common)
        self.log(
            f"Dataset {self.dataset_config.name or self.dataset_config.path}: {train_size} train, "
            f"{val_size} val images, {len(self.classes)} classes, {self.image_size}x{self.image_size}, normalised "
            f"with mean {_rounded(self.mean)} and std {_rounded(self.std)}"
        )
        if run is not None:
            devices: list[Any] = [None] * run.world_size
            dist.all_gather_object(devices, str(self.device))
            self.log(
                f"Distributed data-parallel: world size {run.world_size}, backend {dist.get_backend()}, "
                "rank 0 reports the job; "
                + ", ".join(f"rank {rank}: {device}" for rank, device in enumerate(devices))
                + f"; batch size {batch_size} per rank ({batch_size * run.world_size} per step), "
                f"{len(self.train_loader)} steps per epoch"
            )

    def build_model(self) -> None:
        """Creates the model, optimizer, schedule and loss."""
        advanced = self.advanced_config
        datasets.check_num_classes(self.model_config, self.dataset_config, len(self.classes))
        num_classes = self.model_config.num_classes or len(self.classes)
        self.model_name = self.checkpoint_meta.get("model_name", self.model_config.name)
        if "state_dict" in self.checkpoint_meta:
            model = self._model_from_checkpoint(num_classes)
        else:
            model = self._create_model(num_classes, self.image_size)
        self.model = model.to(self.device)
        self.num_classes = num_classes
        # `model` stays the plain module (checkpoints, validation); `train_model` is what the training step runs.
        self.train_model: nn.Module = self.model
        if self.distributed is not None:
            # Every rank created the same weights from the same seed, and DDP broadcasts rank 0's anyway.
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
            # From here each rank draws its own augmentation and dropout.
            random.seed(self.seed + self.distributed.rank)
            torch.manual_seed(self.seed + self.distributed.rank)

        optimizer_name = advanced.optimizer or DEFAULT_OPTIMIZER
        optimizer_args: dict[str, Any] = {
            "opt": optimizer_name,
            "lr": self.training_config.learning_rate or DEFAULT_LEARNING_RATE,
            "weight_decay": advanced.weight_decay if advanced.weight_decay is not None else DEFAULT_WEIGHT_DECAY,
        }
        if advanced.momentum is not None:
            optimizer_args["momentum"] = advanced.momentum
        try:
            self.optimizer = create_optimizer_v2(self.model, **optimizer_args)
        except (AssertionError, ValueError) as error:
            raise ConfigError(f"advanced_config.optimizer: {optimizer_name!r} is not usable: {error}") from error
        refuse_second_order(self.optimizer, optimizer_name)
        group = self.optimizer.param_groups[0]
        if advanced.momentum is not None and "momentum" not in group:
            # timm's Adam-style optimizers take `momentum=` and drop it without a word.
            betas = f" (it uses betas {tuple(group['betas'])})" if "betas" in group else ""
            self.log(
                f"advanced_config.momentum {advanced.momentum:g} is ignored: timm's {optimizer_name} has no momentum"
                f"{betas}; give an SGD-style advanced_config.optimizer (sgd, momentum, rmsprop) to use it",
                level="WARNING",
            )

        steps_per_epoch = max(1, len(self.train_loader))
        total_steps = steps_per_epoch * self.training_config.epochs
        warmup_steps = round((advanced.warmup_epochs or 0.0) * steps_per_epoch)
        schedule = advanced.lr_scheduler or DEFAULT_LR_SCHEDULER
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, schedule)
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float(advanced.extra.get("label_smoothing", 0.0)))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        parameters = sum(p.numel() for p in self.model.parameters())
        self.log(
            f"Model {self.model_name}: {parameters / 1e6:.2f}M parameters, {num_classes} classes, "
            f"optimizer {optimizer_name}, schedule {schedule}, {warmup_steps} warm-up steps"
        )

    def _model_from_checkpoint(self, num_classes: int) -> nn.Module:
        """The checkpoint's model with its weights; a new classifier when the dataset's classes differ from its."""
        meta = self.checkpoint_meta
        saved_classes = [str(name) for name in meta.get("classes", [])]
        saved_count = int(meta.get("num_classes") or len(saved_classes))
        saved_size = int(meta.get("image_size") or self.image_size)
        model = self._create_model(saved_count, saved_size)
        model.load_state_dict(meta.pop("state_dict"))
        if saved_size != self.image_size:
            set_input_size = getattr(model, "set_input_size", None)
            if _fixed_input_size(model) and set_input_size is None:
                raise ConfigError(
                    f"model_config.image_size: the checkpoint {self.model_config.name!r} was trained at "
                    f"{saved_size}x{saved_size} and {self.model_name} cannot change its input size; "
                    f"use image_size {saved_size}"
                )
            if set_input_size is not None:
                set_input_size(img_size=(self.image_size, self.image_size))  # resizes the position embeddings
        if saved_classes != self.classes or saved_count != num_classes:
            cast(Any, model).reset_classifier(num_classes)  # every timm model has one
            self.log(
                f"The checkpoint {self.model_config.name!r} was trained on {_classes_text(saved_classes)}, "
                f"the dataset has {_classes_text(self.classes)}: its classifier is replaced by a new one with "
                f"{num_classes} outputs, trained from scratch; the rest of the model keeps the checkpoint's weights",
                level="WARNING",
            )
        return model

    def _create_model(self, num_classes: int, image_size: int) -> nn.Module:
        """A timm model for `image_size` pixels: models built for one input size (ViT, Swin) take it as `img_size`."""
        name = self.model_name
        kwargs: dict[str, Any] = {"num_classes": num_classes}
        if "drop_rate" in self.advanced_config.extra:
            kwargs["drop_rate"] = float(self.advanced_config.extra["drop_rate"])
        pretrained = self.model_config.pretrained and "state_dict" not in self.checkpoint_meta
        _check_input_size(name, kwargs, image_size)
        # Every model whose pretrained config says `fixed_input_size` takes `img_size` (timm's builder passes it);
        # most others (CNNs) refuse it and take any size.
        try:
            return self._create_timm_model(name, pretrained, {**kwargs, "img_size": image_size})
        except TypeError as error:
            if "img_size" not in str(error):  # "... got an unexpected keyword argument 'img_size'"
                raise
        return self._create_timm_model(name, pretrained, kwargs)

    def _create_timm_model(self, name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
        if not pretrained:
            return timm.create_model(name, pretrained=False, **kwargs)
        # huggingface_hub reads HF_HUB_OFFLINE once at import; a process that imported it before this module would
        # otherwise still try the network.
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
        # torch.hub, which fetches weights hosted outside the hub, has no offline switch: nothing missing gets that far.
        _check_pretrained_weights(name)
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except (OSError, RuntimeError) as error:
            raise FileNotFoundError(
                f"pretrained weights of {name!r} are not in the local cache "
                f"({huggingface_hub.constants.HF_HUB_CACHE} or {torch.hub.get_dir()}); trainers never download. "
                f"Put the weights there or set pretrained=false. ({type(error).__name__}: {error})"
            ) from error

    def _select_device(self) -> torch.device:
        requested = self.training_config.device
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        elif requested.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"training_config.device is {requested!r} but CUDA is not available here")
        if self.distributed is None or requested == "cpu":
            return torch.device(requested)
        if requested != "cuda":
            raise ConfigError(
                f"training_config.device is {requested!r}, but under torchrun each rank uses cuda:LOCAL_RANK: "
                "use auto or cuda"
            )
        device = torch.device("cuda", self.distributed.local_rank)
        torch.cuda.set_device(device)
        return device

    # --- Distributed ----------------------------------------------------------------------------------------

    def _init_process_group(self) -> None:
        if dist.is_initialized():  # set up by whoever embeds this adapter: use it, leave it to them
            self._group_active = True
            return
        on_cuda = self.training_config.device != "cpu" and torch.cuda.is_available()
        # The env:// rendezvous: MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE, as torchrun sets them.
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
        self._group_active = self._owns_group = True

    def _finish_process_group(self) -> None:
        if not self._group_active:
            return
        dist.barrier()  # rank 0's last checkpoint is written before any rank leaves
        self._group_active = False
        if self._owns_group:
            dist.destroy_process_group()
            self._owns_group = False

    @property
    def stop_requested(self) -> bool:
        """True once a stop was requested; under torchrun, once any rank's was (every rank must read it in step).

        A rank that stopped alone would leave the others waiting in the next gradient all-reduce, so each read
        agrees across ranks with one all-reduce of one number. The loop reads it at the same points on every rank.
        """
        local = self._stop.is_set()
        if not self._group_active or self._stop_agreed:
            return local or self._stop_agreed
        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        dist.all_reduce(flag)
        self._stop_agreed = flag.item() > 0
        return self._stop_agreed

    def _mean_over_ranks(self, value: torch.Tensor) -> float:
        if not self._group_active:
            return value.item()
        total = value.detach().float().reshape(1).clone()
        dist.all_reduce(total)  # SUM: gloo has no AVG
        return total.item() / dist.get_world_size()

    def _sums_over_ranks(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[float, int, int]:
        if not self._group_active:
            return loss_sum.item(), int(correct.item()), seen
        count = torch.tensor(float(seen), dtype=torch.float64, device=self.device)
        totals = torch.stack([loss_sum.double(), correct.double(), count])
        dist.all_reduce(totals)
        return totals[0].item(), round(totals[1].item()), round(totals[2].item())

    def fit(self) -> TrainingResult:
        """The base loop; under torchrun, then leaves the process group.

        After an exception the group is left as it is: the process exits, and its peers see the connection close
        only after `tp-train` has recorded this rank's error for rank 0 to report.
        """
        result = super().fit()
        self._finish_process_group()
        return result

    def _log_skipped_files(self, skipped: list[str]) -> None:
        root = Path(self.dataset_config.path)
        names = [os.path.relpath(path, root) for path in skipped]
        shown = ", ".join(names[:_SKIPPED_SHOWN]) + (", ..." if len(names) > _SKIPPED_SHOWN else "")
        files = "1 file" if len(names) == 1 else f"{len(names)} files"
        self.log(
            f"{files} skipped in {self.dataset_config.path}: not an image format Pillow reads ({shown})",
            level="WARNING",
        )

    def _image_size(self) -> int:
        if self.model_config.image_size:
            return self.model_config.image_size
        if "image_size" in self.checkpoint_meta:
            return int(self.checkpoint_meta["image_size"])
        if self.dataset_config.resolved_format == "builtin":
            return datasets.DIGITS_IMAGE_SIZE
        cfg = get_pretrained_cfg(str(self.checkpoint_meta.get("model_name", self.model_config.name)))
        return int(cfg.input_size[-1]) if cfg is not None else 224

    def _normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The per-channel mean and std images are normalised with: the model's pretrained config's, or a
        checkpoint's. A checkpoint written before they were stored was trained with ImageNet's."""
        meta = self.checkpoint_meta
        if meta:
            mean = meta.get("mean", IMAGENET_DEFAULT_MEAN)
            std = meta.get("std", IMAGENET_DEFAULT_STD)
        else:
            cfg = get_pretrained_cfg(self.model_config.name)
            config = resolve_data_config(pretrained_cfg=cfg.to_dict()) if cfg is not None else {}
            mean = config.get("mean", IMAGENET_DEFAULT_MEAN)
            std = config.get("std", IMAGENET_DEFAULT_STD)
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def _checkpoint_metadata(self) -> dict[str, Any]:
        """The checkpoint given as model name, loaded; {} for a timm model name."""
        if not _is_checkpoint_path(self.model_config.name):
            return {}
        return load_checkpoint(self.model_config.name)

    # --- The loop -------------------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> MetricsResult:
        """Trains one epoch; reports `train/batch_loss` every `log_every_n_steps` steps."""
        model = self.train_model
        model.train()
        if isinstance(self.train_loader.sampler, DistributedSampler):
            self.train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        interval = self.training_config.log_interval
        # Sums stay on the device: reading them every batch would synchronise with the GPU each step.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        stopped = False
        started = time.perf_counter()
        for images, targets in self.train_loader:
            if self.stop_requested:
                stopped = True
                break
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                try:
                    logits = model(images)
                except ValueError as error:
                    raise self._single_image_error(error, images.size(0)) from error
                loss = self.criterion(logits, targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.global_step += 1

            count = targets.size(0)
            seen += count
            loss_sum += loss.detach() * count
            correct += (logits.detach().argmax(dim=1) == targets).sum()
            if self.global_step % interval == 0:
                batch_loss = self._mean_over_ranks(loss)
                self.logger.log_metric("train/batch_loss", batch_loss, step=self.global_step, epoch=epoch)
        duration = time.perf_counter() - started
        total_loss, total_correct, seen = self._sums_over_ranks(loss_sum, correct, seen)
        metrics = {
            "train/loss": total_loss / max(seen, 1),
            "train/accuracy": total_correct / max(seen, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "train/images_per_s": seen / duration if duration > 0 else 0.0,
        }
        return MetricsResult(metrics=metrics, num_samples=seen, duration_seconds=duration, stopped=stopped)

    def _single_image_error(self, error: ValueError, batch: int) -> Exception:
        """A clear ConfigError for batch norm's refusal of a batch of one image; any other error as it is."""
        if batch != 1 or "Expected more than 1 value per channel" not in str(error):
            return error
        return ConfigError(
            f"training_config.batch_size: {self.model_name} cannot train on a batch of 1 image at image size "
            f"{self.image_size}: its batch-norm layers need more than one value per channel ({error}). Use a "
            "batch_size of at least 2 (with at least 2 training images), or a larger image size"
        )

    def validate(self, epoch: int) -> MetricsResult:
        """Evaluates loss and top-1 accuracy on the validation set."""
        self.model.eval()
        if self._group_active:
            # Batch-norm statistics drift apart per rank: every rank evaluates rank 0's, which is what it saves.
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        started = time.perf_counter()
        with torch.inference_mode():
            for images, targets in self.val_loader:
                images = images.to(self.device, non_blocking=True)
                targets = targets.to(self.device, non_blocking=True)
                with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                    logits = self.model(images)
                    loss = self.criterion(logits, targets)
                loss_sum += loss.float() * targets.size(0)
                correct += (logits.argmax(dim=1) == targets).sum()
                seen += targets.size(0)
        total_loss, total_correct, seen = self._sums_over_ranks(loss_sum, correct, seen)
        metrics = {"val/loss": total_loss / max(seen, 1), "val/accuracy": total_correct / max(seen, 1)}
        return MetricsResult(metrics=metrics, num_samples=seen, duration_seconds=time.perf_counter() - started)

    def save_checkpoint(self, epoch: int, is_best: bool) -> Path:
        """Writes `weights/last.pt`, and copies it to `weights/best.pt` when `is_best` (under torchrun: rank 0)."""
        if self.distributed is not None and self.distributed.rank != 0:
            return self.last_checkpoint_path  # the weights are the same on every rank: rank 0 writes them
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = {
            "framework": self.framework,
            "model_name": self.model_name,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "epoch": epoch,
            "global_step": self.global_step,
            "metrics": dict(self.epoch_metrics),
            "job_id": self.job_id,
            "timm_version": timm.__version__,
            "state_dict": self.model.state_dict(),
        }
        # Write then rename, so a process killed mid-write never leaves a truncated checkpoint behind; a write that
        # fails (a full disk) removes its partial file, which would otherwise keep the disk full for later jobs.
        partial = self.last_checkpoint_path.with_suffix(".pt.partial")
        try:
            torch.save(checkpoint, partial)
            os.replace(partial, self.last_checkpoint_path)
            if is_best:
                shutil.copyfile(self.last_checkpoint_path, partial)
                os.replace(partial, self.best_checkpoint_path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return self.last_checkpoint_path


def _create_with_img_size(name: str, kwargs: dict[str, Any], image_size: int) -> nn.Module:
    """`timm.create_model` without weights, with `img_size` when the model takes it."""
    try:
        return timm.create_model(name, pretrained=False, **kwargs, img_size=image_size)
    except TypeError as error:
        if "img_size" not in str(error):
            raise
    return timm.create_model(name, pretrained=False, **kwargs)


def _check_input_size(name: str, kwargs: dict[str, Any], image_size: int) -> None:
    """Refuses an image size a model built for one input size cannot take, before anything is trained or loaded.

    Some such models take timm's `img_size` and ignore it (efficientformer_l1: its attention stage is built for
    the 7x7 features of 224x224 images, whatever the size), and failed at their first step with a shape error. A
    twin of the model on the meta device (no memory, no compute) runs one forward pass at the image size first.

    Raises:
        ConfigError: The forward pass fails; the message names the size the model takes.
    """
    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.fixed_input_size or tuple(cfg.input_size[-2:]) == (image_size, image_size):
        return
    with torch.device("meta"):
        twin = _create_with_img_size(name, kwargs, image_size)
    try:
        with torch.no_grad():
            twin.eval()(torch.empty(2, 3, image_size, image_size, device="meta"))
    except NotImplementedError:
        return  # an operation without a meta kernel: nothing learned, training will tell
    except RuntimeError as error:
        size = cfg.input_size[-1]
        raise ConfigError(
            f"model_config.image_size: {name} cannot take {image_size}x{image_size} images: timm builds it for its "
            f"pretrained input size whatever the image size (a forward pass at {image_size}x{image_size} fails: "
            f"{type(error).__name__}: {str(error)[:200]}); use image_size {size}"
        ) from error


def _fixed_input_size(model: nn.Module) -> bool:
    """Whether `model` was built for one input size (its pretrained config's `fixed_input_size`)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return bool(cfg.get("fixed_input_size"))


def _rounded(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _classes_text(classes: list[str], shown: int = 5) -> str:
    """`3 classes (a, b, c)`, at most `shown` names."""
    names = ", ".join(classes[:shown]) + (", ..." if len(classes) > shown else "")
    return f"{len(classes)} classes ({names})"


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier after `step` optimizer steps: linear warm-up, then the named schedule.

    Args:
        step: Steps taken so far (0 before the first step).
        total_steps: Steps of the whole run.
        warmup_steps: Steps of linear warm-up from ~0 to the full rate.
        schedule: `cosine` (to 0), `linear` (to 0), `step` (x0.1 at 1/3 and 2/3) or `constant`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "step":
        return 0.1 ** min(2, int(progress * 3))
    return 1.0
