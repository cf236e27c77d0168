"""Detection datasets for the ultralytics trainer: a YOLO data.yaml, or the built-in synthetic `shapes`.

`shapes` is generated on the fly (no download): images of filled rectangles and circles in random colours on a
random background, with exact YOLO labels. The same seed always writes the same images, so runs and tests are
reproducible. It is small on purpose: losses fall within a couple of epochs, but mAP stays low with so few images.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from PIL import Image, ImageDraw
from trainingplatform_sdk.spec.configs import ConfigError, DatasetConfig

__all__ = [
    "BUILTIN_DATASETS",
    "SHAPES_CLASSES",
    "check_dataset",
    "class_count",
    "describe",
    "referenced_paths",
    "resolve_data_yaml",
    "resolve_dataset",
    "write_shapes_dataset",
]

BUILTIN_DATASETS = ("shapes",)
SHAPES_CLASSES = ("rectangle", "circle")


def resolve_dataset(config: DatasetConfig) -> DatasetConfig:
    """The config with a YOLO data set directory as its path replaced by the directory's data.yaml.

    A directory (format left empty, or `yolo`) gives its `data.yaml` (or `data.yml`); without one, its only
    `*.yaml`/`*.yml` file (not a symbolic link) with `train` and `val` entries. Any other config is returned
    as it is.

    Raises:
        ConfigError: A directory without such a yaml, or with several: the message names them.
    """
    if config.format not in ("", "yolo") or not config.path:
        return config
    directory = Path(config.path)
    if not directory.is_dir():
        return config
    for name in ("data.yaml", "data.yml"):
        if (directory / name).is_file():
            return replace(config, path=str(directory / name))
    # Symbolic links are left out: a yaml is read here before the data roots check of the path returned.
    candidates = sorted(
        p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file() and not p.is_symlink()
    )
    data_yamls = [p for p in candidates if _has_train_and_val(p)]
    if len(data_yamls) == 1:
        return replace(config, path=str(data_yamls[0]))
    if data_yamls:
        names = ", ".join(repr(str(p)) for p in data_yamls[:5])
        raise ConfigError(
            f"dataset_config.path: {config.path!r} is a directory with several YOLO data yamls ({names}); "
            "give the one to train on as the dataset path"
        )
    raise ConfigError(
        f"dataset_config.path: {config.path!r} is a directory without a YOLO data.yaml (a yaml with `train` and "
        "`val` entries); the ultralytics trainer reads YOLO data sets: give the path of the data set's data.yaml"
    )


def _has_train_and_val(path: Path) -> bool:
    import yaml  # type: ignore[import-untyped]

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "train" in data and "val" in data


def check_dataset(config: DatasetConfig) -> None:
    """Checks that the dataset exists, without reading it. A directory stands for its data.yaml
    (`resolve_dataset`).

    Raises:
        FileNotFoundError: The data.yaml does not exist.
        ConfigError: An unknown built-in name, a format the ultralytics trainer does not read, or a directory
            without a data.yaml.
    """
    config = resolve_dataset(config)
    fmt = config.resolved_format
    if fmt == "builtin":
        if config.name not in BUILTIN_DATASETS:
            raise ConfigError(
                f"dataset_config.name: unknown built-in dataset {config.name!r}; the ultralytics trainer has "
                f"{list(BUILTIN_DATASETS)} (or give the `path` of a YOLO data.yaml)"
            )
        return
    if fmt != "yolo":
        raise ConfigError(f"dataset_config.format: the ultralytics trainer reads yolo or builtin, not {fmt!r}")
    if not Path(config.path).is_file():
        raise FileNotFoundError(
            f"dataset_config.path: {config.path!r} does not exist or is not a file (expected a YOLO data.yaml file)"
        )


def describe(config: DatasetConfig) -> str:
    """The data set as messages name it: the built-in's name, or its data.yaml as given (a directory resolved)."""
    config = resolve_dataset(config)
    if config.resolved_format == "builtin":
        return f"the built-in data set {config.name!r}"
    return f"{str(config.path)[:100]!r}"


def class_count(config: DatasetConfig) -> int:
    """The number of classes of the data set: the built-in's, or what its data.yaml's `names` (or `nc`) says,
    checked the way ultralytics checks them when training starts (where its error names the trainer's copy of
    the yaml under the run directory, not the user's).

    Raises:
        ConfigError: The yaml is unreadable or not a mapping, has neither `names` nor `nc`, an `nc` that is not a
            whole number of at least 1, `names` that are empty or neither a list nor a mapping of the ids 0 to n-1,
            or an `nc` other than the number of `names`; the message names the yaml.
    """
    config = resolve_dataset(config)
    if config.resolved_format == "builtin":
        return len(SHAPES_CLASSES)
    import yaml

    where = f"dataset_config.path: {describe(config)}"
    try:
        data = yaml.safe_load(Path(config.path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{where} is not a readable YOLO data.yaml ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} is not a YOLO data.yaml (a mapping with `train` and `val`)")
    names, nc = data.get("names"), data.get("nc")
    if names is None and nc is None:
        raise ConfigError(
            f"{where} has neither `names` (the class names: a list, or a mapping from class id) nor `nc` (the "
            "number of classes); ultralytics needs one of them"
        )
    if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or nc < 1):
        raise ConfigError(f"{where}: `nc` must be a whole number of classes, at least 1, got {nc!r}")
    if names is None and isinstance(nc, int):
        return nc
    if isinstance(names, dict):
        ids = sorted(str(key) for key in names)
        if ids != sorted(str(i) for i in range(len(names))):
            raise ConfigError(
                f"{where}: the class ids of `names` must be 0 to {len(names) - 1}, got {', '.join(ids[:10])}"
            )
    elif not isinstance(names, list):
        raise ConfigError(
            f"{where}: `names` must be a list of class names or a mapping from class id to name, "
            f"not {type(names).__name__}"
        )
    if not names:
        raise ConfigError(f"{where}: `names` is empty; a data set needs at least one class")
    if nc is not None and nc != len(names):
        raise ConfigError(
            f"{where}: `nc` is {nc} but `names` has {len(names)} classes; make them match (or leave `nc` out)"
        )
    return len(names)


def referenced_paths(config: DatasetConfig) -> list[str]:
    """The directories and files a YOLO data.yaml points ultralytics at: its `path` and its `train`, `val` and
    `test` entries, absolute. The trainer service checks that each lies under its data roots.

    Raises:
        ValueError: The file is not a YOLO data.yaml (a mapping with `train` and `val`), or its `path` is relative
            (ultralytics would resolve it against its own working or datasets directory, not the yaml's).
        FileNotFoundError: A `train` or `val` entry does not exist (ultralytics would try to download it).
    """
    config = resolve_dataset(config)
    if config.resolved_format != "yolo":
        return []
    import yaml

    yaml_path = Path(config.path)
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(
            f"{str(yaml_path)[:100]!r} is not a readable YOLO data.yaml ({type(error).__name__})"
        ) from None
    if not isinstance(data, dict) or "train" not in data or "val" not in data:
        raise ValueError(f"{str(yaml_path)[:100]!r} is not a YOLO data.yaml: it needs `train` and `val` entries")
    base_value = data.get("path")
    if base_value in (None, ""):
        base = yaml_path.parent
    elif isinstance(base_value, str) and Path(base_value).is_absolute():
        base = Path(base_value)
    else:
        raise ValueError(
            f"the `path` of {str(yaml_path)[:100]!r} must be absolute, or left out for the yaml's directory"
        )
    paths = [str(base)]
    for key in ("train", "val", "test"):
        entries = data.get(key)
        if entries in (None, ""):
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, str):
                raise ValueError(f"`{key}` of {str(yaml_path)[:100]!r}: expected a path or a list of paths")
            target = base / entry
            if key != "test" and not target.exists():
                raise FileNotFoundError(
                    f"`{key}` of {str(yaml_path)[:100]!r} names {str(target)[:100]!r}, which does not exist "
                    "(trainers never download data sets)"
                )
            paths.append(str(target))
    return paths


def resolve_data_yaml(config: DatasetConfig, work_dir: Path, image_size: int, seed: int = 0) -> Path:
    """Returns the data.yaml to train on: the built-in dataset written under `work_dir`, or a copy of the given
    yaml under `work_dir` without its `download` entry and with an absolute `path`.

    Ultralytics runs a yaml's `download` (a URL to fetch, or Python code it executes) when the yaml's images are
    missing; trainers never download, and a yaml whose images vanish after the trainer's checks must not run code.

    Raises:
        ValueError: The yaml is not a mapping (the trainer service refuses such a file at submit).
    """
    check_dataset(config)
    config = resolve_dataset(config)
    if config.resolved_format == "builtin":
        return write_shapes_dataset(work_dir / config.name, image_size=image_size, seed=seed)
    import yaml

    source = Path(config.path).resolve()
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{str(source)[:100]!r} is not a YOLO data.yaml (a mapping with `train` and `val`)")
    data.pop("download", None)
    if data.get("path") in (None, ""):
        data["path"] = str(source.parent)  # what the original yaml's relative entries are relative to
    work_dir.mkdir(parents=True, exist_ok=True)
    copy = work_dir / "data.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return copy


def write_shapes_dataset(
    root: Path, *, train_images: int = 24, val_images: int = 8, image_size: int = 128, seed: int = 0
) -> Path:
    """Writes the synthetic shapes dataset in YOLO layout under `root` and returns its data.yaml.

    Args:
        root: Directory to write `images/{train,val}`, `labels/{train,val}` and `data.yaml` into.
        train_images: Number of training images.
        val_images: Number of validation images.
        image_size: Width and height of each image in pixels.
        seed: Random seed; the same seed writes the same dataset.
    """
    rng = random.Random(seed)
    for split, count in (("train", train_images), ("val", val_images)):
        image_dir, label_dir = root / "images" / split, root / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, labels = _shapes_image(rng, image_size)
            image.save(image_dir / f"{index:04d}.png")
            (label_dir / f"{index:04d}.txt").write_text("".join(f"{line}\n" for line in labels))
    # Absolute paths: ultralytics would otherwise resolve a relative `path` against its own datasets directory.
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(SHAPES_CLASSES))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return data_yaml


def _shapes_image(rng: random.Random, size: int) -> tuple[Image.Image, list[str]]:
    """One image with 1-3 non-overlapping shapes and its YOLO label lines (class cx cy w h, normalised)."""
    background = tuple(rng.randint(0, 80) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    labels: list[str] = []
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(rng.randint(1, 3)):
        for _attempt in range(20):
            w = rng.randint(size // 6, size // 2)
            h = w if rng.random() < 0.5 else rng.randint(size // 6, size // 2)
            x0, y0 = rng.randint(0, size - w), rng.randint(0, size - h)
            box = (x0, y0, x0 + w, y0 + h)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                break
        else:
            continue
        boxes.append(box)
        cls = rng.randrange(len(SHAPES_CLASSES))
        colour = tuple(rng.randint(120, 255) for _ in range(3))
        if SHAPES_CLASSES[cls] == "circle":
            w = h = min(w, h)
            box = (x0, y0, x0 + w, y0 + h)
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
        labels.append(f"{cls} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
    return image, labels
