"""What ultralytics accepts as train arguments, read from its own files without importing it.

The trainer service checks every `advanced_config.extra` key of a job against ultralytics' argument table
(`ultralytics/cfg/default.yaml`) and its type sets (`CFG_FLOAT_KEYS`, `CFG_FRACTION_KEYS`, `CFG_INT_KEYS`,
`CFG_INT_MIN`, `CFG_BOOL_KEYS`, `CFG_STR_KEYS` in `ultralytics/cfg/__init__.py`), the way `check_cfg` will at
training time, so a bad key or value is refused at StartTraining instead of failing the job seconds later.

Both files are read as text: importing ultralytics in the service would set OMP_NUM_THREADS=1 and write settings
under the user's home, and every training process the service starts would inherit that.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import replace
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from trainingplatform_sdk.spec.configs import ConfigError
from trainingplatform_sdk.trainer_service.framework import ExtraOption

__all__ = [
    "ACCEPTS",
    "ADVANCED_BOUNDS",
    "MAX_SEED",
    "NOT_READ_BY_TRAINING",
    "OWNED",
    "advanced_defaults",
    "check_cache",
    "check_extra_values",
    "check_quantize",
    "extra_options",
    "ultralytics_dir",
]

#: Train arguments the platform sets from the JobSpec or the trainer: `extra` may not set them. Each names what
#: sets it instead.
OWNED = {
    "model": "model_config.name",
    "data": "dataset_config.path",
    "epochs": "training_config.epochs",
    "imgsz": "model_config.image_size",
    "device": "training_config.device",
    "project": "nothing (the trainer picks the output directory)",
    "name": "nothing (the trainer picks the output directory)",
    "exist_ok": "nothing (the trainer picks the output directory)",
    "save_dir": "nothing (the trainer picks the output directory)",
    "mode": "nothing (the trainer trains)",
    "task": "nothing (the trainer trains detection models)",
    "resume": "model_config.name (the path of a checkpoint to continue from)",
    "cfg": "advanced_config.extra keys (a config file on the trainer host is not read)",
    "distill_model": "nothing (a teacher model from the trainer host is not loaded)",
}
#: Arguments of default.yaml only prediction, export or tracking read (`engine/predictor.py`, `engine/exporter.py`,
#: `trackers/`, `Model.embed`), never training nor its validation (which skips `augment` and `dnn`): a job setting
#: one trained as if it were not there, so it is refused. The other predict and visualize arguments (`conf`,
#: `agnostic_nms`, `save_txt`, `visualize`, ...) are read by the validation of each epoch.
NOT_READ_BY_TRAINING = frozenset(
    {
        "source", "vid_stride", "stream_buffer", "augment", "embed", "retina_masks",
        "show", "save_frames", "save_crop", "show_boxes", "line_width",
        "format", "optimize", "dynamic", "simplify", "opset", "workspace", "keras", "int8",
        "tracker", "dnn",
    }
)  # fmt: skip
#: Bounds of the typed `advanced_config` fields ultralytics takes as fractions (in its `CFG_FRACTION_KEYS`: its
#: `check_cfg` refuses more than 1 when training starts), narrower than the contract's [0, 100]: (lowest, highest,
#: whether the highest itself is refused), as `FrameworkDescription.advanced_bounds` takes them. momentum is [0, 1)
#: already; training_config.learning_rate (lr0) is checked by the adapter's `check_fractions`.
ADVANCED_BOUNDS: dict[str, tuple[float, float, bool]] = {"weight_decay": (0.0, 1.0, False)}
#: Largest seed ultralytics can use (it seeds numpy, whose seeds are 32-bit).
MAX_SEED = 2**32 - 1
#: Keys `extra` may set besides ultralytics' own arguments.
PLATFORM_KEYS = {
    "num_threads": ExtraOption(
        "int", low=1, bound="cpus", default="the CPUs the process may use", doc="torch's CPU threads"
    )
}
# Host limits some arguments are capped by (the generic check applies them).
_BOUNDS = {"workers": "cpus", "batch": "batch_size"}
#: Bounds of the numeric arguments ultralytics leaves unbounded, which overflow (`box: 1e308` fails training with
#: `OverflowError: int too big to convert`) or make no sense far out: loss gains in [0, 1000], angles in degrees,
#: durations like the typed fields'.
_LOSS_GAINS = ("angle", "box", "cls", "dfl", "dgrad", "dis", "dlog", "kobj", "pose", "rle")
_RANGES: dict[str, tuple[float, float]] = {
    **{key: (0.0, 1000.0) for key in _LOSS_GAINS},
    "degrees": (-360.0, 360.0),
    "shear": (-90.0, 90.0),
    "warmup_epochs": (0.0, 1_000_000.0),
    "time": (0.0, 1_000_000.0),
}
#: Largest value of an integer argument ultralytics leaves unbounded (`close_mosaic`, `patience`, `max_det`, ...).
_MAX_INT = 1_000_000
#: A module of a model's layer list, as ultralytics' `freeze` takes it: its index, then attribute names or indices.
_MODULE_NAME = re.compile(r"\d+(?:\.\w+)*", re.ASCII)
_SET_NAMES = ("CFG_FLOAT_KEYS", "CFG_FRACTION_KEYS", "CFG_INT_KEYS", "CFG_BOOL_KEYS", "CFG_STR_KEYS")
#: What `check_extra_values` accepts for the keys ultralytics takes several types for (its messages say the same).
ACCEPTS = {
    "pretrained": "true or false (for a checkpoint, give its path as model_config.name)",
    "amp": "true, false, 'fp16', 'bf16' or 'fp32'",
    "cache": "true, false or 'ram' ('disk' is refused: it would write into the data set)",
    "compile": "true, false or a torch.compile mode ('default', 'reduce-overhead', 'max-autotune', "
    "'max-autotune-no-cudagraphs')",
    "quantize": "8 (or 'int8', 'w8a8': quantization-aware training, with nvidia-modelopt installed), 32 (or "
    "'fp32', 'w32a32': the default) or null",
    "scale": "a number in [0, 1] or a [min, max] pair",
    "fraction": "a ratio in (0, 1] or a count of images above 1, or a [train, val] or [train, val, test] list of "
    "ratios and counts (train and val not 0)",
    "freeze": "a number of layers, or a list of layer indices and module names such as '23.cv2' (a layer index, "
    "then attribute names)",
    "classes": "a class id or a list of class ids (integers ≥ 0)",
}
#: torch.compile's modes (ultralytics passes a string `compile` on as the mode; another string made torch.compile
#: fail, and ultralytics then trained uncompiled, saying so only in train.log).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: `quantize` values that make ultralytics train with INT8 quantization-aware training, which imports modelopt.
QAT_VALUES = frozenset({"8", "int8", "w8a8"})
#: `quantize` values training takes without effect (FP32, the default).
FP32_VALUES = frozenset({"32", "fp32", "w32a32"})
#: The package INT8 quantization-aware training needs (ultralytics' MODELOPT_REQUIREMENTS) and its module.
QAT_PACKAGE, QAT_MODULE = "nvidia-modelopt", "modelopt"
# `key: value  # (type) what it does` in default.yaml: the comment, without the type, is an option's `doc`.
_COMMENTED_KEY = re.compile(r"^([A-Za-z_]\w*):[^#\n]*#\s*(?:\([^)]*\)\s*)?(.*?)\s*$", re.MULTILINE)


def ultralytics_dir() -> Path | None:
    """The installed ultralytics package's directory, None when it is not installed."""
    spec = find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def _docs() -> dict[str, str]:
    root = ultralytics_dir()
    if root is None:
        return {}
    text = (root / "cfg" / "default.yaml").read_text(encoding="utf-8")
    return {match.group(1): match.group(2) for match in _COMMENTED_KEY.finditer(text)}


def _adapter_defaults(defaults: dict[str, Any]) -> dict[str, Any]:
    """The train arguments the UltralyticsAdapter sets itself when `extra` does not (adapter.py `train_args`)."""
    from trainingplatform_trainer_ultralytics.adapter import DEFAULT_BATCH_SIZE

    return {
        "batch": f"training_config.batch_size, else {DEFAULT_BATCH_SIZE}",
        "workers": "training_config.num_workers (0)",
        "lr0": (
            f"training_config.learning_rate, else {defaults.get('lr0')}; optimizer `auto` picks its own (a "
            "learning_rate without advanced_config.optimizer trains with SGD)"
        ),
        "plots": False,
        "verbose": False,
        "seed": "advanced_config.seed, else 0",
    }


def advanced_defaults() -> dict[str, Any]:
    """What ultralytics uses for each typed advanced_config field left unset: its own defaults (default.yaml),
    through the adapter's mapping (adapter.py `train_args`)."""
    defaults = _tables()[0]
    if not defaults:
        return {}
    return {
        "optimizer": (
            f"{defaults.get('optimizer')} (ultralytics picks the optimizer, lr0 and momentum); SGD when "
            "training_config.learning_rate or momentum is set"
        ),
        "lr_scheduler": (
            ("cosine" if defaults.get("cos_lr") else "linear") + f" (to lr0 x lrf = {defaults.get('lrf')}; "
            "`step` runs as linear, with a warning)"
        ),
        "weight_decay": defaults.get("weight_decay"),
        "momentum": defaults.get("momentum"),
        "warmup_epochs": defaults.get("warmup_epochs"),
        "mixed_precision": f"amp {str(defaults.get('amp')).lower()} (effective on CUDA)",
        "seed": 0,
        "augmentation.enabled": "on: ultralytics' defaults (false turns every augmentation off, mosaic included)",
        "augmentation.horizontal_flip_probability": f"fliplr {defaults.get('fliplr')}",
        "augmentation.scale": f"scale {defaults.get('scale')}",
        "augmentation.color_jitter": f"hsv_s {defaults.get('hsv_s')}, hsv_v {defaults.get('hsv_v')}",
    }


@cache
def _tables() -> tuple[dict[str, Any], dict[str, frozenset[str]], dict[str, int]]:
    root = ultralytics_dir()
    if root is None:
        return {}, {}, {}
    defaults = yaml.safe_load((root / "cfg" / "default.yaml").read_text(encoding="utf-8")) or {}
    tree = ast.parse((root / "cfg" / "__init__.py").read_text(encoding="utf-8"))
    sets: dict[str, frozenset[str]] = {}
    minimums: dict[str, int] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        target = node.targets[0].id
        if target in _SET_NAMES and isinstance(node.value, ast.Call) and node.value.args:
            sets[target] = frozenset(ast.literal_eval(node.value.args[0]))
        elif target in _SET_NAMES:
            sets[target] = frozenset(ast.literal_eval(node.value))
        elif target == "CFG_INT_MIN":
            minimums = dict(ast.literal_eval(node.value))
    return dict(defaults), sets, minimums


def extra_options() -> dict[str, ExtraOption]:
    """Every key `advanced_config.extra` may hold for the ultralytics trainer, with its type and range."""
    defaults, sets, minimums = _tables()
    options: dict[str, ExtraOption] = dict(PLATFORM_KEYS)
    options.update(_checked_options(defaults, sets, minimums))
    # What `tp frameworks` shows: the default the adapter or ultralytics uses, and default.yaml's comment.
    docs, adapter_defaults = _docs(), _adapter_defaults(defaults)
    for key, option in options.items():
        if option.kind == "owned":
            continue
        default = adapter_defaults.get(key, defaults.get(key, option.default))
        accepts = ACCEPTS.get(
            key, "any JSON value (ultralytics checks it when training)" if option.kind == "any" else ""
        )
        options[key] = replace(option, default=default, doc=docs.get(key, option.doc), accepts=accepts)
    return options


def _checked_options(
    defaults: dict[str, Any], sets: dict[str, frozenset[str]], minimums: dict[str, int]
) -> dict[str, ExtraOption]:
    """Each ultralytics train argument's type and range, as `check_cfg` checks it."""
    options: dict[str, ExtraOption] = {}
    for key in defaults:
        bound = _BOUNDS.get(key, "")
        if key in OWNED:
            options[key] = ExtraOption("owned", use_instead=OWNED[key])
        elif key in NOT_READ_BY_TRAINING:
            options[key] = ExtraOption("ignored", use_instead="predicting, exporting or tracking")
        elif key == "batch":
            # An int, -1 for AutoBatch, or a fraction of the GPU memory: ultralytics' own check covers the rest.
            options[key] = ExtraOption("number", low=-1, bound="batch_size")
        elif key == "workers":
            options[key] = ExtraOption("int", low=0, bound="cpus")
        elif key in sets.get("CFG_BOOL_KEYS", ()):
            options[key] = ExtraOption("bool")
        elif key == "seed":
            options[key] = ExtraOption("int", low=0, high=MAX_SEED)  # numpy's seeds are 32-bit
        elif key in sets.get("CFG_INT_KEYS", ()):
            int_high = None if bound else _MAX_INT
            options[key] = ExtraOption("int", low=minimums.get(key), high=int_high, bound=bound)  # type: ignore[arg-type]
        elif key in sets.get("CFG_FRACTION_KEYS", ()) and key != "fraction":
            options[key] = ExtraOption("fraction")
        elif key in sets.get("CFG_FLOAT_KEYS", ()):
            low, high = _RANGES.get(key, (None, None))
            options[key] = ExtraOption("number", low=low, high=high)
        elif key == "optimizer":
            from trainingplatform_trainer_ultralytics.adapter import OPTIMIZERS

            options[key] = ExtraOption("str", choices=tuple(OPTIMIZERS.values()))
        elif key in sets.get("CFG_STR_KEYS", ()):
            options[key] = ExtraOption("str")
        else:
            options[key] = ExtraOption("any")  # several types allowed: check_extra_values checks the ones used
    return options


def check_extra_values(extra: dict[str, Any]) -> None:
    """Checks the `extra` values of the keys ultralytics accepts several types for, as its `check_cfg` does.

    Raises:
        ValueError: A value ultralytics would refuse; the message names the key.
    """
    for key, value in extra.items():
        where = f"advanced_config.extra.{key}"
        if key == "pretrained" and not isinstance(value, bool):
            # A string is the path of weights on the trainer host (or a download): give model_config.name instead.
            raise ValueError(f"{where}: {ACCEPTS[key]}")
        if key == "amp" and not (isinstance(value, bool) or str(value).lower() in {"fp16", "bf16", "fp32"}):
            raise ValueError(f"{where}: {ACCEPTS[key]}, got {_short(value)}")
        if key == "cache":
            check_cache(value)
        if key == "compile" and not (isinstance(value, bool) or value in COMPILE_MODES):
            raise ValueError(f"{where}: {ACCEPTS[key]}, got {_short(value)}")
        if key == "quantize":
            check_quantize(value)
        if key == "scale" and not (_number_in(value, 0.0, 1.0) or _pair(value)):
            raise ValueError(f"{where}: {ACCEPTS[key]}, got {_short(value)}")
        if key == "fraction" and not (
            _number_in(value, 0.0, 1.0, low_open=True) or (_int(value) and value > 1) or _split_fractions(value)
        ):
            raise ValueError(f"{where}: {ACCEPTS[key]}, got {_short(value)}")
        if key == "classes" and not (
            value is None or _int(value) or (isinstance(value, list) and all(map(_whole, value)))
        ):
            raise ValueError(f"{where}: {ACCEPTS[key]}, got {_short(value)}")
        if key == "freeze" and not (
            value is None or _int(value) or (isinstance(value, list) and all(map(_layer, value)))
        ):
            raise ValueError(f"{where}: {ACCEPTS[key]}, got {_short(value)}")


def check_quantize(value: Any) -> None:
    """`extra.quantize` for training: 8 is INT8 quantization-aware training, which needs the nvidia-modelopt
    package (without it the job failed when training started: "No module named 'modelopt'"); 32 is the default.
    Ultralytics' other values (16, 'w8a16', 'w8a32') are for prediction and export: training ignores them.

    Raises:
        ValueError: Another value, or 8 without nvidia-modelopt installed; the message says why.
    """
    where = "advanced_config.extra.quantize"
    if value is None or isinstance(value, bool):
        if value is None:
            return
        raise ValueError(f"{where}: {ACCEPTS['quantize']}, got {_short(value)}")
    text = str(value).lower()
    if text in QAT_VALUES:
        if find_spec(QAT_MODULE) is None:
            raise ValueError(
                f"{where}: {_short(value)} (INT8 quantization-aware training) needs the {QAT_PACKAGE} package, "
                "which is not installed on this trainer; leave quantize out"
            )
        return
    if text not in FP32_VALUES:
        raise ValueError(f"{where}: {ACCEPTS['quantize']}, got {_short(value)}")


def check_cache(value: Any) -> None:
    """`extra.cache`: true, false or 'ram'. 'disk' is refused: ultralytics saves each image as a `.npy` beside it,
    inside the data set, which a trainer never writes into (a read-only mount in Kubernetes, shared by jobs).

    Raises:
        ConfigError: Another value; the message says what to use instead.
    """
    where = "advanced_config.extra.cache"
    if value == "disk":
        raise ConfigError(
            f"{where}: 'disk' would save a .npy beside each image, inside the data set, and trainers never write "
            "into a data set: use 'ram' (or true) or false"
        )
    if not (isinstance(value, bool) or value == "ram"):
        raise ConfigError(f"{where}: {ACCEPTS['cache']}, got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:100]}... ({len(text)} characters)"


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _split_fractions(value: Any) -> bool:
    """`fraction` per split, as ultralytics' `check_cfg` takes it: [train, val] or [train, val, test], each a ratio
    in [0, 1] or a count (an integer; 1 means all), train and val not 0 (a ratio keeps at least one image)."""
    return (
        isinstance(value, list)
        and len(value) in (2, 3)
        and all(_int(v) or _number_in(v, 0.0, 1.0) for v in value)
        and all(value[:2])
    )


def _layer(value: Any) -> bool:
    """A `freeze` list item: a layer index, or a module name below one (`23.cv2`): ultralytics freezes every
    parameter whose name holds `model.<item>.`, so anything else (`model.23`, `cv2`) would freeze nothing."""
    return _int(value) or (isinstance(value, str) and _MODULE_NAME.fullmatch(value) is not None)


def _whole(value: Any) -> bool:
    """An integer at least 0, or a float that is one: list items of a JobSpec's `extra` come as floats."""
    return _int(value) or (isinstance(value, float) and value.is_integer() and value >= 0)


def _number_in(value: Any, low: float, high: float, *, low_open: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return (low < value if low_open else low <= value) and value <= high


def _pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_number_in(v, 0.0, math.inf) for v in value)
