"""The timm trainer's ImageFolder loading: odd image modes and extensions, read as Pillow reads them."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from recording import RecordingSink
from trainingplatform_sdk.spec.configs import Augmentation, DatasetConfig, ModelConfig, TrainingConfig
from trainingplatform_sdk.training.adapter import Status
from trainingplatform_trainer_timm import datasets as timm_datasets
from trainingplatform_trainer_timm.adapter import TimmAdapter
from trainingplatform_trainer_timm.datasets import load_classification_data, load_rgb

# A gradient of 16-bit values, as a 16-bit PNG scanner or microscope writes them.
GRADIENT_16 = np.linspace(91, 65528, 40 * 30).reshape(40, 30).astype(np.uint16)


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_white(tmp_path) -> None:
    path = tmp_path / "sixteen.png"
    Image.fromarray(GRADIENT_16).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = load_rgb(str(path))
    assert rgb.mode == "RGB" and rgb.size == (30, 40)
    pixels = _rgb(rgb)
    expected = GRADIENT_16.astype(np.float64) * 255 / 65535
    assert np.abs(pixels[..., 0] - expected).max() <= 1.0
    assert (pixels == 255).mean() < 0.01  # Pillow's own convert("RGB") makes 99.6 % of them 255


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I", np.array([[0, 32768, 65535]], dtype=np.int32), [0, 128, 255]),  # 16-bit range held as 32-bit
        ("I", np.array([[0, 100, 255]], dtype=np.int32), [0, 100, 255]),  # already 8-bit values
        ("I", np.array([[0, 2**30, 2**31 - 1]], dtype=np.int32), [0, 128, 255]),  # beyond 16 bits: its own range
        ("F", np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [0, 128, 255]),  # a float image in [0, 1]
        ("F", np.array([[-2.0, 0.0, 2.0]], dtype=np.float32), [0, 128, 255]),  # any other range: stretched
    ],
)
def test_32_bit_integer_and_float_images_are_scaled_to_8_bits(tmp_path, mode, values, expected) -> None:
    path = tmp_path / "image.tiff"
    Image.fromarray(values, mode).save(path)
    assert Image.open(path).mode == mode
    assert _rgb(load_rgb(str(path)))[0, :, 1].round().tolist() == expected


def _folder(root, names_per_class):
    for split in ("train", "val"):
        for cls, names in names_per_class.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (16, 16), (40 * i, 100, 200)).save(root / split / cls / f"{i}.png")
            for name in names:
                (root / split / cls / name).write_bytes((root.parent / name).read_bytes())


def test_gif_and_every_extension_pillow_reads_are_loaded_and_other_files_are_reported(tmp_path) -> None:
    frames = [Image.new("P", (12, 10), color) for color in (5, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(GRADIENT_16).save(tmp_path / "deep.tif")
    (tmp_path / "notes.txt").write_text("not an image")
    root = tmp_path / "data"
    _folder(root, {"a": ["anim.gif", "notes.txt"], "b": ["deep.tif"]})

    data = load_classification_data(
        DatasetConfig(path=str(root)), 16, Augmentation(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    assert len(data.train) == len(data.val) == 3 + 1 + 3 + 1  # the gif and the tiff count
    paths = [path for path, _ in data.train.samples]
    image, _ = data.train[paths.index(str(root / "train" / "a" / "anim.gif"))]
    assert image.shape == (3, 16, 16)
    first_frame = torch.tensor(Image.open(tmp_path / "anim.gif").convert("RGB").getpixel((0, 0))) / 255
    assert torch.allclose(image[:, 0, 0], first_frame, atol=1e-6)
    assert data.skipped == [str(root / "train" / "a" / "notes.txt"), str(root / "val" / "a" / "notes.txt")]


def test_the_job_log_says_how_many_files_were_skipped_and_why(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 8)
    root = tmp_path / "data"
    _folder(root, {"a": ["notes.txt", "clip.mp4"], "b": []})
    sink = RecordingSink()
    adapter = TimmAdapter(
        ModelConfig(name="resnet10t", image_size=16),
        DatasetConfig(path=str(root)),
        TrainingConfig(epochs=1, batch_size=3),
        tmp_path / "out",
        "job-skip",
        logger=sink,
    )
    assert adapter.train().status == Status.COMPLETED
    warnings = [m for m in sink.messages("WARNING") if "skipped" in m]
    assert len(warnings) == 1
    assert "4 files skipped" in warnings[0] and "not an image format Pillow reads" in warnings[0]
    assert "train/a/notes.txt" in warnings[0] and "val/a/clip.mp4" in warnings[0]


def _truncated_jpeg(path) -> None:
    """A JPEG cut off halfway, as an interrupted copy leaves it: Pillow opens it and fails decoding it."""
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_image_is_an_error_naming_its_file(tmp_path) -> None:
    path = tmp_path / "cut.jpg"
    _truncated_jpeg(path)
    with pytest.raises(OSError, match=rf"^cannot read image {path}: image file is truncated"):
        load_rgb(str(path))


def test_a_truncated_image_read_in_a_loader_worker_fails_the_job_naming_the_file(tmp_path) -> None:
    # With num_workers=1 the job's error was torch's "Caught OSError in DataLoader worker process 0.\nOriginal
    # Traceback ...", ending in Pillow's "image file is truncated (... bytes not processed)", naming no file.
    from trainingplatform_sdk.training import train

    root = tmp_path / "images"
    _folder(root, {"a": [], "b": []})
    broken = root / "train" / "b" / "broken.jpg"
    _truncated_jpeg(broken)
    sink = RecordingSink()
    code = _run_on(root, tmp_path, sink, image_size=32, batch_size=7, num_workers=1)
    assert code == train.EXIT_FAILED
    _, error, detail, _ = sink.status_calls()[-1]
    assert error is not None and detail is not None
    assert error.startswith(f"OSError: cannot read image {broken}: image file is truncated"), error
    assert "\n" not in error and "Traceback" not in error and "DataLoader worker" not in error
    assert "Traceback" in detail and "DataLoader worker process 0" in detail and str(broken) in detail


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_class_folder_fails_the_job_naming_the_split_and_the_folder(tmp_path, split) -> None:
    # The job failed with torchvision's "FileNotFoundError: Found no valid file for the classes b. Supported
    # extensions are: ...", which named neither the split nor the data set.
    from trainingplatform_sdk.training import train

    root = tmp_path / "images"
    _folder(root, {"a": [], "b": [], "c": []})
    for cls in ("b", "c"):
        for image in (root / split / cls).iterdir():
            image.unlink()
    (root / split / "c" / "readme.txt").write_text("not an image")
    sink = RecordingSink()
    code = _run_on(root, tmp_path, sink, image_size=16, batch_size=4)
    assert code == train.EXIT_FAILED
    error = sink.status_calls()[-1][1]
    assert error == (
        f"ConfigError: dataset split '{root / split}': the class folder(s) 'b', 'c' hold no image file; put at "
        "least one image in each class folder of train/ and of val/, or remove the class from both"
    )


def test_a_split_without_class_folders_is_an_error_naming_it(tmp_path) -> None:
    # Images straight in train/ and val/: torchvision said "Couldn't find any class folder in .../train."
    from trainingplatform_sdk.spec.configs import ConfigError
    from trainingplatform_trainer_timm.datasets import check_dataset

    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / split / "x.png")
    with pytest.raises(ConfigError, match=rf"^dataset split '{tmp_path / 'train'}' has no class folders: .*train/cat"):
        check_dataset(DatasetConfig(path=str(tmp_path)))


def test_images_in_nested_folders_of_a_class_count(tmp_path) -> None:
    # ImageFolder reads a class's images anywhere below its folder: such a class is not empty.
    root = tmp_path / "data"
    _folder(root, {"a": [], "b": []})
    for split in ("train", "val"):
        (root / split / "b" / "more").mkdir()
        for image in list((root / split / "b").glob("*.png")):
            image.rename(root / split / "b" / "more" / image.name)
    data = load_classification_data(
        DatasetConfig(path=str(root)), 16, Augmentation(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    assert data.classes == ["a", "b"] and len(data.train) == 6


def test_a_symlink_loop_in_a_class_folder_fails_the_job_before_any_image_is_read(tmp_path) -> None:
    # ImageFolder follows links: with `train/a/again -> .` it counted each image of class a ~41 times, and the job
    # trained on that and COMPLETED.
    from trainingplatform_sdk.spec.configs import ConfigError
    from trainingplatform_sdk.training import train

    root = tmp_path / "images"
    _folder(root, {"a": [], "b": []})
    link = root / "train" / "a" / "again"
    link.symlink_to(".")
    message = f"dataset class folder '{root / 'train' / 'a'}': symlink loop at '{link}': it leads to"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        load_classification_data(
            DatasetConfig(path=str(root)), 16, Augmentation(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
        )
    sink = RecordingSink()
    assert _run_on(root, tmp_path, sink, image_size=16, batch_size=4) == train.EXIT_FAILED
    assert sink.status_calls()[-1][1].startswith(f"ConfigError: {message}")


def _run_on(root, tmp_path, sink, *, image_size, **training) -> int:
    """`tp-train`'s run_job of one CPU epoch of resnet10t on the ImageFolder at `root`; returns its exit code."""
    from trainingplatform_sdk.training import train

    return train.run_job(
        job_id="job-timm-datasets",
        framework="timm",
        model_config={"name": "resnet10t", "image_size": image_size},
        dataset_config={"path": str(root)},
        training_config={"epochs": 1, "device": "cpu", **training},
        advanced_config={},
        output_dir=tmp_path / "out",
        logger=sink,
    )


def _digits(image_size: int, augmentation: Augmentation):
    return load_classification_data(
        DatasetConfig(name="digits"), image_size, augmentation, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)
    )


@pytest.mark.parametrize(
    "augmentation",
    [Augmentation(), Augmentation(enabled=True, horizontal_flip_probability=0.5, scale=0.5, color_jitter=0.3)],
)
def test_digits_too_large_to_upscale_in_memory_are_upscaled_per_image_with_the_same_pixels(
    monkeypatch, augmentation
) -> None:
    precomputed = _digits(24, augmentation)
    assert precomputed.train.images.shape[-2:] == (24, 24)  # 1797 x 3 x 24 x 24 x 4 bytes: under the threshold
    # Lowered so that 24 px counts as too large, like 128 px and more does with the real threshold.
    monkeypatch.setattr(timm_datasets, "DIGITS_PRECOMPUTE_MAX_BYTES", 1797 * 3 * 24 * 24 * 4 - 1)
    lazy = _digits(24, augmentation)
    assert lazy.classes == precomputed.classes
    for split in ("train", "val"):
        held, reference = getattr(lazy, split), getattr(precomputed, split)
        assert held.images.shape[-2:] == (8, 8)  # only the original images are held, not the upscaled ones
        assert len(held) == len(reference)
        for index in (0, 7, len(held) - 1):
            torch.manual_seed(index)  # the same random augmentation for both
            image, label = held[index]
            torch.manual_seed(index)
            expected, expected_label = reference[index]
            assert image.shape == expected.shape == (3, 24, 24)
            assert label == expected_label
            assert torch.allclose(image, expected, atol=1e-6)
