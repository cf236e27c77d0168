"""What a trainer service trains: the small per-framework description its `main()` hands to `serve()`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainingplatform_sdk.host import usable_cpus
from trainingplatform_sdk.spec.configs import DatasetConfig
from trainingplatform_sdk.trainer_service.job import JobRequest
from trainingplatform_sdk.trainer_service.settings import TrainerSettings

__all__ = ["Catalog", "ExtraOption", "FrameworkDescription", "HostLimits"]

#: What an `advanced_config.extra` value must be: `int`, `number` (int or float), `fraction` (a number in
#: [0, 1]), `bool`, `str`, `any` (checked by the framework's `check_job`), `owned` (set by the platform from
#: another field: refused, naming that field), or `ignored` (a framework argument training never reads, such as a
#: prediction or export one: refused, saying what reads it, rather than silently ignored).
OptionKind = Literal["int", "number", "fraction", "bool", "str", "any", "owned", "ignored"]
#: A host limit an option's value is capped by: the CPU count, the batch size or image size bound, TP_MAX_EPOCHS.
OptionBound = Literal["", "cpus", "batch_size", "image_size", "epochs"]


@dataclass(frozen=True)
class ExtraOption:
    """One `advanced_config.extra` key a framework accepts, and what its value must be."""

    kind: OptionKind = "any"
    """The value's type (see `OptionKind`)."""
    low: float | None = None
    """Smallest value allowed (numbers only), None for no lower bound."""
    high: float | None = None
    """Largest value allowed (numbers only), None for no upper bound beyond `bound`."""
    choices: tuple[str, ...] = ()
    """For `str`: the values allowed (compared case-insensitively); empty allows any string."""
    bound: OptionBound = ""
    """The host limit the value may not exceed."""
    use_instead: str = ""
    """For `owned`: the JobSpec field that sets this option. For `ignored`: when the framework reads it instead
    (`predicting, exporting or tracking`)."""
    default: Any = None
    """What the adapter uses when the key is not given (shown by `tp frameworks`; None: nothing set)."""
    doc: str = ""
    """One line on what the option does (shown by `tp frameworks`)."""
    accepts: str = ""
    """For `any`: the values the framework's `check_job` accepts, in words (shown by `tp frameworks`)."""


def _cpu_only() -> list[str]:
    return ["cpu"]


def _same(name: str) -> str:
    return name


@dataclass(frozen=True)
class FrameworkDescription:
    """A framework as a trainer service offers it.

    The callables run once, lazily, in a worker thread: they may import the framework (and torch), which the
    SDK itself never does, without slowing the service's start.

    Example:
        FrameworkDescription(
            framework="timm",
            tasks=("image_classification",),
            builtin_datasets=("digits",),
            dataset_formats=("builtin", "imagefolder"),
            default_listen="127.0.0.1:50061",
            list_models=lambda: __import__("timm").list_models(),
        )
    """

    framework: str
    """Name in `JobSpec.framework` (`timm`); StartTraining refuses any other."""
    tasks: tuple[str, ...]
    """Tasks it trains (`image_classification`)."""
    builtin_datasets: tuple[str, ...]
    """Built-in dataset names (`digits`)."""
    dataset_formats: tuple[str, ...]
    """`DatasetConfig` formats it reads: `builtin` and `imagefolder` or `yolo`."""
    default_listen: str
    """Address served when TP_TRAINER_LISTEN and --listen are not given."""
    list_models: Callable[[], Iterable[str]]
    """Returns the model names it can build without pretrained weights."""
    list_devices: Callable[[], Iterable[str]] = _cpu_only
    """Returns the devices training may use: `cpu`, then `cuda:0`, ..."""
    model_key: Callable[[str], str] = _same
    """Maps a requested model name to its entry in `list_models()` (timm drops a `.pretrained_tag`)."""
    checkpoint_suffixes: tuple[str, ...] = (".pt", ".pth")
    """A model name ending so is the path of a local checkpoint, which must exist, instead of a model name."""
    check_job: Callable[[JobRequest], None] | None = None
    """Optional deeper checks of a request, run in a thread after the generic ones. Raises ValueError
    (INVALID_ARGUMENT) or FileNotFoundError (NOT_FOUND) with a message naming the field, or
    `errors.FailedPrecondition` for a misconfigured tracking or artifact store (the message names the setting).
    Starts wait for it, so network checks need short timeouts."""
    list_optimizers: Callable[[], Iterable[str]] | None = None
    """Returns the `advanced_config.optimizer` names the framework accepts (lower case); None accepts any name
    (then `check_job` should check it)."""
    refused_optimizers: Callable[[], Mapping[str, str]] | None = None
    """Returns the optimizer names the framework has but this trainer refuses (lower case), each with why: the words
    after the quoted name (`is a second-order optimizer, ...`). `list_optimizers` leaves them out (so `tp frameworks`
    does not list them), and StartTraining refuses them with that reason rather than as unknown names."""
    resolve_dataset: Callable[[DatasetConfig], DatasetConfig] | None = None
    """Maps a dataset path given in another form to the one the adapter reads (ultralytics: a YOLO data set
    directory to its data.yaml), before the format check, once the path is known to lie under the data roots. The
    job trains on what it returns. Raises ValueError (INVALID_ARGUMENT) with a message naming the field."""
    dataset_paths: Callable[[DatasetConfig], Iterable[str]] | None = None
    """Returns the other paths a dataset file refers to (a YOLO data.yaml's `path`, `train`, `val`, `test`),
    absolute; each must lie under the data roots too. Raises ValueError (INVALID_ARGUMENT) for a file it cannot
    read, FileNotFoundError (NOT_FOUND) for a path that does not exist."""
    extra_options: Callable[[], Mapping[str, ExtraOption]] | None = None
    """Returns every `advanced_config.extra` key the framework's adapter accepts, with its type and range. An
    `extra` key outside it is refused with the closest valid keys. None accepts any key unchecked."""
    advanced_defaults: Callable[[], Mapping[str, Any]] | None = None
    """Returns what the adapter uses for each typed `advanced_config` field left unset (`optimizer`,
    `augmentation.scale`, ...): a value, or a few words. Only shown (`tp frameworks`, `--describe`); checks nothing."""
    advanced_bounds: Mapping[str, tuple[float, float, bool]] = field(default_factory=dict)
    """Narrower bounds than the contract's for typed numeric `advanced_config` fields (`weight_decay`,
    `augmentation.scale`, ...): (lowest, highest, whether the highest itself is refused). StartTraining refuses a
    value outside them (INVALID_ARGUMENT) and `tp frameworks` shows them in place of the contract's."""


@dataclass(frozen=True)
class HostLimits:
    """What StartTraining checks a request against on this host, beyond the framework."""

    data_roots: tuple[Path, ...] = ()
    """Resolved directories dataset paths must lie under (TP_DATA_ROOTS); empty refuses every dataset path."""
    max_epochs: int = 10_000
    """TP_MAX_EPOCHS."""
    cpus: int = field(default_factory=usable_cpus)
    """CPUs the service may use (`usable_cpus`: its CPU affinity, at most its cgroup's CPU quota): num_workers and
    thread counts may not exceed it."""
    adapter: str = ""
    """TP_TRAINER_ADAPTER: a `module:Class` adapter run instead of the framework's; the `extra` keys in its
    `supported_extra_keys` are accepted too."""

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> HostLimits:
        """The limits of a trainer service's settings."""
        return cls(data_roots=settings.effective_data_roots, max_epochs=settings.max_epochs, adapter=settings.adapter)


class Catalog:
    """The description's model list, devices and options, computed once on first use (thread-safe), and the
    host's limits.

    Args:
        description: The framework.
        settings: The service's settings (data roots, epoch limit, adapter); None: `TrainerSettings` defaults
            (dataset paths under `.data/datasets`).
    """

    def __init__(self, description: FrameworkDescription, settings: TrainerSettings | None = None) -> None:
        self.description = description
        self.limits = (
            HostLimits.from_settings(settings)
            if settings is not None
            else HostLimits(data_roots=((Path(".data") / "datasets").resolve(),))
        )
        self._lock = threading.Lock()
        self._models: tuple[str, ...] | None = None
        self._model_set: frozenset[str] = frozenset()
        self._devices: tuple[str, ...] | None = None
        self._optimizers: frozenset[str] | None = None
        self._refused_optimizers: dict[str, str] | None = None
        self._extra_options: dict[str, ExtraOption] | None = None

    def load(self) -> None:
        """Computes the model list, devices and options now (blocking; the server calls it in a thread at start)."""
        self.models()
        self.devices()
        self.optimizers()
        self.refused_optimizers()
        self.extra_options()

    def optimizers(self) -> frozenset[str] | None:
        """The optimizer names the framework accepts (lower case), None when it does not list them."""
        if self.description.list_optimizers is None:
            return None
        with self._lock:
            if self._optimizers is None:
                self._optimizers = frozenset(name.lower() for name in self.description.list_optimizers())
            return self._optimizers

    def refused_optimizers(self) -> dict[str, str]:
        """The optimizer names the framework has but this trainer refuses (lower case), each with why."""
        if self.description.refused_optimizers is None:
            return {}
        with self._lock:
            if self._refused_optimizers is None:
                refused = self.description.refused_optimizers()
                self._refused_optimizers = {name.lower(): why for name, why in refused.items()}
            return self._refused_optimizers

    def extra_options(self) -> dict[str, ExtraOption] | None:
        """The `advanced_config.extra` keys accepted, None when any key is (the framework lists none).

        With a custom adapter (TP_TRAINER_ADAPTER `module:Class`), its `supported_extra_keys` are added, unchecked.
        """
        if self.description.extra_options is None:
            return None
        with self._lock:
            if self._extra_options is None:
                options = dict(self.description.extra_options())
                for key in _adapter_extra_keys(self.limits.adapter, self.description.framework):
                    options.setdefault(key, ExtraOption())
                self._extra_options = options
            return self._extra_options

    def models(self) -> tuple[str, ...]:
        """Model names, sorted."""
        with self._lock:
            if self._models is None:
                self._models = tuple(sorted(set(self.description.list_models())))
                self._model_set = frozenset(self._models)
            return self._models

    def has_model(self, name: str) -> bool:
        """Whether `name` (after `model_key`) is a model of the framework."""
        self.models()
        return self.description.model_key(name) in self._model_set

    def devices(self) -> tuple[str, ...]:
        """Devices training may use."""
        with self._lock:
            if self._devices is None:
                self._devices = tuple(self.description.list_devices())
            return self._devices


def _adapter_extra_keys(adapter: str, framework: str) -> frozenset[str]:
    if not adapter or adapter == framework or ":" not in adapter:
        return frozenset()
    # Imported here: the registry imports the training package, which a service needs only for this.
    from trainingplatform_sdk.training.registry import resolve_adapter

    return frozenset(resolve_adapter(adapter).supported_extra_keys)
