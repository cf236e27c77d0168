"""Adapters for the DDP tests, resolved by `tp-train --framework ddp_adapters:Class` (tests/ddp is on PYTHONPATH)."""

from __future__ import annotations

from trainingplatform_sdk.spec.configs import MetricsResult
from trainingplatform_trainer_timm.adapter import TimmAdapter


class Rank1FailsAdapter(TimmAdapter):
    """The timm adapter, except that rank 1 raises as its first epoch starts while rank 0 trains on."""

    def train_epoch(self, epoch: int) -> MetricsResult:
        if self.distributed is not None and self.distributed.rank == 1:
            raise RuntimeError("rank 1 broke on purpose")
        return super().train_epoch(epoch)
