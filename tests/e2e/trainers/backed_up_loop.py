"""The real PyTorch loop of ``torch_loop``, in a ``TrainingRun`` that backs ``last.pt`` up in the background.

    python -m tests.e2e.trainers.backed_up_loop WEIGHTS_DIR --backup-every-minutes 0.005 [--epochs 50] [--sleep 0.2]

Prints "epoch N val_loss V best=B" after saving each epoch, like ``torch_loop``; the sweeper's end-to-end tests let it
finish (a live folder the sweeper must leave alone) or SIGKILL it after a backup landed (a folder it must complete).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ckpt.contract.manifest import Metric
from ckpt.trainer.training import TrainingRun
from tests.e2e.trainers.torch_loop import train


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("weights_dir", type=Path)
    parser.add_argument("--backup-every-minutes", type=float, required=True)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument("--project-id", type=int, default=7)
    parser.add_argument("--job-id", type=int, default=42)
    args = parser.parse_args()
    args.raise_at, args.stop = None, False  # what torch_loop's train() reads besides these
    args.weights_dir.mkdir(parents=True, exist_ok=True)
    run = TrainingRun(
        project_id=args.project_id,
        job_id=args.job_id,
        weights_dir=args.weights_dir,
        metric=Metric(name="val_loss", mode="min"),
        backup_every_minutes=args.backup_every_minutes,
    )
    with run:
        train(run.epoch_end, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
