"""A real PyTorch training loop on the CPU, wrapped in ``TrainingRun`` the way the README shows.

    python -m tests.e2e.trainers.torch_loop WEIGHTS_DIR --epochs 50 [--raise-at 3] [--sleep 0.3] [--no-staging]
                                           [--graceful-sigterm]

Prints "epoch N val_loss V best=B" after saving each epoch, so a test can signal it mid-training.
``--no-staging`` runs the same loop without ckpt: the baseline the exit status is compared with.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn

from ckpt.contract.manifest import Metric
from ckpt.trainer.tracking import EpochTracker
from ckpt.trainer.training import TrainingRun


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("weights_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--raise-at", type=int, default=None)
    parser.add_argument("--sleep", type=float, default=0.3)
    parser.add_argument("--project-id", type=int, default=7)
    parser.add_argument("--job-id", type=int, default=42)
    parser.add_argument("--no-staging", action="store_true")
    parser.add_argument("--graceful-sigterm", action="store_true", help="the program's own handler: stop cleanly")
    args = parser.parse_args()
    args.stop = False
    if args.graceful_sigterm:

        def stop_after_this_epoch(signum: int, frame: object) -> None:
            args.stop = True

        signal.signal(signal.SIGTERM, stop_after_this_epoch)
    args.weights_dir.mkdir(parents=True, exist_ok=True)

    metric = Metric(name="val_loss", mode="min")
    run = (
        None
        if args.no_staging
        else TrainingRun(project_id=args.project_id, job_id=args.job_id, weights_dir=args.weights_dir, metric=metric)
    )
    tracker = EpochTracker(mode="min")

    @contextlib.contextmanager
    def without_ckpt(epoch: int, value: float) -> Iterator[bool]:
        yield tracker.report(epoch, value)

    with run or contextlib.nullcontext():
        train(run.epoch_end if run else without_ckpt, args)
    return 0


def train(epoch_end: Callable[[int, float], AbstractContextManager[bool]], args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, x_val = torch.randn(512, 16), torch.randn(128, 16)
    y, y_val = x.sum(dim=1, keepdim=True), x_val.sum(dim=1, keepdim=True)
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch in range(0, len(x), 64):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x[batch : batch + 64]), y[batch : batch + 64])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = nn.functional.mse_loss(model(x_val), y_val).item()
        state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
        with epoch_end(epoch, val_loss) as is_best:  # as the README shows
            torch.save(state, args.weights_dir / "last.pt")
            if is_best:
                torch.save(state, args.weights_dir / "best.pt")
        print(f"epoch {epoch} val_loss {val_loss:.6f} best={is_best}", flush=True)
        if epoch == args.raise_at:
            raise RuntimeError(f"loss diverged at epoch {epoch}")
        if args.stop:
            print("stopping: SIGTERM", flush=True)
            return
        time.sleep(args.sleep)


if __name__ == "__main__":
    sys.exit(main())
