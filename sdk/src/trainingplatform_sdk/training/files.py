"""Storing a local file at another local path: a hard link for checkpoints where one can be made, a copy
otherwise; written under a temporary name and renamed, so a reader never sees half a file.

Both local stores use it: the job's artifacts (`<data dir>/artifacts`) and a local MLflow store's artifacts
(`<data dir>/mlartifacts`). A checkpoint then exists once on disk however many of them hold it, and every path
stays valid when another is deleted (`tp gc`, or MLflow's own garbage collection).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: Files stored as hard links where possible: written once, when training ended, and never rewritten in place.
CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".safetensors", ".bin", ".onnx"})


def is_checkpoint(path: Path) -> bool:
    """True for a file stored by hard link rather than copied (CHECKPOINT_SUFFIXES)."""
    return path.suffix.lower() in CHECKPOINT_SUFFIXES


def store_file(source: Path, target: Path) -> bool:
    """Places `source` at `target` (replacing it): a hard link for a checkpoint on the same file system, else a
    copy. Returns True when it linked.

    Raises:
        OSError: The file could be neither linked nor copied.
    """
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)
    linked = False
    if is_checkpoint(source):
        try:
            os.link(source, partial)
            linked = True
        except OSError:  # another file system, or links not allowed: copy
            linked = False
    try:
        if not linked:
            shutil.copyfile(source, partial)
        os.replace(partial, target)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
    return linked
