"""The old Platform SDK guide's `train.py`, as its users wrote it: only the import line is changed.

docs/migrating.md shows it side by side with the port to an adapter. tests/sdk/test_old_sdk_calls.py runs it as a
subprocess against a real backend (BACKEND_API_URL and JOB_TELEMETRY_TOKEN in its environment), and
tests/e2e/test_tp_run.py runs it under `tp run`.

    python old_style_train.py --job-id JOB [--epochs N] [--fail-at-epoch N]
"""

import argparse
import os

import torch
from torch import nn
from trainingplatform_sdk import TrainingLogger  # the one changed line (the old SDK's package name)


def parse_args():
    parser = argparse.ArgumentParser(description="Train a small classifier on the platform")
    parser.add_argument("--job-id", default=os.environ.get("JOB_ID"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--fail-at-epoch", type=int, default=-1)
    return parser.parse_args()


def make_data(seed):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, 4, generator=generator)
    targets = (inputs.sum(dim=1) > 0).long()
    return inputs, targets


def train(args, logger):
    name = "tiny-mlp"
    logger.log_message(f"Starting training: {name}", level="INFO")
    logger.update_status("running")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    criterion = nn.CrossEntropyLoss()
    train_x, train_y = make_data(1)
    val_x, val_y = make_data(2)

    for epoch in range(args.epochs):
        if epoch == args.fail_at_epoch:
            raise RuntimeError(f"loss diverged at epoch {epoch}")
        model.train()
        total = 0.0
        for batch_idx in range(4):
            x = train_x[batch_idx * 16 : (batch_idx + 1) * 16]
            y = train_y[batch_idx * 16 : (batch_idx + 1) * 16]
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
            logger.log_metric("batch_loss", loss.item(), epoch=epoch, step=batch_idx)
        model.eval()
        with torch.no_grad():
            val_out = model(val_x)
            val_loss = criterion(val_out, val_y).item()
            val_acc = (val_out.argmax(dim=1) == val_y).float().mean().item()
        train_loss = total / 4
        logger.log_message(
            f"Epoch {epoch}: train_loss={train_loss:.4f} val_loss={val_loss:.4f} val_acc={val_acc:.3f}",
            level="INFO",
            epoch=epoch,
        )
        logger.log_epoch_summary(epoch, train_loss=train_loss, val_loss=val_loss, val_accuracy=val_acc)


def main():
    args = parse_args()
    logger = TrainingLogger(job_id=args.job_id, enabled=True)  # enabled when the env vars are set
    try:
        train(args, logger)
        logger.update_status("completed")
        print("training finished")
    except Exception as e:
        logger.log_message(f"Training failed: {e}", level="ERROR")
        logger.update_status("failed", error=str(e))
        raise


if __name__ == "__main__":
    main()
