"""The sweeper end to end, against moto's standalone server (S3 with the bucket notification to SQS): a real PyTorch
training in a subprocess whose ``TrainingRun`` backs ``last.pt`` up every few tenths of a second.

- While it trains, its attempt folder keeps changing: the sweeper, run again and again, never completes it, and the
  trainer's own manifest is the only one.
- SIGKILLed after a backup landed, it leaves ``last.pt`` and no manifest: SweeperFunction's handler writes the
  ``abandoned`` manifest, its notification reaches the promotion handler through SQS, and the job's last epoch row
  points at the canonical ``last.pt``, recorded as an abandoned attempt's promotion.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ckpt.adapters.storage import S3Storage
from ckpt.config import Settings
from ckpt.contract.manifest import parse_manifest
from ckpt.operations.sweep import Action, build_sweeper
from tests.e2e.local_stack import Pipeline, function_stack
from tests.e2e.stack import ScheduledContext
from tests.support import JOB, add_epochs, attempt, paths, records

ROOT = Path(__file__).parents[2]
EPOCH_LINE = re.compile(r"^epoch (\d+) val_loss (\S+) best=(True|False)$")
BACKUP_EVERY_MINUTES = 0.005  # 0.3 s
FOLDER = "staging/projects/7/jobs/42/attempts/1/"


class Stage:
    """A bucket with its notification to SQS, a SQLite platform database, the function's environment."""

    def __init__(self, endpoint: str, tmp_path: Path) -> None:
        bucket = f"sweeper-{uuid.uuid4().hex[:8]}"
        self.database_url = f"sqlite:///{tmp_path / 'platform.db'}"
        self.pipeline: Pipeline
        self.pipeline, self.engine, self.promotion = function_stack(endpoint, bucket, self.database_url)
        self.pipeline.receive(expect=1, wait_seconds=2)  # S3's s3:TestEvent for the new notification
        self.storage = S3Storage(self.pipeline.s3, bucket)
        self.layout = Settings.from_env(os.environ).layout()
        self.trainer_env = {**os.environ, "PYTHONPATH": str(ROOT / "functions")}

    def staged(self) -> list[str]:
        return sorted(listed.key.removeprefix(FOLDER) for listed in self.storage.list_objects(FOLDER))

    def start_trainer(self, weights: Path, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.e2e.trainers.backed_up_loop",
                str(weights),
                "--backup-every-minutes",
                str(BACKUP_EVERY_MINUTES),
                *args,
            ],
            cwd=ROOT,
            env=self.trainer_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


@pytest.fixture
def stage(endpoint: str, tmp_path: Path, clean_environment: None) -> Stage:
    return Stage(endpoint, tmp_path)


def epochs_of(lines: list[str]) -> dict[int, float]:
    return {int(m[1]): float(m[2]) for line in lines if (m := EPOCH_LINE.match(line.strip()))}


def test_a_live_training_that_backs_up_is_never_swept(stage: Stage, tmp_path: Path):
    sweeper = build_sweeper(Settings.from_env(os.environ), stage.engine)
    older_than = timedelta(seconds=5)  # above the backup interval and an epoch, with room for a loaded machine
    trainer = stage.start_trainer(tmp_path / "weights", "--epochs", "30", "--sleep", "0.2")
    judged: list[Any] = []
    try:
        while trainer.poll() is None:
            report = sweeper.sweep(older_than)
            judged += [result for result in report.results if result.prefix == FOLDER]
            time.sleep(0.5)
    finally:
        trainer.kill()
    output = trainer.stdout.read() if trainer.stdout else ""

    assert trainer.wait() == 0, output
    assert len(judged) >= 5, "the sweeper ran while the backups were landing"
    assert {result.action for result in judged} == {Action.SKIPPED}
    assert all("its trainer may be alive" in result.reason for result in judged)
    manifest = parse_manifest(stage.storage.read(FOLDER + "manifest.json", 65536))
    assert manifest.status == "completed"
    messages = stage.pipeline.receive(expect=2, wait_seconds=3)
    assert len(messages) == 1, "one manifest notification: the trainer's"
    # With the trainer gone and its manifest written, the folder is done: nothing for any age.
    assert [r for r in sweeper.sweep(timedelta(0)).results if r.prefix == FOLDER] == []


def test_a_sigkilled_training_is_swept_and_its_backup_promoted_as_abandoned(stage: Stage, tmp_path: Path):
    trainer = stage.start_trainer(tmp_path / "weights", "--epochs", "1000", "--sleep", "0.2")
    lines: list[str] = []
    assert trainer.stdout is not None
    for line in trainer.stdout:
        lines.append(line)
        if len(epochs_of(lines)) >= 3 and "last.pt" in stage.staged():
            trainer.send_signal(signal.SIGKILL)  # after a backup landed: no handler runs, no manifest
            break
    assert trainer.wait(timeout=30) == -signal.SIGKILL, "".join(lines)
    lines += trainer.stdout.readlines()
    assert stage.staged() == ["last.pt"]
    epochs = epochs_of(lines)
    add_epochs(stage.engine, JOB.job_id, epochs)  # the platform recorded every validated epoch
    older_than = 2
    time.sleep(older_than + 0.5)  # nothing changes any more

    os.environ["SWEEP_OLDER_THAN"] = f"{older_than}s"
    from sweeper import handler as sweeper_function

    sweeper_function._sweeper = None
    answer = sweeper_function.lambda_handler({}, ScheduledContext())

    assert (answer["swept"], answer["failed"]) == ([FOLDER], 0)
    manifest = parse_manifest(stage.storage.read(FOLDER + "manifest.json", 65536))
    assert (manifest.status, manifest.checkpoints.best) == ("abandoned", None)
    assert manifest.checkpoints.last is not None and manifest.checkpoints.last.epoch is None

    messages = stage.pipeline.receive(expect=1)
    assert len(messages) == 1, "the abandoned manifest's notification"
    assert stage.pipeline.deliver(stage.promotion, messages) == {"batchItemFailures": []}

    last_epoch = max(epochs)
    uri = stage.layout.canonical_uri(JOB, "last")
    assert {epoch: path for epoch, path in paths(stage.engine, JOB.job_id).items() if path} == {last_epoch: uri}
    [record] = records(stage.engine, JOB.job_id)
    assert (record["outcome"], record["trigger"], record["attempt"], record["last_epoch"]) == (
        "promoted",
        "sqs:s3",
        attempt(1).attempt,
        last_epoch,
    )
    assert record["reason"] == f"attempt 1 (abandoned): promoted last.pt (epoch {last_epoch})"
    canonical = stage.pipeline.s3.get_object(Bucket=stage.layout.bucket, Key=stage.layout.canonical_key(JOB, "last"))
    staged = stage.pipeline.s3.get_object(Bucket=stage.layout.bucket, Key=FOLDER + "last.pt")
    assert canonical["Body"].read() == staged["Body"].read()
    # Swept once: the folder has its manifest now, and a second run finds nothing to do.
    assert sweeper_function.lambda_handler({}, ScheduledContext())["swept"] == []
