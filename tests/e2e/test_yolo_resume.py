"""A real Ultralytics YOLO run, interrupted and promoted, resumed on another machine from the promoted last.pt:
``staged_training(model, …, resume=True)`` reads the database's record (the one ``ckpt fetch`` and the checkpoint
API read), downloads and verifies the file, and Ultralytics goes on at the epoch after the promoted one, staging
as a new attempt."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import uuid
from pathlib import Path

from checkpoint_api import app as api
from ckpt.adapters.db.engine import make_engine
from ckpt.contract.keys import JobRef, Layout
from ckpt.contract.manifest import parse_manifest
from ckpt.promotion.promoted import read_promoted
from tests.e2e.local_stack import Pipeline
from tests.e2e.test_real_trainers import run_trainer
from tests.support import LambdaContext, add_epochs, reset_database

ROOT = Path(__file__).parents[2]
TRAINER = "tests.e2e.trainers.yolo_resume"
JOB = JobRef(job_id=42, project_id=7)


def test_a_resumed_yolo_run_continues_from_the_promoted_epoch(endpoint, pg_url, tmp_path, clean_environment):
    bucket = f"resume-{uuid.uuid4().hex[:8]}"
    pipeline = Pipeline(endpoint, bucket).create()
    pipeline.receive(expect=1, wait_seconds=2)  # S3's s3:TestEvent for the new notification
    engine = make_engine(pg_url)
    reset_database(engine)
    layout = Layout(bucket=bucket)
    environment = {**pipeline.function_environment(pg_url), "POWERTOOLS_TRACE_DISABLED": "1"}
    trainer_env = {**os.environ, **environment, "PYTHONPATH": str(ROOT / "functions")}

    def promote(epochs: dict[int, float]) -> None:
        add_epochs(engine, 42, epochs)
        os.environ.update(environment)
        from promote_checkpoints import handler

        messages = pipeline.receive(expect=1)
        assert len(messages) == 1
        assert pipeline.deliver(handler, messages) == {"batchItemFailures": []}

    def manifest(n: int):  # type: ignore[no-untyped-def]
        key = f"staging/projects/7/jobs/42/attempts/{n}/manifest.json"
        return parse_manifest(pipeline.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    # Machine one: 4 epochs asked, Ctrl+C after the second; the manifest is promoted.
    first = tmp_path / "machine-1"
    _, epochs, output = run_trainer(
        TRAINER, [str(first), "--epochs", "4"], trainer_env, stop_after_epoch=2, send=signal.SIGINT
    )
    assert [epoch for epoch, _, _ in epochs] == [1, 2], output
    assert (manifest(1).status, manifest(1).checkpoints.last.epoch) == ("interrupted", 2)
    promote({epoch: value for epoch, value, _ in epochs})
    promoted_last = read_promoted(engine, layout, JOB).checkpoint("last")
    assert (promoted_last.epoch, promoted_last.attempt) == (2, 1)
    shutil.rmtree(first)  # the machine is gone: only the promoted last.pt remains

    # Machine two: the same job, resumed.
    status, epochs, output = run_trainer(
        TRAINER, [str(tmp_path / "machine-2"), "--epochs", "4", "--resume"], trainer_env
    )

    assert status == 0, output
    assert "ckpt INFO resuming job 42 of project 7 from its promoted last.pt: epoch 2 of attempt 1" in output, output
    assert f"(SHA-256 {promoted_last.sha256} verified)" in output
    assert "Resuming training" in output  # Ultralytics' own words: it loaded model, optimizer and epoch
    assert [epoch for epoch, _, _ in epochs] == [3, 4]  # the epochs after the promoted one, and no other
    [save_dir] = [line.split(" ", 1)[1].strip() for line in output.splitlines() if line.startswith("save_dir ")]
    with open(Path(save_dir) / "results.csv", newline="") as results:
        assert [int(float(row["epoch"])) for row in csv.DictReader(results)] == [3, 4]
    resumed = manifest(2)  # a new attempt
    assert (resumed.status, resumed.checkpoints.last.epoch) == ("completed", 4)

    # Promoted, the resumed attempt is what the record, and so the API, says the job's last.pt is.
    promote({epoch: value for epoch, value, _ in epochs})
    api._wiring = None
    os.environ.update(environment)
    event = json.loads((ROOT / "events" / "api-list-checkpoints.json").read_text())
    answer = api.lambda_handler(event, LambdaContext(function_name="CheckpointApiFunction"))
    body = json.loads(answer["body"])
    assert answer["statusCode"] == 200, body
    assert (body["attempt"], body["checkpoints"]["last"]["epoch"], body["checkpoints"]["last"]["attempt"]) == (2, 4, 2)
    api._wiring = None
    engine.dispose()
