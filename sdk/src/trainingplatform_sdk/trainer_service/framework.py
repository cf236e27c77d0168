"""What a trainer service trains: the small per-framework description its `main()` hands to `serve()`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from trainingplatform_sdk.trainer_service.job import JobRequest

__all__ = ["Catalog", "FrameworkDescription"]


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


class Catalog:
    """The description's model list and devices, computed once on first use (thread-safe).

    Args:
        description: The framework.
    """

    def __init__(self, description: FrameworkDescription) -> None:
        self.description = description
        self._lock = threading.Lock()
        self._models: tuple[str, ...] | None = None
        self._model_set: frozenset[str] = frozenset()
        self._devices: tuple[str, ...] | None = None

    def load(self) -> None:
        """Computes the model list and the devices now (blocking; the server calls it in a thread at start)."""
        self.models()
        self.devices()

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
