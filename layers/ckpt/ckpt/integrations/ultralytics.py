"""Ultralytics YOLO: stage best.pt and last.pt however ``model.train()`` ends.

    from ultralytics import YOLO
    from ckpt.integrations.ultralytics import staged_training

    model = YOLO("yolo11n.yaml")
    with staged_training(model, project_id=7, job_id=42):
        model.train(data="data.yaml", epochs=100)

Ultralytics runs no ``on_train_end`` callback when training raises, so the staging happens in the ``with``
block's exit (see ``ckpt.training.TrainingRun``). When training starts, a callback notes the weights folder
and wraps the trainer's ``save_model`` so that writing best.pt/last.pt and recording which epoch they hold
happen together, with Ctrl+C and SIGTERM held until both are done: the manifest always names the epoch that
is in the file.

The callbacks hold only a number, not the run (whose S3 client cannot be pickled): Ultralytics pickles
callbacks into its DDP worker processes, where they find no run and do nothing. The run then takes the
weights folder from the model's trainer, and the epochs are left for the database to supply.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpt.manifest import Metric
from ckpt.training import TrainingRun, deferred_signals

# Ultralytics picks best.pt by its fitness (higher is better) and rewrites it when fitness equals the best.
FITNESS = Metric(name="fitness", mode="max")

_runs: weakref.WeakValueDictionary[int, UltralyticsRun] = weakref.WeakValueDictionary()
_numbers = itertools.count(1)


class UltralyticsRun(TrainingRun):
    def __init__(self, model: Any, **options: Any) -> None:
        super().__init__(metric=FITNESS, **options)
        self._model = model

    def _weights(self) -> Path | None:
        if self.weights_dir is None:
            trainer = getattr(self._model, "trainer", None)
            wdir = getattr(trainer, "wdir", None)
            if wdir is not None:
                self.weights_dir = Path(wdir)
        return self.weights_dir

    def follow(self, trainer: Any) -> None:
        """Called when training starts: note the weights folder and make each save record its epoch."""
        self.weights_dir = Path(trainer.wdir)
        save_model = trainer.save_model

        def save_and_record() -> Any:
            with deferred_signals():
                saved = save_model()
                if saved is not False:
                    # trainer.epoch counts from 0; the platform's epochs (and Ultralytics' results.csv) from 1.
                    fitness = None if trainer.fitness is None else float(trainer.fitness)
                    self.report(trainer.epoch + 1, fitness, is_best=trainer.best_fitness == trainer.fitness)
                return saved

        trainer.save_model = save_and_record


@dataclass(frozen=True)
class _OnTrainStart:
    """A picklable callback: it names its run by number."""

    number: int

    def __call__(self, trainer: Any) -> None:
        run = _runs.get(self.number)
        if run is not None:
            run.follow(trainer)


def staged_training(model: Any, *, job_id: int, project_id: int | None = None, **options: Any) -> UltralyticsRun:
    """A ``TrainingRun`` that follows ``model``'s training; use it as the ``with`` around ``model.train()``."""
    run = UltralyticsRun(model, job_id=job_id, project_id=project_id, **options)
    number = next(_numbers)
    _runs[number] = run
    model.add_callback("on_train_start", _OnTrainStart(number))
    return run
