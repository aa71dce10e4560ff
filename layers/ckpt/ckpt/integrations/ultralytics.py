"""Ultralytics YOLO: stage best.pt and last.pt however ``model.train()`` ends.

    from ultralytics import YOLO
    from ckpt.integrations.ultralytics import staged_training

    model = YOLO("yolo11n.yaml")
    with staged_training(model, project_id=7, job_id=42):
        model.train(data="data.yaml", epochs=100)

Ultralytics runs no ``on_train_end`` callback when training raises, so the staging happens in the ``with``
block's exit (see ``ckpt.training.TrainingRun``); the callbacks only follow the run: the weights folder when
training starts, and after each save the epoch and whether best.pt was rewritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt.manifest import Metric
from ckpt.training import TrainingRun

# Ultralytics picks best.pt by its fitness (higher is better) and rewrites it when fitness equals the best.
FITNESS = Metric(name="fitness", mode="max")


def staged_training(model: Any, *, job_id: int, project_id: int | None = None, **options: Any) -> TrainingRun:
    """A ``TrainingRun`` that follows ``model``'s training through Ultralytics callbacks."""
    run = TrainingRun(job_id=job_id, project_id=project_id, metric=FITNESS, **options)

    def on_train_start(trainer: Any) -> None:
        run.weights_dir = Path(trainer.wdir)

    def on_model_save(trainer: Any) -> None:
        # trainer.epoch counts from 0; the platform's epochs (and Ultralytics' results.csv) from 1.
        fitness = None if trainer.fitness is None else float(trainer.fitness)
        run.report(trainer.epoch + 1, fitness, is_best=trainer.best_fitness == trainer.fitness)

    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_model_save", on_model_save)
    return run
