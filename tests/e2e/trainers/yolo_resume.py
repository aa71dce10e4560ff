"""A real Ultralytics YOLO training on the CPU (as ``yolo_train``), wrapped in ``staged_training`` with the option
to resume from the job's promoted last.pt.

    python -m tests.e2e.trainers.yolo_resume WORKDIR --epochs 4 [--resume] [--project-id 7 --job-id 42]

Prints one line per saved epoch ("epoch N fitness F best=B"), the ckpt package's log, and at the end the run
folder Ultralytics trained in ("save_dir …").
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tests.e2e.trainers.yolo_train import announce, make_dataset, train


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--project-id", type=int, default=7)
    parser.add_argument("--job-id", type=int, default=42)
    parser.add_argument("--resume", action="store_true", help="start from the job's promoted last.pt")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_CONFIG_DIR", str(args.workdir / "ultralytics-config"))
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("ckpt %(levelname)s %(message)s"))
    logging.getLogger("ckpt").addHandler(handler)
    logging.getLogger("ckpt").setLevel(logging.INFO)

    from ultralytics import YOLO

    from ckpt.trainer.ultralytics import staged_training

    data = make_dataset(args.workdir / "dataset")
    model = YOLO("yolo11n.yaml")

    model.add_callback("on_model_save", announce)
    with staged_training(model, project_id=args.project_id, job_id=args.job_id, resume=args.resume):
        train(model, data, args.workdir, args.epochs, args.job_id)
    print(f"save_dir {model.trainer.save_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
