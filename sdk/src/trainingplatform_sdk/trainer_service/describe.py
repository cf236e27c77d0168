"""What a trainer service accepts, as data: every `advanced_config` key with its type, range and default, and the
optimizer and schedule names. `tp-trainer-<framework> --describe` prints it as JSON; `tp frameworks` renders it.

Everything comes from the code StartTraining validates with, so the table cannot drift from what is refused:

- the typed fields (`optimizer`, `momentum`, `augmentation.scale`, ...) from `spec.configs.AdvancedConfig` and
  `Augmentation` (their names, types and docstrings), with the bounds `spec.validation.validate_spec` enforces
  (`FIELD_BOUNDS`, from `spec.limits`; tests/trainer_service/test_describe.py probes a live trainer at each one);
- the `extra` keys from the framework's `ExtraOption`s, which `validation._check_option` checks values against;
- the model names from the framework's `list_models`, the optimizer names from its `list_optimizers`, the
  schedules from `spec.configs.LR_SCHEDULERS`;
- the defaults from the framework's `advanced_defaults` and each `ExtraOption.default` (shown only).

Bounds that depend on the host (the CPUs it may use, TP_MAX_EPOCHS) are named, not measured: the output is the same on
every host with the same framework versions.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import math
from typing import Any

from trainingplatform_sdk.spec import configs
from trainingplatform_sdk.spec import limits as spec_limits
from trainingplatform_sdk.spec.configs import LR_SCHEDULERS, AdvancedConfig, Augmentation
from trainingplatform_sdk.trainer_service.framework import Catalog, ExtraOption, FrameworkDescription

__all__ = ["FIELD_BOUNDS", "describe", "range_text", "typed_fields"]

#: The bounds of the typed numeric fields as StartTraining enforces them (`validate_spec` and the configs'
#: own checks): (lowest, highest, whether the highest itself is refused).
FIELD_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "weight_decay": (0.0, spec_limits.MAX_WEIGHT_DECAY, False),
    "momentum": (0.0, 1.0, True),
    "warmup_epochs": (0.0, spec_limits.MAX_WARMUP_EPOCHS, False),
    "seed": (0, spec_limits.MAX_SEED, False),
    "augmentation.horizontal_flip_probability": (0.0, 1.0, False),
    "augmentation.scale": (0.0, 1.0, False),
    "augmentation.color_jitter": (0.0, 1.0, False),
}
_KINDS = {"str": "str", "float": "number", "int": "int", "bool": "bool"}
_BOUND_WORDS = {"cpus": "the CPUs the trainer may use", "epochs": "the trainer's TP_MAX_EPOCHS"}
_BOUND_VALUES = {"batch_size": spec_limits.MAX_BATCH_SIZE, "image_size": spec_limits.MAX_IMAGE_SIZE}


def typed_fields() -> list[tuple[str, str, str]]:
    """(key, kind, docstring) of each typed `advanced_config` field, augmentation fields as `augmentation.<name>`."""
    docs = {
        **_attribute_docs(AdvancedConfig),
        **{f"augmentation.{k}": v for k, v in _attribute_docs(Augmentation).items()},
    }
    fields: list[tuple[str, str, str]] = []
    annotations = {f.name: str(f.type) for f in dataclasses.fields(AdvancedConfig)}
    for name in AdvancedConfig._SCALARS:
        fields.append((name, _kind(annotations[name]), docs.get(name, "")))
    for f in dataclasses.fields(Augmentation):
        key = f"augmentation.{f.name}"
        fields.append((key, _kind(str(f.type)), docs.get(key, "")))
    return fields


def _kind(annotation: str) -> str:
    # Annotations are strings (`from __future__ import annotations`): "float | None".
    return _KINDS.get(annotation.split("|")[0].strip(), "any")


def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstring under each annotated attribute of a class (`name: T = ...` then `\"\"\"text\"\"\"`), one line."""
    try:
        source = inspect.getsource(configs)
    except (OSError, TypeError):
        return {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            docs: dict[str, str] = {}
            body = node.body
            for statement, following in itertools.pairwise(body):
                if (
                    isinstance(statement, ast.AnnAssign)
                    and isinstance(statement.target, ast.Name)
                    and isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)
                ):
                    docs[statement.target.id] = " ".join(following.value.value.split())
            return docs
    return {}


def describe(description: FrameworkDescription) -> dict[str, Any]:
    """What the framework's trainer service accepts, as a JSON-serialisable dict (see the module docstring).

    Loads the framework's optimizer list and options (it may import the framework, and torch).
    """
    catalog = Catalog(description)
    optimizers = catalog.optimizers()
    options = catalog.extra_options()
    defaults = dict(description.advanced_defaults()) if description.advanced_defaults is not None else {}
    advanced: list[dict[str, Any]] = []
    for key, kind, doc in typed_fields():
        entry: dict[str, Any] = {"key": key, "type": kind, "doc": doc, "default": defaults.get(key)}
        if key in FIELD_BOUNDS:
            low, high, high_open = description.advanced_bounds.get(key, FIELD_BOUNDS[key])
            entry.update(low=low, high=high, high_open=high_open)
        if key == "lr_scheduler":
            entry["choices"] = list(LR_SCHEDULERS)
        if key == "optimizer" and optimizers is not None:
            entry["choices"] = sorted(optimizers)
            entry["case_insensitive"] = True  # validation compares lower-cased names
        entry["range"] = range_text(entry)
        advanced.append(entry)
    extra: list[dict[str, Any]] | None = None
    if options is not None:
        extra = [_extra_entry(key, option) for key, option in sorted(options.items())]
    return {
        "framework": description.framework,
        "tasks": list(description.tasks),
        "builtin_datasets": list(description.builtin_datasets),
        "dataset_formats": list(description.dataset_formats),
        "models": list(catalog.models()),
        "optimizers": sorted(optimizers) if optimizers is not None else None,
        "lr_schedulers": list(LR_SCHEDULERS),
        "advanced": advanced,
        "extra": extra,
    }


def _extra_entry(key: str, option: ExtraOption) -> dict[str, Any]:
    low, high = option.low, option.high
    if option.kind == "fraction":
        low = 0.0 if low is None else low
        high = 1.0 if high is None else high
    if option.bound in _BOUND_VALUES:
        value = _BOUND_VALUES[option.bound]
        high = value if high is None else min(high, value)
    entry: dict[str, Any] = {
        "key": key,
        "type": option.kind,
        "doc": option.doc,
        "default": option.default if _is_json(option.default) else str(option.default),
        "low": low,
        "high": high,
        "high_open": False,
        "choices": list(option.choices),
        "bound": option.bound if option.bound not in _BOUND_VALUES else "",
        "use_instead": option.use_instead,
        "accepts": option.accepts,
        "case_insensitive": bool(option.choices),  # `_check_option` compares choices lower-cased
    }
    entry["range"] = range_text(entry)
    return entry


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_is_json(v) for v in value)
    return False


def range_text(entry: dict[str, Any]) -> str:
    """The values an entry of `describe()` allows, in words: `[0, 1)`, `integer ≥ 1, at most the trainer's CPU
    count`, `one of: cosine, step, linear, constant`."""
    kind = entry["type"]
    if kind == "owned":
        return f"refused: set by {entry.get('use_instead') or 'the platform'}"
    if kind == "ignored":
        return f"refused: read only when {entry.get('use_instead') or 'not training'}"
    if kind == "bool":
        return "true or false"
    if kind == "any":
        return entry.get("accepts") or "any JSON value"
    if kind == "str":
        choices = entry.get("choices") or []
        if not choices:
            return "any string"
        case = " (case-insensitive)" if entry.get("case_insensitive") else ""
        if len(choices) > 12:
            return f"a name from the list below{case}"
        return "one of: " + ", ".join(choices) + case
    low, high = entry.get("low"), entry.get("high")
    words = "integer " if kind == "int" else ""
    if low is not None and high is not None:
        text = f"{words}[{_number(low)}, {_number(high)}{')' if entry.get('high_open') else ']'}"
    elif low is not None:
        text = f"{words}≥ {_number(low)}"
    elif high is not None:
        text = f"{words}≤ {_number(high)}"
    else:
        text = "any integer" if kind == "int" else "any finite number"
    bound = entry.get("bound") or ""
    if bound in _BOUND_WORDS:
        text += f", at most {_BOUND_WORDS[bound]}"
    return text


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return str(value) if isinstance(value, int) else f"{value:g}"
