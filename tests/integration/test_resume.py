"""``ckpt fetch`` and resuming a run from the promoted last.pt, against moto's S3 and a real database: both read
the database's record of what is promoted (``ckpt.promotion.promoted``) and check the bytes against it."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpt.cli import main
from ckpt.config import Settings
from ckpt.contract.keys import JobRef
from ckpt.contract.manifest import Metric, parse_manifest
from ckpt.errors import DatabaseUnavailable, Rejected
from ckpt.promotion.promoted import JobInAnotherProject, UnknownJob
from ckpt.trainer.fetch import fetch_checkpoint
from ckpt.trainer.staging import Checkpoint
from ckpt.trainer.training import TrainingRun
from ckpt.trainer.ultralytics import staged_training
from tests.support import BUCKET, add_epochs, attempt, weights

SETTINGS = Settings(bucket=BUCKET)
JOB = JobRef(job_id=42, project_id=7)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def promote(promoter, layout, trainer, n: int, **files: Checkpoint) -> None:  # type: ignore[no-untyped-def]
    trainer.finish(attempt(n), files=files or None)
    outcome = promoter.promote_key(BUCKET, layout.manifest_key(attempt(n)), trigger="test")
    assert outcome.status == "promoted", outcome.reason


def manifest(s3: Any, n: int):  # type: ignore[no-untyped-def]
    body = s3.get_object(Bucket=BUCKET, Key=f"staging/projects/7/jobs/42/attempts/{n}/manifest.json")["Body"]
    return parse_manifest(body.read())


# --- ckpt fetch ------------------------------------------------------------------------------------------------


def test_fetch_downloads_the_recorded_checkpoint_and_says_which_it_is(engine, promoter, trainer, s3, layout, tmp_path):
    add_epochs(engine, 42, {18: 0.6, 20: 0.5})
    promote(promoter, layout, trainer, 1)

    fetched = fetch_checkpoint(s3, layout, engine, JOB, "last", tmp_path)

    assert fetched.path == tmp_path / "last.pt"
    assert fetched.path.read_bytes() == weights("last-1")
    assert fetched.sha256 == sha256(weights("last-1"))
    assert (fetched.checkpoint.epoch, fetched.checkpoint.attempt, fetched.checkpoint.metric_value) == (20, 1, 0.5)
    assert fetched.uri == "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/last.pt"


def test_fetch_refuses_bytes_other_than_the_recorded_ones_and_leaves_no_file(
    engine, promoter, trainer, s3, layout, tmp_path
):
    promote(promoter, layout, trainer, 1)
    s3.put_object(  # tampered in place, its metadata naming the promoted digest: the record is what counts
        Bucket=BUCKET,
        Key=layout.canonical_key(JOB, "last"),
        Body=b"tampered",
        Metadata={"sha256": sha256(weights("last-1"))},
    )
    pauses: list[float] = []

    with pytest.raises(Rejected, match="does not match the promoted checkpoint"):
        fetch_checkpoint(s3, layout, engine, JOB, "last", tmp_path / "out" / "again.pt", sleep=pauses.append)

    assert pauses == [0.5, 1.0, 2.0]  # the record was read again after each pause, in case a promotion committed
    assert list((tmp_path / "out").iterdir()) == []


def test_fetch_waits_out_a_promotion_that_copied_and_had_not_committed(engine, promoter, trainer, s3, layout, tmp_path):
    promote(promoter, layout, trainer, 1)
    trainer.finish(attempt(2))
    # attempt 2's promotion has copied its last.pt, and commits while the fetch pauses
    s3.put_object(Bucket=BUCKET, Key=layout.canonical_key(JOB, "last"), Body=weights("last-2"))

    def commit_meanwhile(_: float) -> None:
        promoter.promote_key(BUCKET, layout.manifest_key(attempt(2)), trigger="test")

    fetched = fetch_checkpoint(s3, layout, engine, JOB, "last", tmp_path, sleep=commit_meanwhile)

    assert fetched.path.read_bytes() == weights("last-2")
    assert fetched.checkpoint.attempt == 2


def test_fetch_of_a_job_with_nothing_promoted_says_so(engine, s3, layout, tmp_path):
    with pytest.raises(UnknownJob, match="job 42 of project 7 is unknown"):
        fetch_checkpoint(s3, layout, engine, JOB, "last", tmp_path)


@pytest.fixture
def cli_env(monkeypatch, database_url, engine, s3):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CHECKPOINT_BUCKET", BUCKET)


def test_the_fetch_command_prints_the_record_and_exits_1_with_the_reason(
    cli_env, engine, promoter, trainer, layout, tmp_path, capsys
):
    add_epochs(engine, 42, {18: 0.6, 20: 0.5})
    promote(promoter, layout, trainer, 1)

    assert main(["fetch", "--project-id", "7", "--job-id", "42", "--which", "best", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "best.pt").read_bytes() == weights("best-1")
    assert "(epoch 18, attempt 1, 2048 bytes, sha256" in capsys.readouterr().out

    assert main(["fetch", "--project-id", "8", "--job-id", "42", "-o", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "ckpt: job 42 is not a job of project 8\n"
    assert main(["fetch", "--job-id", "43", "-o", str(tmp_path)]) == 1
    assert "job 43 is unknown" in capsys.readouterr().err


# --- TrainingRun(resume=True) ------------------------------------------------------------------------------------


def resumed_run(s3, engine, weights_dir: Path | None, **options: Any) -> TrainingRun:  # type: ignore[no-untyped-def]
    return TrainingRun(
        project_id=7,
        job_id=42,
        weights_dir=weights_dir,
        settings=SETTINGS,
        client=s3,
        engine=engine,
        resume=True,
        metric=Metric(name="mAP", mode="max"),
        **options,
    )


def test_a_resumed_run_starts_from_the_promoted_last_and_stages_a_new_attempt(
    engine, promoter, trainer, s3, layout, tmp_path, caplog
):
    add_epochs(engine, 42, {18: 0.6, 19: 0.55, 20: 0.5})
    promote(promoter, layout, trainer, 1)
    folder = tmp_path / "weights"
    caplog.set_level(logging.INFO, logger="ckpt.trainer.training")

    with resumed_run(s3, engine, folder) as run:
        assert run.resumed is not None
        assert run.resumed.path == folder / "last.pt"
        assert run.resumed.path.read_bytes() == weights("last-1")  # what training loads its state from
        start = run.resumed.checkpoint.epoch + 1
        for epoch, value in zip(range(start, start + 2), [0.58, 0.59], strict=True):
            with run.epoch_end(epoch, value) as is_best:
                assert not is_best  # the promoted best (0.6 at epoch 18) still stands
                (folder / "last.pt").write_bytes(weights(f"epoch-{epoch}"))

    assert "resuming job 42 of project 7 from its promoted last.pt: epoch 20 of attempt 1" in caplog.text
    staged = manifest(s3, 2)
    assert (staged.attempt, staged.status) == (2, "completed")
    assert staged.checkpoints.best is None  # no best.pt in this run's folder: the promoted one stays
    assert staged.checkpoints.last.epoch == 22
    add_epochs(engine, 42, {21: 0.58, 22: 0.59})
    promoter.promote_key(BUCKET, layout.manifest_key(attempt(2)), trigger="test")
    again = fetch_checkpoint(s3, layout, engine, JOB, "best", tmp_path / "check")
    assert (again.checkpoint.epoch, again.checkpoint.attempt) == (18, 1)


def test_a_resumed_epoch_that_beats_the_promoted_best_is_the_new_best(engine, promoter, trainer, s3, layout, tmp_path):
    add_epochs(engine, 42, {18: 0.6, 20: 0.5})
    promote(promoter, layout, trainer, 1)
    folder = tmp_path / "weights"

    with resumed_run(s3, engine, folder) as run, run.epoch_end(21, 0.7) as is_best:
        assert is_best
        (folder / "last.pt").write_bytes(weights("epoch-21"))
        (folder / "best.pt").write_bytes(weights("epoch-21"))

    staged = manifest(s3, 2)
    assert (staged.checkpoints.best.epoch, staged.checkpoints.last.epoch) == (21, 21)


def test_a_resumed_run_stopped_before_its_first_epoch_stages_the_resumed_last_by_its_epoch(
    engine, promoter, trainer, s3, layout, tmp_path
):
    add_epochs(engine, 42, {18: 0.6, 20: 0.5})
    promote(promoter, layout, trainer, 1)

    with pytest.raises(KeyboardInterrupt), resumed_run(s3, engine, tmp_path / "weights"):
        raise KeyboardInterrupt

    staged = manifest(s3, 2)
    assert (staged.status, staged.checkpoints.last.epoch) == ("interrupted", 20)
    assert staged.checkpoints.last.sha256 == sha256(weights("last-1"))


def test_a_local_last_that_differs_is_replaced_and_the_log_says_so(
    engine, promoter, trainer, s3, layout, tmp_path, caplog
):
    promote(promoter, layout, trainer, 1)
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "last.pt").write_bytes(b"a stale local file")

    with resumed_run(s3, engine, folder) as run:
        assert run.resumed is not None and (folder / "last.pt").read_bytes() == weights("last-1")

    assert f"the local {folder / 'last.pt'} (SHA-256 {sha256(b'a stale local file')}) was replaced" in caplog.text


def test_with_nothing_promoted_a_resumed_run_starts_fresh_and_says_so(engine, s3, tmp_path, caplog):
    add_epochs(engine, 42, {1: 0.5})

    with resumed_run(s3, engine, tmp_path / "weights") as run:
        assert run.resumed is None
        assert run.tracker.reports == []

    assert "resume: job 42 of project 7 has no promoted checkpoints yet; starting fresh" in caplog.text
    assert manifest(s3, 1).attempt == 1


def test_with_only_a_best_promoted_a_resumed_run_starts_fresh(engine, promoter, trainer, s3, layout, tmp_path, caplog):
    promote(promoter, layout, trainer, 1, best=Checkpoint(weights("best-1"), epoch=3))

    with resumed_run(s3, engine, tmp_path / "weights") as run:
        assert run.resumed is None

    assert "has no promoted last.pt (promoted: best.pt); starting fresh" in caplog.text


def test_a_job_id_of_another_project_never_trains_from_scratch(engine, promoter, trainer, s3, layout, tmp_path):
    promote(promoter, layout, trainer, 1)
    run = TrainingRun(project_id=8, job_id=42, settings=SETTINGS, client=s3, engine=engine, resume=True)

    with pytest.raises(JobInAnotherProject), run:
        pytest.fail("the run must not start")

    assert run.result is None  # nothing staged
    assert "staging/projects/8/" not in str(s3.list_objects_v2(Bucket=BUCKET).get("Contents"))


def test_an_unreachable_database_stops_a_resumed_run_before_it_trains(s3, tmp_path):
    from ckpt.adapters.db.engine import make_engine

    unreachable = make_engine("postgresql+pg8000://postgres@127.0.0.1:1/postgres?connect_timeout=2")
    run = resumed_run(s3, unreachable, None)

    with pytest.raises(DatabaseUnavailable), run:
        pytest.fail("the run must not start")

    assert run._resume_folder is None  # the temporary folder went with it


# --- Ultralytics: staged_training(model, …, resume=True) ---------------------------------------------------------


class FakeYolo:
    """What staged_training touches of an Ultralytics model."""

    def __init__(self) -> None:
        self.overrides: dict[str, Any] = {"model": "yolo11n.yaml"}
        self.callbacks: list[tuple[str, Any]] = []

    def add_callback(self, event: str, callback: Any) -> None:
        self.callbacks.append((event, callback))


def ultralytics_checkpoint(epoch: int, optimizer: bool = True, epochs: int = 30) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {"epoch": epoch, "optimizer": {"state": {}} if optimizer else None, "train_args": {"epochs": epochs}}, buffer
    )
    return buffer.getvalue()


def test_model_train_resumes_from_the_fetched_promoted_last(engine, promoter, trainer, s3, layout):
    saved = ultralytics_checkpoint(epoch=19)  # Ultralytics counts from 0: epoch 20 done
    promote(promoter, layout, trainer, 1, last=Checkpoint(saved, epoch=20))
    model = FakeYolo()

    with staged_training(
        model, job_id=42, project_id=7, settings=SETTINGS, client=s3, engine=engine, resume=True
    ) as run:
        assert run.resumed is not None
        resume = Path(model.overrides["resume"])  # model.train() merges it: train(resume=<file>)
        assert resume == run.resumed.path and resume.read_bytes() == saved

    assert "resume" not in model.overrides
    assert not resume.exists()  # the temporary copy went with the run


@pytest.mark.parametrize(
    ("saved", "reason"),
    [
        (ultralytics_checkpoint(epoch=-1, optimizer=False), "is the final checkpoint of a finished training"),
        (ultralytics_checkpoint(epoch=5, optimizer=False), "is the final checkpoint of a finished training"),
        (ultralytics_checkpoint(epoch=29, epochs=30), "holds epoch 30 of 30: nothing is left to train"),
    ],
)
def test_a_checkpoint_ultralytics_cannot_resume_starts_a_new_training(
    engine, promoter, trainer, s3, layout, caplog, saved, reason
):
    promote(promoter, layout, trainer, 1, last=Checkpoint(saved, epoch=20))
    model = FakeYolo()

    with staged_training(
        model, job_id=42, project_id=7, settings=SETTINGS, client=s3, engine=engine, resume=True
    ) as run:
        assert run.resumed is None
        assert "resume" not in model.overrides

    said = [record.getMessage() for record in caplog.records if record.name.startswith("ckpt")]
    assert any(reason in line and line.endswith("; starting a new training") for line in said)
