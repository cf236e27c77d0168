"""The timm adapter, training for real on real small data (scikit-learn's digits) on the CPU."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from PIL import Image
from recording import RecordingSink
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from torchvision.transforms import v2
from trainingplatform_sdk.spec.configs import AdvancedConfig, ConfigError, DatasetConfig, ModelConfig, TrainingConfig
from trainingplatform_sdk.training.adapter import Status
from trainingplatform_trainer_timm.adapter import TimmAdapter, lr_factor
from trainingplatform_trainer_timm.datasets import BUILTIN_CLASS_COUNTS, BUILTIN_DATASETS

EPOCH_KEYS = {
    "train/loss",
    "train/accuracy",
    "val/loss",
    "val/accuracy",
    "lr",
    "epoch_time_s",
    "train/images_per_s",
}
DIGITS_TRAIN_IMAGES = 1437
BATCH_SIZE = 64
STEPS_PER_EPOCH = math.ceil(DIGITS_TRAIN_IMAGES / BATCH_SIZE)  # 23


def make_adapter(tmp_path, sink, *, model="resnet10t", dataset=None, epochs=1, advanced=None, **training):
    return TimmAdapter(
        ModelConfig(name=model, image_size=32),
        dataset or DatasetConfig(name="digits"),
        TrainingConfig(epochs=epochs, **training),
        tmp_path / "out",
        "job-timm",
        logger=sink,
        advanced_config=AdvancedConfig.from_mapping(advanced or {}),
    )


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """resnet10t on digits at 32x32 for 3 epochs, batch loss every 5 steps, with one unknown advanced key."""
    tmp_path = tmp_path_factory.mktemp("digits")
    sink = RecordingSink()
    adapter = make_adapter(
        tmp_path, sink, epochs=3, batch_size=BATCH_SIZE, log_every_n_steps=5, advanced={"not_an_option": 1}
    )
    result = adapter.train()
    accuracies = [round(p.value, 4) for p in sink.series("val/accuracy")]
    times = [round(p.value, 2) for p in sink.series("epoch_time_s")]
    print(f"\ndigits resnet10t 32x32: val/accuracy per epoch {accuracies}, epoch_time_s {times}")
    return adapter, result, sink


def test_digits_reaches_90_percent_in_3_epochs(digits_run) -> None:
    _, result, sink = digits_run
    assert result.status == Status.COMPLETED and result.epochs_completed == 3
    assert sink.series("val/accuracy")[-1].value >= 0.9
    assert result.best_value >= 0.9


def test_every_epoch_reports_each_key_once_at_the_epoch_end_step(digits_run) -> None:
    _, _, sink = digits_run
    by_epoch = sink.keys_by_epoch()
    assert set(by_epoch) == {0, 1, 2}
    for keys in by_epoch.values():
        assert sorted(keys) == sorted(EPOCH_KEYS)
    assert [p.step for p in sink.series("val/loss")] == [STEPS_PER_EPOCH * e for e in (1, 2, 3)]
    assert all(math.isfinite(p.value) and p.value > 0 for p in sink.series("train/images_per_s"))
    # The default cosine schedule ends at 0 after the last step.
    lrs = [p.value for p in sink.series("lr")]
    assert lrs[0] > lrs[1] > lrs[2] == pytest.approx(0.0, abs=1e-9)


def test_batch_loss_every_n_steps_with_the_global_step(digits_run) -> None:
    _, _, sink = digits_run
    points = sink.series("train/batch_loss")
    assert [p.step for p in points] == list(range(5, 3 * STEPS_PER_EPOCH + 1, 5))
    assert [p.epoch for p in points] == [(p.step - 1) // STEPS_PER_EPOCH for p in points]
    assert all(math.isfinite(p.value) for p in points)


def test_epoch_summaries_match_the_reported_metrics(digits_run) -> None:
    _, _, sink = digits_run
    summaries = sink.summaries()
    assert [epoch for epoch, _, _ in summaries] == [0, 1, 2]
    for epoch, metrics, duration in summaries:
        assert set(metrics) == EPOCH_KEYS
        assert metrics["val/accuracy"] == sink.series("val/accuracy")[epoch].value
        assert duration > 0


def test_best_and_last_checkpoints_load_into_a_fresh_model(digits_run) -> None:
    adapter, result, sink = digits_run
    last = torch.load(result.last_checkpoint, weights_only=True)
    best = torch.load(result.best_checkpoint, weights_only=True)
    assert result.last_checkpoint == adapter.output_dir / "weights" / "last.pt"
    assert last["epoch"] == 2 and last["model_name"] == "resnet10t" and last["job_id"] == "job-timm"
    assert last["classes"] == [str(i) for i in range(10)] and last["image_size"] == 32
    accuracies = [p.value for p in sink.series("val/accuracy")]
    assert best["epoch"] == accuracies.index(max(accuracies)) == result.best_epoch
    assert best["metrics"]["val/accuracy"] == max(accuracies)
    model = timm.create_model("resnet10t", num_classes=10)
    model.load_state_dict(best["state_dict"])


def test_unknown_advanced_keys_are_warned_in_the_job_log(digits_run) -> None:
    _, _, sink = digits_run
    warnings = [m for m in sink.messages("WARNING") if "not_an_option" in m]
    assert len(warnings) == 1


def test_unknown_model_suggests_close_names(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet10x'; closest valid names: .*resnet10t"):
        make_adapter(tmp_path, RecordingSink(), model="resnet10x").train()


def test_missing_dataset_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dataset_config\.path: .*nowhere.* does not exist"):
        make_adapter(tmp_path, RecordingSink(), dataset=DatasetConfig(path=str(tmp_path / "nowhere"))).train()
    (tmp_path / "half" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"dataset_config\.path: .* has no val/ directory"):
        make_adapter(tmp_path, RecordingSink(), dataset=DatasetConfig(path=str(tmp_path / "half"))).train()
    with pytest.raises(ConfigError, match="unknown built-in dataset 'mnist'"):
        make_adapter(tmp_path, RecordingSink(), dataset=DatasetConfig(name="mnist")).train()


def test_builtin_class_counts_are_the_datasets_own() -> None:
    """The counts the service checks `num_classes` against at submit, before any dataset is loaded."""
    from sklearn.datasets import load_digits

    assert {"digits": len(load_digits().target_names)} == BUILTIN_CLASS_COUNTS
    assert set(BUILTIN_CLASS_COUNTS) == set(BUILTIN_DATASETS)


def test_bad_extra_option_type_is_rejected(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"advanced_config.extra.num_threads: expected a number, got 'two'"):
        make_adapter(tmp_path, RecordingSink(), advanced={"num_threads": "two"}).train()


@pytest.mark.parametrize("pretrained", [True, False], ids=["pretrained", "random"])
def test_an_unknown_pretrained_tag_fails_before_anything_is_loaded(tmp_path, pretrained) -> None:
    # Failed at build time with timm's "Invalid pretrained tag (bogus_tag) for resnet10t." (a RuntimeError).
    adapter = TimmAdapter(
        ModelConfig(name="resnet10t.bogus_tag", pretrained=pretrained, image_size=32),
        DatasetConfig(name="digits"),
        TrainingConfig(epochs=1),
        tmp_path / "out",
        "job-tag",
    )
    with pytest.raises(ConfigError, match=r"^model_config.name: 'bogus_tag' is not a pretrained tag of the timm "):
        adapter.check()


@pytest.mark.parametrize("optimizer", ["adahessian", "lookahead_adahessian"])
def test_a_second_order_optimizer_fails_before_the_first_step(tmp_path, tiny_imagefolder, optimizer) -> None:
    # Failed at the first step with "element 0 of tensors does not require grad and does not have a grad_fn".
    adapter = make_adapter(
        tmp_path, RecordingSink(), dataset=DatasetConfig(path=str(tiny_imagefolder)), advanced={"optimizer": optimizer}
    )
    with pytest.raises(ConfigError, match=rf"^advanced_config.optimizer: '{optimizer}' is a second-order optimizer"):
        adapter.train()
    assert adapter.global_step == 0


def test_another_frameworks_checkpoint_is_refused_naming_the_field(tmp_path) -> None:
    # torch's "Weights only load failed. This file can still be loaded ... if you trust the source" named no field.
    import argparse

    foreign = tmp_path / "other.pt"
    torch.save({"model": argparse.Namespace(layers=3)}, foreign)
    with pytest.raises(ConfigError) as caught:
        make_adapter(tmp_path, RecordingSink(), model=str(foreign)).train()
    assert str(caught.value) == (
        f"model_config.name: '{foreign}' is not a checkpoint of the timm trainer (saved by another framework?)"
    )


def test_pretrained_weights_missing_from_the_cache_fail_fast(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    adapter = TimmAdapter(
        ModelConfig(name="resnet10t", pretrained=True, image_size=32),
        DatasetConfig(name="digits"),
        TrainingConfig(epochs=1),
        tmp_path / "out",
        "job-pretrained",
    )
    with pytest.raises(ConfigError, match=r"pretrained weights of 'resnet10t' are not in the local cache"):
        adapter.train()


@pytest.fixture
def tiny_imagefolder(tmp_path):
    """An ImageFolder dataset of 2 classes (dark and bright squares), 10 train and 4 val images per class."""
    root = tmp_path / "images"
    for split, count in (("train", 10), ("val", 4)):
        for name, base in (("dark", 30), ("bright", 220)):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (20, 24), (base + i, base, base - i)).save(root / split / name / f"{i}.png")
    return root


def test_imagefolder_with_advanced_options_and_a_stop_request(tmp_path, tiny_imagefolder) -> None:
    sink = RecordingSink()
    adapter = make_adapter(
        tmp_path,
        sink,
        dataset=DatasetConfig(path=str(tiny_imagefolder)),
        epochs=3,
        batch_size=4,
        log_every_n_steps=1,
        advanced={
            "optimizer": "sgd",
            "momentum": 0.8,
            "weight_decay": 0.001,
            "lr_scheduler": "step",
            "warmup_epochs": 1,
            "mixed_precision": True,
            "seed": 3,
            "augmentation": {"horizontal_flip_probability": 0.5, "scale": 0.6, "color_jitter": 0.2},
            "extra": {"num_threads": 1, "label_smoothing": 0.1},
        },
    )
    # Stop after the second batch of epoch 1 (5 batches of 4 per epoch): a partial epoch.
    sink.on_metric = lambda p: adapter.request_stop() if p.key == "train/batch_loss" and p.step == 7 else None
    result = adapter.train()

    assert result.status == Status.CANCELLED and result.epochs_completed == 1
    assert adapter.classes == ["bright", "dark"]
    groups = adapter.optimizer.param_groups
    assert isinstance(adapter.optimizer, torch.optim.SGD)
    assert {g["momentum"] for g in groups} == {0.8}
    assert {g["weight_decay"] for g in groups} == {0.0, 0.001}  # timm exempts biases and norms from decay
    assert torch.get_num_threads() == 1
    assert adapter.criterion.label_smoothing == 0.1
    # One epoch of warm-up (5 steps) into the step schedule: epoch 0 ends at the full rate of 0.001.
    assert sink.series("lr")[0].value == pytest.approx(1e-3)
    assert sink.keys_by_epoch().keys() == {0}  # epoch 1 was cut short: not reported
    assert torch.load(result.last_checkpoint, weights_only=True)["global_step"] == 7
    assert sink.messages("WARNING") == ["mixed_precision is ignored on CPU: training in float32"]


def test_lr_schedules_with_warmup() -> None:
    assert [lr_factor(s, 10, 2, "constant") for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(2, 10, 2, "cosine") == 1.0 and lr_factor(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(0.5)
    assert [lr_factor(s, 9, 0, "step") for s in (0, 3, 6, 9)] == pytest.approx([1.0, 0.1, 0.01, 0.01])


def test_a_checkpoint_path_as_model_name_continues_from_its_weights(tmp_path, digits_run) -> None:
    _, first, _ = digits_run
    sink = RecordingSink()
    adapter = TimmAdapter(
        ModelConfig(name=str(first.best_checkpoint)),  # image size and architecture come from the checkpoint
        DatasetConfig(name="digits"),
        TrainingConfig(epochs=1, batch_size=BATCH_SIZE, log_every_n_steps=1),
        tmp_path / "out",
        "job-continue",
        logger=sink,
    )
    sink.on_metric = lambda p: adapter.request_stop() if p.key == "train/batch_loss" else None
    result = adapter.train()
    assert result.status == Status.CANCELLED
    assert (adapter.model_name, adapter.image_size) == ("resnet10t", 32)
    # Continuing from trained weights: the first batch's loss is far below an untrained model's ln(10) = 2.3.
    assert sink.series("train/batch_loss")[0].value < 0.5
    assert torch.load(result.last_checkpoint, weights_only=True)["model_name"] == "resnet10t"
    assert not sink.messages("WARNING")  # the same classes: the checkpoint's classifier is kept


def _square_images(root, per_class):
    for split in ("train", "val"):
        for name, base in (("dark", 30), ("bright", 220)):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20, 20), (base + i, base, base - i)).save(root / split / name / f"{i}.png")
    return root


def test_a_last_training_batch_of_one_image_is_dropped_with_a_log_line(tmp_path) -> None:
    # 12 images in batches of 11: the last batch would hold 1 image, whose 1x1 features batch norm cannot train on.
    sink = RecordingSink()
    adapter = make_adapter(
        tmp_path, sink, dataset=DatasetConfig(path=str(_square_images(tmp_path / "images", 6))), epochs=2, batch_size=11
    )
    result = adapter.train()
    assert result.status == Status.COMPLETED and result.epochs_completed == 2
    assert len(adapter.train_loader) == 1 and adapter.global_step == 2
    dropped = [m for m in sink.messages() if "last training batch" in m]
    assert dropped == [
        "The last training batch would hold 1 image (12 images, batch size 11): it is left out of each epoch, "
        "since batch norm cannot train on a batch of one"
    ]


def test_a_last_batch_of_two_images_is_kept(tmp_path) -> None:
    sink = RecordingSink()
    adapter = make_adapter(
        tmp_path, sink, dataset=DatasetConfig(path=str(_square_images(tmp_path / "images", 6))), batch_size=10
    )
    assert adapter.train().status == Status.COMPLETED
    assert len(adapter.train_loader) == 2
    assert not [m for m in sink.messages() if "last training batch" in m]


def test_batch_size_1_with_batch_norm_fails_at_the_first_step_with_a_clear_error(tmp_path) -> None:
    sink = RecordingSink()
    adapter = make_adapter(
        tmp_path, sink, dataset=DatasetConfig(path=str(_square_images(tmp_path / "images", 2))), batch_size=1
    )
    with pytest.raises(ConfigError, match=r"training_config.batch_size: resnet10t cannot train on a batch of 1 image"):
        adapter.train()
    assert adapter.global_step == 0


def _stop_after_first_batch(adapter: TimmAdapter, sink: RecordingSink) -> None:
    sink.on_metric = lambda p: adapter.request_stop() if p.key == "train/batch_loss" else None


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    """vit_tiny_patch16_224, a model built for 224x224 images, on digits at 32x32, stopped after its first step."""
    tmp_path = tmp_path_factory.mktemp("vit")
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink, model="vit_tiny_patch16_224", batch_size=16, log_every_n_steps=1)
    _stop_after_first_batch(adapter, sink)
    return adapter, adapter.train(), sink


def test_a_model_built_for_224_pixels_trains_at_the_image_size(vit_run) -> None:
    # It failed at its first step: "AssertionError: Input height (32) doesn't match model (224)".
    adapter, result, sink = vit_run
    assert result.status == Status.CANCELLED
    losses = sink.series("train/batch_loss")
    assert [p.step for p in losses] == [1] and math.isfinite(losses[0].value)
    assert adapter.model.patch_embed.img_size == (32, 32)


def test_a_fixed_size_checkpoint_continues_at_another_image_size(tmp_path, vit_run) -> None:
    _, first, _ = vit_run
    sink = RecordingSink()
    adapter = TimmAdapter(
        ModelConfig(name=str(first.last_checkpoint), image_size=48),
        DatasetConfig(name="digits"),
        TrainingConfig(epochs=1, batch_size=16, log_every_n_steps=1),
        tmp_path / "out",
        "job-vit-48",
        logger=sink,
    )
    _stop_after_first_batch(adapter, sink)
    assert adapter.train().status == Status.CANCELLED
    assert adapter.model.patch_embed.img_size == (48, 48)
    assert adapter.model.pos_embed.shape[1] == 1 + 3 * 3  # the class token and 3x3 patches of 16 pixels
    assert len(sink.series("train/batch_loss")) == 1


def test_a_fixed_size_checkpoint_of_a_model_that_cannot_change_its_size_is_refused(tmp_path) -> None:
    path = tmp_path / "mixer.pt"
    model = timm.create_model("mixer_s32_224", num_classes=2, img_size=64)
    torch.save(
        {
            "model_name": "mixer_s32_224",
            "num_classes": 2,
            "classes": ["a", "b"],
            "image_size": 64,
            "state_dict": model.state_dict(),
        },
        path,
    )
    adapter = make_adapter(tmp_path, RecordingSink(), model=str(path))  # at image size 32
    with pytest.raises(
        ConfigError,
        match=r"model_config.image_size: the checkpoint .*mixer.pt' was trained at 64x64 "
        r"and mixer_s32_224 cannot change its input size; use image_size 64",
    ):
        adapter.train()


def test_a_model_that_ignores_the_image_size_is_refused_before_training(tmp_path) -> None:
    # efficientformer_l1 takes `img_size` and ignores it: built for 224x224 whatever the size, it failed at its
    # first step ("The size of tensor a (4) must match the size of tensor b (49)").
    adapter = make_adapter(tmp_path, RecordingSink(), model="efficientformer_l1")  # at image size 32
    adapter.build_data()
    with pytest.raises(
        ConfigError,
        match=r"^model_config.image_size: efficientformer_l1 cannot take 32x32 images: timm builds it for its "
        r"pretrained input size whatever the image size \(a forward pass at 32x32 fails: RuntimeError: .*\); "
        r"use image_size 224$",
    ):
        adapter.build_model()
    # swiftformer_xs ignores `img_size` too, but takes any input size: it trains at the image size.
    adapter = make_adapter(tmp_path, RecordingSink(), model="swiftformer_xs")
    adapter.build_data()
    adapter.build_model()
    assert adapter.model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("model", "mean", "std"),
    [
        ("vit_tiny_patch16_224", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ("vit_base_patch16_clip_224.openai", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
        ("resnet10t", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ],
)
def test_images_are_normalised_with_the_models_pretrained_mean_and_std(
    tmp_path, tiny_imagefolder, model, mean, std
) -> None:
    # Every model was normalised with ImageNet's mean and std, whatever its pretrained weights were trained with.
    adapter = make_adapter(tmp_path, RecordingSink(), model=model, dataset=DatasetConfig(path=str(tiny_imagefolder)))
    adapter.build_data()
    for loader in (adapter.train_loader, adapter.val_loader):
        (normalize,) = [t for t in loader.dataset.transform.transforms if isinstance(t, v2.Normalize)]
        assert tuple(normalize.mean) == pytest.approx(mean) and tuple(normalize.std) == pytest.approx(std)


def test_checkpoints_keep_their_normalisation_for_the_next_job(tmp_path, vit_run) -> None:
    _, first, _ = vit_run
    checkpoint = torch.load(first.last_checkpoint, weights_only=True)
    assert checkpoint["mean"] == [0.5, 0.5, 0.5] and checkpoint["std"] == [0.5, 0.5, 0.5]
    adapter = make_adapter(tmp_path, RecordingSink(), model=str(first.last_checkpoint))
    adapter.build_data()
    assert (adapter.mean, adapter.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    # One written before they were stored was trained with ImageNet's.
    del checkpoint["mean"], checkpoint["std"]
    torch.save(checkpoint, tmp_path / "older.pt")
    adapter = make_adapter(tmp_path, RecordingSink(), model=str(tmp_path / "older.pt"))
    adapter.build_data()
    assert adapter.mean == pytest.approx(IMAGENET_DEFAULT_MEAN) and adapter.std == pytest.approx(IMAGENET_DEFAULT_STD)


def test_a_checkpoint_fine_tuned_on_other_classes_gets_a_new_classifier(tmp_path, tiny_imagefolder, digits_run) -> None:
    # A checkpoint of 10 digit classes on a dataset of 2 failed with "size mismatch for fc.weight".
    _, first, _ = digits_run
    saved = torch.load(first.best_checkpoint, weights_only=True)
    sink = RecordingSink()
    adapter = make_adapter(
        tmp_path, sink, model=str(first.best_checkpoint), dataset=DatasetConfig(path=str(tiny_imagefolder))
    )
    adapter.build_data()
    adapter.build_model()
    assert adapter.model.fc.out_features == 2 and adapter.num_classes == 2
    weights = adapter.model.state_dict()
    assert torch.equal(weights["conv1.0.weight"], saved["state_dict"]["conv1.0.weight"])  # the rest is kept
    assert sink.messages("WARNING") == [
        f"The checkpoint {str(first.best_checkpoint)!r} was trained on 10 classes (0, 1, 2, 3, 4, ...), the dataset "
        "has 2 classes (bright, dark): its classifier is replaced by a new one with 2 outputs, trained from scratch; "
        "the rest of the model keeps the checkpoint's weights"
    ]
    adapter.fit()
    assert adapter.global_step > 0


def test_a_checkpoint_of_other_class_names_gets_a_new_classifier_not_a_silent_remapping(tmp_path, digits_run) -> None:
    # The same count with other names: class "a"'s output would have become digit 0's.
    _, first, _ = digits_run
    saved = torch.load(first.best_checkpoint, weights_only=True)
    saved["classes"] = list("abcdefghij")
    torch.save(saved, tmp_path / "letters.pt")
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink, model=str(tmp_path / "letters.pt"))
    adapter.build_data()
    adapter.build_model()
    assert not torch.equal(adapter.model.fc.weight.detach(), saved["state_dict"]["fc.weight"])
    assert adapter.model.fc.out_features == 10
    assert [m for m in sink.messages("WARNING") if "trained on 10 classes (a, b, c, d, e, ...)" in m]


@pytest.mark.parametrize(("optimizer", "ignored"), [("adamw", True), ("sgd", False)])
def test_a_momentum_the_optimizer_has_no_use_for_is_named_in_the_job_log(tmp_path, optimizer, ignored) -> None:
    # timm's adamw (the default) takes `momentum=` and drops it without a word: the job trained without it.
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink, advanced={"optimizer": optimizer, "momentum": 0.8})
    adapter.build_data()
    adapter.build_model()
    warnings = [message for message in sink.messages("WARNING") if "momentum" in message]
    if ignored:
        assert warnings == [
            "advanced_config.momentum 0.8 is ignored: timm's adamw has no momentum (it uses betas (0.9, 0.999)); "
            "give an SGD-style advanced_config.optimizer (sgd, momentum, rmsprop) to use it"
        ]
    else:
        assert warnings == [] and adapter.optimizer.param_groups[0]["momentum"] == 0.8
