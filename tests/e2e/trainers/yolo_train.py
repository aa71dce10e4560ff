"""A real Ultralytics YOLO training on the CPU, offline: yolo11n from its YAML (no pretrained weights) on a
tiny generated dataset, wrapped in ``staged_training``.

    python -m tests.e2e.trainers.yolo_train WORKDIR --epochs 3 [--no-staging] [--project-id 7 --job-id 42]

Prints one line per saved epoch ("epoch N fitness F best=B") so a test can interrupt it mid-training.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
from pathlib import Path


def make_dataset(root: Path, images: int = 8, size: int = 64) -> Path:
    """Squares of one class on noise, with their YOLO labels; train and val are the same images."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i in range(images):
        image = Image.effect_noise((size, size), 40).convert("RGB")
        w, h = rng.randint(16, 32), rng.randint(16, 32)
        x, y = rng.randint(0, size - w), rng.randint(0, size - h)
        ImageDraw.Draw(image).rectangle([x, y, x + w, y + h], fill=(220, 30, 30))
        label = f"0 {(x + w / 2) / size:.6f} {(y + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}\n"
        for split in ("train", "val"):
            image.save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text(label)
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: square\n")
    return data


def announce(trainer) -> None:  # type: ignore[no-untyped-def]
    """One line per saved epoch, so a test can follow (and interrupt) the training."""
    fitness = None if trainer.fitness is None else float(trainer.fitness)
    best = trainer.best_fitness == trainer.fitness
    print(f"epoch {trainer.epoch + 1} fitness {fitness} best={best}", flush=True)


def train(model, data: Path, workdir: Path, epochs: int, job_id: int) -> None:  # type: ignore[no-untyped-def]
    """The tests' training: tiny, on the CPU, deterministic, into WORKDIR/runs/job_{job_id}."""
    model.train(
        data=str(data),
        epochs=epochs,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        plots=False,
        amp=False,
        project=str(workdir / "runs"),
        name=f"job_{job_id}",
        exist_ok=True,
        verbose=False,
        seed=0,
        deterministic=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--project-id", type=int, default=7)
    parser.add_argument("--job-id", type=int, default=42)
    parser.add_argument("--no-staging", action="store_true", help="the same training without ckpt")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_CONFIG_DIR", str(args.workdir / "ultralytics-config"))

    from ultralytics import YOLO

    from ckpt.trainer.ultralytics import staged_training

    data = make_dataset(args.workdir / "dataset")
    model = YOLO("yolo11n.yaml")

    model.add_callback("on_model_save", announce)
    staging = (
        contextlib.nullcontext()
        if args.no_staging
        else staged_training(model, project_id=args.project_id, job_id=args.job_id)
    )
    with staging:
        train(model, data, args.workdir, args.epochs, args.job_id)
    print(f"weights {args.workdir / 'runs' / f'job_{args.job_id}' / 'weights'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
