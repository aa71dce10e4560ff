"""The Ultralytics hooks without Ultralytics: what they register and what they do to a trainer."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

from ckpt.config import Settings
from ckpt.trainer.ultralytics import staged_training


class FakeModel:
    def __init__(self) -> None:
        self.callbacks: dict[str, list] = {}
        self.trainer = None

    def add_callback(self, event: str, callback) -> None:
        self.callbacks.setdefault(event, []).append(callback)


def fake_trainer(tmp_path: Path) -> SimpleNamespace:
    trainer = SimpleNamespace(wdir=tmp_path, epoch=0, fitness=0.4, best_fitness=0.4, saves=0)

    def save_model() -> bool:
        trainer.saves += 1
        return True

    trainer.save_model = save_model
    return trainer


def test_the_callbacks_pickle_without_the_run_so_ddp_workers_can_load_them(tmp_path):
    model = FakeModel()
    run = staged_training(model, job_id=42, project_id=7, settings=Settings(), client=object())

    [callback] = model.callbacks["on_train_start"]
    clone = pickle.loads(pickle.dumps(callback))

    assert clone == callback
    assert run.weights_dir is None


def test_each_save_records_the_epoch_it_wrote(tmp_path):
    model = FakeModel()
    run = staged_training(model, job_id=42, project_id=7, settings=Settings(), client=object())
    trainer = fake_trainer(tmp_path)
    model.callbacks["on_train_start"][0](trainer)

    trainer.save_model()  # epoch index 0: fitness equals the best, so best.pt was written too
    trainer.epoch, trainer.fitness = 1, 0.2
    trainer.save_model()

    assert trainer.saves == 2
    assert run.weights_dir == tmp_path
    assert (run.tracker.best_epoch, run.tracker.last_epoch) == (1, 2)


def test_without_callbacks_the_weights_folder_comes_from_the_models_trainer(tmp_path):
    model = FakeModel()
    run = staged_training(model, job_id=42, settings=Settings(), client=object())
    model.trainer = SimpleNamespace(wdir=str(tmp_path))  # as in the parent of a DDP run

    assert run._weights() == tmp_path
