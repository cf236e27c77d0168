"""Finding a framework's adapter: the `trainingplatform.adapters` entry-point group.

A package adds a framework by declaring its TrainingAdapter subclass in that group, for example in its
pyproject.toml:

    [project.entry-points."trainingplatform.adapters"]
    timm = "trainingplatform_trainer_timm.adapter:TimmAdapter"

`tp-train --framework timm` then loads it; nothing in the SDK names a framework. A `module:Class` path works too,
for an adapter that is not installed as a package (tests, a script beside the job).
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points

from trainingplatform_sdk.training.adapter import TrainingAdapter

__all__ = ["ENTRY_POINT_GROUP", "installed_frameworks", "resolve_adapter"]

ENTRY_POINT_GROUP = "trainingplatform.adapters"
"""The entry-point group adapters are declared in; the entry point's name is the framework's name."""


def installed_frameworks() -> dict[str, EntryPoint]:
    """The frameworks installed in this environment, by name (nothing is imported)."""
    return {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}


def resolve_adapter(framework: str) -> type[TrainingAdapter]:
    """The adapter class of an installed framework's name, or of a `module:Class` path.

    Only the adapter's own module is imported, so a framework (and torch) loads only when its job runs.

    Raises:
        ValueError: Unknown framework, or the name does not resolve to a TrainingAdapter subclass.
        ImportError: The adapter's module cannot be imported.
    """
    installed = installed_frameworks()
    entry = installed.get(framework)
    if entry is not None:
        cls = entry.load()
        where = f"the {ENTRY_POINT_GROUP} entry point {framework!r} ({entry.value})"
    else:
        module_name, _, class_name = framework.partition(":")
        if not module_name or not class_name:
            raise ValueError(
                f"unknown framework {framework!r}: installed are {sorted(installed) or 'none'} "
                f"(the {ENTRY_POINT_GROUP!r} entry points), or give a module:Class path"
            )
        cls = getattr(importlib.import_module(module_name), class_name, None)
        where = repr(framework)
    if not (isinstance(cls, type) and issubclass(cls, TrainingAdapter)):
        raise ValueError(f"{where} is not a TrainingAdapter subclass")
    return cls
