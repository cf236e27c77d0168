"""A checkpoint that cannot be written (a full disk) leaves no half-written `*.partial` file behind: the disk would
stay full and every later job on the trainer would fail too."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from recording import RecordingSink
from trainingplatform_sdk.spec.configs import AdvancedConfig, DatasetConfig, ModelConfig, TrainingConfig
from trainingplatform_trainer_timm import adapter as timm_adapter
from trainingplatform_trainer_timm.adapter import TimmAdapter


def built_adapter(tmp_path: Path) -> TimmAdapter:
    adapter = TimmAdapter(
        ModelConfig(name="resnet10t", image_size=32),
        DatasetConfig(name="digits"),
        TrainingConfig(epochs=1, device="cpu"),
        tmp_path / "out",
        "job-disk-full",
        logger=RecordingSink(),
        advanced_config=AdvancedConfig(),
    )
    adapter.build_data()
    adapter.build_model()
    return adapter


def fill_then_fail(source: object, target: object, *args: object, **kwargs: object) -> None:
    """Writes part of the file, then fails as a full disk does."""
    Path(str(target)).write_bytes(b"\0" * 4096)
    raise OSError(errno.ENOSPC, "No space left on device", str(target))


def test_a_last_checkpoint_that_does_not_fit_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    adapter = built_adapter(tmp_path)
    monkeypatch.setattr(timm_adapter.torch, "save", fill_then_fail)
    with pytest.raises(OSError, match="No space left"):
        adapter.save_checkpoint(0, is_best=True)
    assert sorted(p.name for p in adapter.checkpoint_dir.iterdir()) == []


def test_a_best_checkpoint_that_does_not_fit_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    adapter = built_adapter(tmp_path)
    monkeypatch.setattr(timm_adapter.shutil, "copyfile", fill_then_fail)
    with pytest.raises(OSError, match="No space left"):
        adapter.save_checkpoint(0, is_best=True)
    assert sorted(p.name for p in adapter.checkpoint_dir.iterdir()) == ["last.pt"]
    assert torch.load(adapter.last_checkpoint_path, weights_only=False)["epoch"] == 0
