"""Ultralytics YOLO: stage best.pt and last.pt however ``model.train()`` ends.

    from ultralytics import YOLO
    from ckpt.trainer.ultralytics import staged_training

    model = YOLO("yolo11n.yaml")
    with staged_training(model, project_id=7, job_id=42):
        model.train(data="data.yaml", epochs=100)

Ultralytics runs no ``on_train_end`` callback when training raises, so the staging happens in the ``with``
block's exit (see ``ckpt.trainer.training.TrainingRun``). When training starts, a callback notes the weights folder
and wraps the trainer's ``save_model`` so that writing best.pt/last.pt and recording which epoch they hold
happen together, with Ctrl+C and SIGTERM held until both are done: the manifest always names the epoch that
is in the file.

The callbacks hold only a number, not the run (whose S3 client cannot be pickled): Ultralytics pickles
callbacks into its DDP worker processes, where they find no run and do nothing. The run then takes the
weights folder from the model's trainer, and the epochs are left for the database to supply.

Resume: ``staged_training(model, project_id=7, job_id=42, resume=True)`` fetches the job's promoted last.pt
(what the database records, verified by its SHA-256) and has ``model.train()`` resume from it the way
Ultralytics resumes from a file, ``model.train(resume="…/last.pt")``: the model, optimizer, EMA, best fitness,
epoch counter and training arguments come from the checkpoint (Ultralytics keeps ``data``, ``imgsz``, ``batch``,
``device``, ``workers``, ``save_dir`` and a few more from the call, and warns that it ignores the rest, such as
``epochs``), and training goes on at the epoch after the checkpoint's, in the run folder the checkpoint names
unless ``save_dir`` is given. A checkpoint Ultralytics cannot resume (the stripped final one of a finished
training) starts a new training, as ``model.train(resume=True)`` does; so does a job with no promoted last.pt.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpt.contract.manifest import Metric
from ckpt.trainer.fetch import Fetched
from ckpt.trainer.training import TrainingRun, deferred_signals

# Ultralytics picks best.pt by its fitness (higher is better) and rewrites it when fitness equals the best.
FITNESS = Metric(name="fitness", mode="max")

log = logging.getLogger(__name__)

_runs: weakref.WeakValueDictionary[int, UltralyticsRun] = weakref.WeakValueDictionary()
_numbers = itertools.count(1)


class UltralyticsRun(TrainingRun):
    def __init__(self, model: Any, **options: Any) -> None:
        super().__init__(metric=FITNESS, **options)
        self._model = model
        self._resume_file: str | None = None

    def _weights(self) -> Path | None:
        if self.weights_dir is None:
            trainer = getattr(self._model, "trainer", None)
            wdir = getattr(trainer, "wdir", None)
            if wdir is not None:
                self.weights_dir = Path(wdir)
        return self.weights_dir

    def _resume_to(self) -> Path:
        # Ultralytics decides the weights folder (the checkpoint's own run folder): the file is only read from.
        return self._temporary_resume_folder()

    def _can_resume_from(self, fetched: Fetched) -> bool:
        why_not = _not_resumable(_load_checkpoint(fetched.path))
        if why_not is not None:
            log.warning("resume: the promoted %s %s; starting a new training", fetched.uri, why_not)
            return False
        # model.train() merges the model's overrides under its own arguments: an explicit resume= still wins.
        self._resume_file = str(fetched.path)
        self._model.overrides["resume"] = self._resume_file
        return True

    def _resume_ended(self) -> None:
        overrides = getattr(self._model, "overrides", {})
        if self._resume_file is not None and overrides.get("resume") == self._resume_file:
            del overrides["resume"]  # a later model.train() outside this run must not resume from a deleted file
        self._resume_file = None
        super()._resume_ended()

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


def _load_checkpoint(path: Path) -> dict[str, Any]:
    from ultralytics.nn.tasks import torch_safe_load  # Ultralytics' own loader (maps moved module paths)

    checkpoint, _ = torch_safe_load(str(path))
    return dict(checkpoint)


def _not_resumable(checkpoint: dict[str, Any]) -> str | None:
    """Why Ultralytics could not resume from ``checkpoint``, or None: the conditions of ``Model.train(resume=True)``
    (an epoch counter and the optimizer's state, which the end of a training strips) and of
    ``BaseTrainer.resume_training`` (an epoch left to train)."""
    epoch = checkpoint.get("epoch", -1)
    if not isinstance(epoch, int) or epoch < 0 or checkpoint.get("optimizer") is None:
        return "is the final checkpoint of a finished training (no epoch counter or optimizer state to resume)"
    epochs = (checkpoint.get("train_args") or {}).get("epochs")
    if isinstance(epochs, int) and epoch + 1 >= epochs:
        return f"holds epoch {epoch + 1} of {epochs}: nothing is left to train"
    return None


@dataclass(frozen=True)
class _OnTrainStart:
    """A picklable callback: it names its run by number."""

    number: int

    def __call__(self, trainer: Any) -> None:
        run = _runs.get(self.number)
        if run is not None:
            run.follow(trainer)


def staged_training(
    model: Any, *, job_id: int, project_id: int | None = None, resume: bool = False, **options: Any
) -> UltralyticsRun:
    """A ``TrainingRun`` that follows ``model``'s training; use it as the ``with`` around ``model.train()``.
    ``resume=True``: ``model.train()`` resumes from the job's promoted last.pt (see the module's docstring)."""
    run = UltralyticsRun(model, job_id=job_id, project_id=project_id, resume=resume, **options)
    number = next(_numbers)
    _runs[number] = run
    model.add_callback("on_train_start", _OnTrainStart(number))
    return run
