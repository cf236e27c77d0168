"""Make ultralytics work fully offline and keep it out of the user's home and the working directory.

Call `prepare_offline()` before anything imports `ultralytics`: its configuration directory, settings file and
thread defaults are read once, at import. Out of the box, on a machine without internet, ultralytics

- downloads Arial.ttf for its plots (even with plots=False) and tries to install missing packages;
- writes its settings to ~/.config/Ultralytics and would sync anonymous usage events;
- turns on its own MLflow autologging, which joins or starts a run in `sqlite:///<cwd>/mlflow.db`: a second
  MLflow run beside the platform's own;
- sets OMP_NUM_THREADS=1 when it is unset, and resets torch to `cpu_count - 1` threads (1 on 2 cores) on CPU;
- with amp on (its default) on CUDA, checks AMP by running yolo26n.pt from its weights directory (by default
  `weights/` in the working directory), downloading it from GitHub when it is not there;
- writes its label caches (`labels/train.cache`, `labels/val.cache`) into the data set's own directory, which
  jobs on the same data set then rewrite under each other, and which a read-only data set mount refuses.

This module turns all of that off, and keeps the label caches under the run's configuration directory
(`label_caches/`). It imports ultralytics itself, after setting the environment.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = ["INTEGRATIONS", "check_amp", "label_cache_path", "prepare_offline", "set_threads"]

#: Ultralytics' experiment-tracker integrations, all disabled: the platform tracks runs itself.
INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
#: GPUs ultralytics' own check_amp turns AMP off for (NaN losses or zero mAP with AMP), its pattern, copied from
#: ultralytics 8.4.190 (ultralytics/utils/checks.py, check_amp): compare it there when upgrading ultralytics.
_AMP_BROKEN_GPUS = re.compile(
    r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)", re.IGNORECASE
)
#: Where the label caches of the run that prepared ultralytics last go (`prepare_offline`); None: not prepared.
_label_cache_dir: Path | None = None


def prepare_offline(config_dir: str | Path, num_threads: int) -> Path:
    """Configures the environment and ultralytics' settings for offline use, then imports ultralytics.

    Args:
        config_dir: Ultralytics' configuration directory (settings, font) when YOLO_CONFIG_DIR is not already set.
            A process that imported ultralytics before keeps the directory it imported with.
        num_threads: CPU threads for torch and OpenMP.

    Returns:
        The configuration directory ultralytics uses.
    """
    if "ultralytics" not in sys.modules:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(config_dir).resolve()))
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "false"
        # Otherwise `import ultralytics` sets 1, which halves torch's speed on 2 cores in this process.
        os.environ.setdefault("OMP_NUM_THREADS", str(num_threads))
        os.environ.setdefault("MPLCONFIGDIR", str(Path(os.environ["YOLO_CONFIG_DIR"]) / "matplotlib"))
    import matplotlib
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    # check_font() looks in USER_CONFIG_DIR first: any TTF there stops the download. matplotlib ships DejaVuSans.
    font = USER_CONFIG_DIR / "Arial.ttf"
    if not font.exists():
        USER_CONFIG_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    # Weights ultralytics would look up or fetch by name stay under the run's directory (nothing is downloaded:
    # check_amp below was the one download left on a model yaml).
    weights_dir = str((Path(config_dir) / "weights").resolve())
    wanted = {"sync": False, "weights_dir": weights_dir, **dict.fromkeys(INTEGRATIONS, False)}
    if any(SETTINGS.get(key) != value for key, value in wanted.items()):
        SETTINGS.update(wanted)
    import ultralytics.utils
    from ultralytics.engine import trainer

    ultralytics.utils.WEIGHTS_DIR = Path(weights_dir)  # read at import from SETTINGS: set it too
    trainer.check_amp = check_amp  # the trainer calls the name it imported
    global _label_cache_dir
    _label_cache_dir = (Path(config_dir) / "label_caches").resolve()
    from ultralytics.data import dataset

    # The datasets call the names they imported: every *.cache they read or write goes to the run's directory.
    dataset.load_dataset_cache_file = _load_label_cache
    dataset.save_dataset_cache_file = _save_label_cache
    set_threads(num_threads)
    return USER_CONFIG_DIR.parent


def label_cache_path(path: str | Path) -> Path:
    """Where the label cache ultralytics would keep at `path` (beside the data set's labels) goes instead: under
    the configuration directory of the run that called `prepare_offline` last, named after the cache's absolute
    path, so that the caches of two label folders never collide."""
    if _label_cache_dir is None:
        raise RuntimeError("prepare_offline() has not run")
    absolute = Path(path).absolute()
    digest = hashlib.sha256(str(absolute.parent).encode()).hexdigest()[:16]
    return _label_cache_dir / f"{absolute.parent.name}-{digest}-{absolute.name}"


def _load_label_cache(path: Path) -> dict[str, Any]:
    from ultralytics.data import utils

    return utils.load_dataset_cache_file(label_cache_path(path))


def _save_label_cache(prefix: str, path: Path, x: dict[str, Any], version: str) -> None:
    from ultralytics.data import utils

    target = label_cache_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    utils.save_dataset_cache_file(prefix, target, x, version)


def check_amp(model: Any) -> bool:
    """The platform's replacement of ultralytics' `check_amp`, which never downloads: whether to train with AMP.

    Ultralytics' own compares FP32 and AMP detections of yolo26n.pt, downloading it from GitHub when it is not in
    its weights directory (trainers never download; on a host without internet the attempt only costs time). This
    keeps its other decisions, without the model comparison: no AMP on the CPU or MPS, none on the GPUs
    ultralytics knows AMP breaks on (`_AMP_BROKEN_GPUS`, with the same warning), AMP on any other device. A job
    whose losses turn NaN with AMP sets `advanced_config.mixed_precision` to false.
    """
    import torch
    from ultralytics.utils import LOGGER

    device = next(model.parameters()).device
    if device.type in {"cpu", "mps"}:
        return False
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        if _AMP_BROKEN_GPUS.search(gpu):
            LOGGER.warning(
                f"AMP: AMP training on {gpu} may cause NaN losses or zero-mAP results, so AMP is off for this training"
            )
            return False
    return True


def set_threads(num_threads: int) -> None:
    """Sets torch's CPU threads, and the count ultralytics resets them to when it selects the CPU."""
    import torch
    from ultralytics.utils import torch_utils

    torch.set_num_threads(num_threads)
    # select_device() calls torch.set_num_threads(NUM_THREADS) on CPU, with NUM_THREADS = cpu_count - 1.
    torch_utils.NUM_THREADS = num_threads
