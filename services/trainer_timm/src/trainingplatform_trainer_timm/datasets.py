"""Image classification datasets for the timm trainer: ImageFolder directories and the built-in `digits`.

`digits` is scikit-learn's bundled `load_digits()` (1797 real 8x8 grey images of handwritten digits, 10 classes,
no download), upscaled to the requested size and repeated to 3 channels, with a fixed stratified 80/20
train/val split (1437 / 360 images) so every run and every test sees the same data. The images are upscaled once, in
memory, while the upscaled tensors stay under `DIGITS_PRECOMPUTE_MAX_BYTES`; at larger sizes only the 8x8 images are
held and each one is upscaled when it is loaded (the same pixels either way).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets
from torchvision.transforms import v2
from trainingplatform_sdk.spec.configs import Augmentation, ConfigError, DatasetConfig, ModelConfig

__all__ = [
    "BUILTIN_CLASS_COUNTS",
    "BUILTIN_DATASETS",
    "DIGITS_IMAGE_SIZE",
    "DIGITS_PRECOMPUTE_MAX_BYTES",
    "ClassificationData",
    "TensorImageDataset",
    "check_dataset",
    "check_num_classes",
    "image_extensions",
    "load_classification_data",
    "load_rgb",
]

BUILTIN_DATASETS = ("digits",)
#: Classes of each built-in dataset, known without loading it: `num_classes` is checked against it at submit.
BUILTIN_CLASS_COUNTS = {"digits": 10}
#: Default input size of `digits`.
DIGITS_IMAGE_SIZE = 32
#: Largest size in bytes of the upscaled float32 `digits` tensors (1797 x 3 x image_size^2 x 4) that is computed
#: once and held in memory: 64 px (~88 MB) and below. Above it (the size grows with its square, and image_size may
#: be up to 8192) only the 8x8 images are held and each image is upscaled when it is loaded, so memory stays
#: O(images x 8 x 8) plus a batch instead of killing or swapping the trainer host.
DIGITS_PRECOMPUTE_MAX_BYTES = 256 * 1024 * 1024
# Augmentation strengths used when `augmentation.enabled` is True and a field is left unset.
_DEFAULT_FLIP = 0.5
_DEFAULT_SCALE = 0.5
# Formats Pillow identifies but cannot decode here: stubs that need a handler, MPEG (identified only), WMF (Windows
# only), EPS (needs Ghostscript). Their files are skipped and reported like any other non-image file.
_UNDECODABLE_FORMATS = frozenset({"BUFR", "GRIB", "HDF5", "MPEG", "WMF", "EPS"})
_MAX_16_BIT = 65535.0


def image_extensions() -> tuple[str, ...]:
    """The file extensions (lower case, with the dot) of every image format this Pillow reads, sorted.

    ImageFolder datasets load files with these extensions (case-insensitive) and skip, and report, every other file.
    """
    Image.init()
    return tuple(
        sorted(
            ext
            for ext, fmt in Image.registered_extensions().items()
            if fmt in Image.OPEN and fmt not in _UNDECODABLE_FORMATS
        )
    )


def load_rgb(path: str) -> Image.Image:
    """Opens an image file as 8-bit RGB; a multi-frame file (an animated GIF, a TIFF stack) gives its first frame.

    Pillow's own `convert("RGB")` clips 16-bit, 32-bit integer and float images at 255 (a 16-bit PNG comes out
    almost white), so those are scaled to 8 bits first: `I;16` images from 0..65535 to 0..255; `I` images as they
    are when their values lie in 0..255, from 0..65535 when they lie in that range, else from their own minimum and
    maximum; `F` images from 0..1 when their values lie in it, else from their own minimum and maximum.

    Raises:
        OSError: The file cannot be read or decoded (truncated, corrupt): `cannot read image <path>: <reason>`.
    """
    try:
        with Image.open(path) as image:
            image.seek(0)
            if image.mode.startswith("I;16") or image.mode in ("I", "F"):
                return Image.fromarray(_to_8_bit(image)).convert("RGB")
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # Pillow's messages ("image file is truncated (138 bytes not processed)") do not say which file.
        raise OSError(f"cannot read image {path}: {error}") from error


def _to_8_bit(image: Image.Image) -> np.ndarray:
    """The pixels of a single-band 16-bit, 32-bit integer or float image, scaled to uint8 (see `load_rgb`)."""
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and 255 < high <= _MAX_16_BIT):
        scaled = values * (255.0 / _MAX_16_BIT)
    elif image.mode == "I" and low >= 0 and high <= 255:
        scaled = values
    elif image.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@dataclass
class ClassificationData:
    """A train/val pair of datasets yielding (image tensor CxHxW, class index)."""

    train: Dataset
    val: Dataset
    classes: list[str]
    skipped: list[str] = field(default_factory=list)
    """Files in the class folders that were not loaded (not an image format Pillow reads), sorted."""


class TensorImageDataset(Dataset):
    """Images held in memory as one float tensor (N, C, H, W) in [0, 1], with an optional per-image transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: v2.Transform | None = None) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def check_dataset(config: DatasetConfig) -> int:
    """Checks that the dataset exists and has the ImageFolder layout, without loading any image.

    Each of train/ and val/ must hold class folders, the same ones, each with at least one image file (an
    extension `image_extensions()` lists, anywhere below it): torchvision's ImageFolder otherwise fails with a
    message that names neither the split nor the path. A symbolic link that leads a class folder back to a directory
    it already holds (`train/cat/again -> .`) is refused: ImageFolder follows links and would read its images again
    and again (or, with two such links, for ever). The trainer service runs this at StartTraining.

    Returns:
        The dataset's class count (a built-in dataset's known one).

    Raises:
        FileNotFoundError: The ImageFolder directory or its train/ or val/ subdirectory does not exist.
        ConfigError: A path that is a file, an unknown built-in name, a format
            the timm trainer does not read, a split without class
            folders or with a class folder without images, a symbolic link loop, or train/ and val/ with different
            classes.
    """
    fmt = config.resolved_format
    if fmt == "builtin":
        if config.name not in BUILTIN_DATASETS:
            raise ConfigError(
                f"dataset_config.name: unknown built-in dataset {config.name!r}; the timm trainer has "
                f"{list(BUILTIN_DATASETS)} (or give an ImageFolder `path`)"
            )
        return BUILTIN_CLASS_COUNTS[config.name]
    if fmt != "imagefolder":
        raise ConfigError(f"dataset_config.format: the timm trainer reads imagefolder or builtin, not {fmt!r}")
    root = Path(config.path)
    if not root.exists():
        raise FileNotFoundError(f"dataset_config.path: {config.path!r} does not exist")
    if not root.is_dir():
        raise ConfigError(
            f"dataset_config.path: {config.path!r} is a file, not a directory; the timm trainer reads an ImageFolder "
            "directory holding train/ and val/ (unpack an archive first)"
        )
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(  # NOT_FOUND: another trainer's host may have it
                f"dataset_config.path: {config.path!r} has no {split}/ directory (an ImageFolder dataset needs train/ "
                "and val/)"
            )
    train, val = (_class_folders(root / split) for split in ("train", "val"))
    if train != val:
        raise ConfigError(f"dataset {config.path!r}: train/ and val/ have different classes ({train} vs {val})")
    return len(train)


def _class_folders(split_dir: Path) -> list[str]:
    """The class folder names of one split, sorted as ImageFolder sorts them, once each is known to hold an image.

    Raises:
        ConfigError: No class folder, or class folders without an image file.
    """
    # ImageFolder's own rules: every subdirectory is a class (symbolic links followed), its images anywhere below.
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise ConfigError(
            f"dataset split {str(split_dir)!r} has no class folders: an ImageFolder split holds one folder per "
            "class, with that class's images in it (e.g. train/cat/1.jpg)"
        )
    extensions = image_extensions()
    empty = [name for name in classes if not _holds_image(split_dir / name, extensions)]
    if empty:
        shown = ", ".join(repr(name) for name in empty[:10]) + (
            f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        )
        raise ConfigError(
            f"dataset split {str(split_dir)!r}: the class folder(s) {shown} hold no image file; put at least one "
            "image in each class folder of train/ and of val/, or remove the class from both"
        )
    return classes


def _holds_image(folder: Path, extensions: tuple[str, ...]) -> bool:
    """Whether any file below `folder` has an image extension, walked as ImageFolder walks it (links followed).

    The whole folder is walked, not only up to the first image: a symbolic link loop anywhere below it would make
    ImageFolder read the same images many times over.

    Raises:
        ConfigError: A directory below `folder` is reached a second time (a symbolic link loop).
    """
    found = False
    for _, files in _walk_directories(folder):
        found = found or any(name.lower().endswith(extensions) for name in files)
    return found


def _walk_directories(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """Each directory below `folder` (itself included) with the names of its files, symbolic links followed, like
    `os.walk(followlinks=True)` (unreadable directories skipped), but each directory once.

    Raises:
        ConfigError: A directory is reached a second time, through a symbolic link (a loop such as `again -> .`,
            or two links to one directory): the path that reaches it again is named.
    """
    seen: dict[tuple[int, int], str] = {}
    pending = [str(folder)]
    while pending:
        path = pending.pop()
        try:
            status = os.stat(path)
        except OSError:
            continue
        key = (status.st_dev, status.st_ino)
        if key in seen:
            raise ConfigError(
                f"dataset class folder {str(folder)!r}: symlink loop at {path!r}: it leads to {seen[key]!r}, which "
                "the class folder already holds, so its images would be read again and again; remove the link"
            )
        seen[key] = path
        files: list[str] = []
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir():
                        pending.append(entry.path)
                    else:
                        files.append(entry.name)
        except OSError:
            continue
        yield path, files


def check_num_classes(model: ModelConfig, dataset: DatasetConfig, dataset_classes: int | None = None) -> None:
    """Checks that `model.num_classes` (0: the dataset's) leaves room for every class of the dataset.

    Args:
        model: The model config.
        dataset: The dataset config.
        dataset_classes: The dataset's class count; None: a built-in dataset's known count (an ImageFolder's is
            known only once it is read, so nothing is checked).

    Raises:
        ConfigError: Fewer classes than the dataset has.
    """
    if dataset_classes is None:
        if dataset.resolved_format != "builtin":
            return
        dataset_classes = BUILTIN_CLASS_COUNTS.get(dataset.name)
        if dataset_classes is None:
            return
    if model.num_classes and model.num_classes < dataset_classes:
        raise ConfigError(
            f"model_config.num_classes is {model.num_classes} but the dataset has {dataset_classes} classes"
        )


def load_classification_data(
    config: DatasetConfig,
    image_size: int,
    augmentation: Augmentation,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> ClassificationData:
    """Loads the dataset with training augmentation and normalisation applied.

    Args:
        config: The dataset.
        image_size: Square size the images are resized to.
        augmentation: Training augmentation; the validation data is never augmented.
        mean: Normalisation mean per channel.
        std: Normalisation standard deviation per channel.
    """
    check_dataset(config)
    train_augment = _augmentation_transforms(augmentation, image_size)
    normalize = v2.Normalize(mean=list(mean), std=list(std))
    if config.resolved_format == "builtin":
        return _load_digits(image_size, train_augment, normalize)
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    resize = v2.Resize((image_size, image_size), antialias=True)
    # RandomResizedCrop resizes itself; otherwise every training image is resized like the validation ones.
    sizing = [] if any(isinstance(t, v2.RandomResizedCrop) for t in train_augment) else [resize]
    extensions = image_extensions()
    skipped: list[str] = []

    def is_image(path: str) -> bool:
        if path.lower().endswith(extensions):
            return True
        skipped.append(path)
        return False

    def folder(split: str, transform: v2.Compose) -> tv_datasets.ImageFolder:
        return tv_datasets.ImageFolder(
            str(Path(config.path) / split), transform=transform, loader=load_rgb, is_valid_file=is_image
        )

    train = folder("train", v2.Compose([*to_tensor, *sizing, *train_augment, normalize]))
    val = folder("val", v2.Compose([*to_tensor, resize, normalize]))
    if train.classes != val.classes:  # changed on disk since check_dataset
        raise ConfigError(
            f"dataset {config.path!r}: train/ and val/ have different classes ({train.classes} vs {val.classes})"
        )
    return ClassificationData(train=train, val=val, classes=list(train.classes), skipped=sorted(skipped))


def _augmentation_transforms(augmentation: Augmentation, image_size: int) -> list[v2.Transform]:
    """Training transforms for the augmentation settings: none by default or when disabled."""
    if augmentation.enabled is False:
        return []
    flip = augmentation.horizontal_flip_probability
    scale = augmentation.scale
    if augmentation.enabled and flip is None and scale is None and augmentation.color_jitter is None:
        flip, scale = _DEFAULT_FLIP, _DEFAULT_SCALE
    transforms: list[v2.Transform] = []
    if scale is not None and scale < 1.0:
        transforms.append(v2.RandomResizedCrop(image_size, scale=(scale, 1.0), antialias=True))
    if flip:
        transforms.append(v2.RandomHorizontalFlip(p=flip))
    if augmentation.color_jitter:
        strength = augmentation.color_jitter
        transforms.append(v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength))
    return transforms


def _upscale_grey(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Grey images (N, 1, h, w) in [0, 1] upscaled bilinearly to (N, 3, image_size, image_size), still in [0, 1]."""
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.clamp(0.0, 1.0).repeat(1, 3, 1, 1)


class _UpscaleGrey:
    """Per-image `_upscale_grey`: (1, h, w) to (3, image_size, image_size). A class so loader workers can pickle it."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return _upscale_grey(image.unsqueeze(0), self.image_size)[0]


def _load_digits(image_size: int, train_augment: list[v2.Transform], normalize: v2.Normalize) -> ClassificationData:
    # Imported here: scikit-learn is only needed for the built-in dataset.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are 0..16; scale to [0, 1]. The grey channel is repeated for RGB models when upscaled.
    grey = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, val_idx = train_test_split(
        list(range(len(labels))), test_size=0.2, random_state=0, stratify=digits.target
    )
    classes = [str(name) for name in digits.target_names]
    upscaled_bytes = len(labels) * 3 * image_size * image_size * grey.element_size()
    if upscaled_bytes > DIGITS_PRECOMPUTE_MAX_BYTES:
        # Too large to hold: keep the 8x8 images and upscale each one when it is loaded, augmentation after it.
        upscale = _UpscaleGrey(image_size)
        train = TensorImageDataset(grey[train_idx], labels[train_idx], v2.Compose([upscale, *train_augment, normalize]))
        val = TensorImageDataset(grey[val_idx], labels[val_idx], v2.Compose([upscale, normalize]))
        return ClassificationData(train=train, val=val, classes=classes)
    images = _upscale_grey(grey, image_size)
    # Without augmentation the normalised tensors are computed once instead of per image per epoch.
    val_images = normalize(images[val_idx])
    if train_augment:
        train = TensorImageDataset(images[train_idx], labels[train_idx], v2.Compose([*train_augment, normalize]))
    else:
        train = TensorImageDataset(normalize(images[train_idx]), labels[train_idx])
    return ClassificationData(train=train, val=TensorImageDataset(val_images, labels[val_idx]), classes=classes)
