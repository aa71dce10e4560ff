"""The sweeper against the real adapters: moto's S3 (in-process), SQLite and PostgreSQL. It writes the manifest a dead
trainer did not, and the normal promotion then promotes it; SweeperFunction's handler and ``ckpt sweep`` run it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ckpt.adapters.storage import MiB, S3Storage
from ckpt.cli import main
from ckpt.contract.keys import JobRef
from ckpt.contract.manifest import Metric, parse_manifest
from ckpt.contract.outcome import Status
from ckpt.errors import StorageUnavailable
from ckpt.operations.sweep import Action, Sweeper
from ckpt.trainer.checksums import crc64nvme_available
from ckpt.trainer.staging import Checkpoint
from ckpt.trainer.upload import Uploader, UploadPolicy
from tests.e2e.stack import ScheduledContext
from tests.support import add_epochs, attempt, paths, records, weights

EVENTS = Path(__file__).parents[2] / "events"
LATER = timedelta(hours=7)  # past the default age of 6 h
URI = "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/"


def in_the_future(delta: timedelta = LATER) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + delta


def backed_up(s3: Any, layout: Any, n: int, name: str = "last", body: bytes | None = None, **policy: Any) -> bytes:
    """What ``TrainingRun``'s background backup leaves: the file, uploaded as it uploads it, and no manifest."""
    body = body if body is not None else weights(f"{name}-{n}")
    Uploader(s3, layout.bucket, UploadPolicy(progress=False, **policy)).upload(
        body, layout.staged_key(attempt(n), name)
    )
    return body


def staged_manifest(s3: Any, layout: Any, n: int) -> Any:
    return parse_manifest(s3.get_object(Bucket=layout.bucket, Key=layout.manifest_key(attempt(n)))["Body"].read())


@pytest.fixture
def sweeper(layout, storage, store) -> Sweeper:
    return Sweeper(layout, storage, store, clock=in_the_future())


def test_an_abandoned_attempt_is_completed_then_promoted_by_the_normal_path(sweeper, promoter, engine, s3, layout):
    add_epochs(engine, 42, {1: 0.3, 2: 0.5, 3: 0.4})
    body = backed_up(s3, layout, 1)

    report = sweeper.sweep()

    [result] = report.results
    assert (result.action, result.prefix) == (Action.SWEPT, layout.attempt_folder(attempt(1)))
    assert result.reason == "abandoned: last.pt, no manifest, unchanged for 7h00m"
    manifest = staged_manifest(s3, layout, 1)
    assert manifest == result.manifest
    assert (manifest.status, manifest.checkpoints.best) == ("abandoned", None)
    last = manifest.checkpoints.last
    assert last is not None
    assert (last.epoch, last.size, last.sha256) == (None, len(body), hashlib.sha256(body).hexdigest())
    assert records(engine) == []  # the sweeper never promotes nor records: the notification does

    outcome = promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="sqs:s3")

    assert outcome.status is Status.PROMOTED
    assert outcome.reason == "attempt 1 (abandoned): promoted last.pt (epoch 3)"  # last = the highest epoch
    assert outcome.files["last"].checksum_source == "store"  # the store's SHA-256 of the single PUT
    assert paths(engine, 42) == {1: None, 2: None, 3: URI + "last.pt"}
    [record] = records(engine, 42)
    assert (record["outcome"], record["last_epoch"]) == ("promoted", 3)
    assert "(abandoned)" in record["reason"]


def test_a_multipart_file_without_a_stored_sha256_is_hashed_and_its_crc64nvme_listed(
    sweeper, promoter, engine, s3, layout, monkeypatch
):
    add_epochs(engine, 42, {1: 0.3, 2: 0.5})
    big = backed_up(s3, layout, 1, body=weights("last-big", 11 * MiB), multipart_threshold=5 * MiB, part_size=5 * MiB)

    [result] = sweeper.sweep().results

    assert result.action is Action.SWEPT
    last = staged_manifest(s3, layout, 1).checkpoints.last
    assert last is not None and last.sha256 == hashlib.sha256(big).hexdigest()
    if crc64nvme_available():  # the trainer extra: the parts carried it, and the store keeps the whole file's
        assert last.crc64nvme is not None
        monkeypatch.setattr(promoter.storage, "stream_digests", lambda *a, **k: pytest.fail("read the file"))
    outcome = promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")
    assert outcome.status is Status.PROMOTED
    assert outcome.files["last"].checksum_source == ("crc64nvme" if crc64nvme_available() else "stream")


def test_a_folder_that_changed_within_the_age_is_left_alone(layout, storage, store, s3):
    backed_up(s3, layout, 1)
    sweeper = Sweeper(layout, storage, store, clock=in_the_future(timedelta(minutes=30)))

    [result] = sweeper.sweep(timedelta(hours=1)).results

    assert result.action is Action.SKIPPED
    assert result.reason.startswith("changed 30m") and result.reason.endswith("its trainer may be alive")
    assert not storage.exists(layout.manifest_key(attempt(1)))


def test_an_attempt_older_than_the_promoted_one_is_never_completed(sweeper, promoter, trainer, engine, s3, layout):
    backed_up(s3, layout, 1)  # died; the job was restarted as attempt 2, which completed and was promoted
    trainer.finish(attempt(2), status="completed")
    promoter.promote_key(layout.bucket, layout.manifest_key(attempt(2)), trigger="test")
    backed_up(s3, layout, 2, name="extra")  # noise in a folder that has its manifest

    report = sweeper.sweep()

    [result] = report.results
    assert (result.action, result.reason) == (Action.SKIPPED, "attempt 1 is older than the promoted attempt 2")
    assert report.examined == 2
    assert not S3Storage(s3, layout.bucket).exists(layout.manifest_key(attempt(1)))


def test_a_newer_attempt_than_the_promoted_one_is_completed_and_supersedes_it(
    sweeper, promoter, trainer, engine, s3, layout
):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4, 21: 0.45, 22: 0.44})
    trainer.finish(attempt(1))
    promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")
    backed_up(s3, layout, 2)  # resumed as attempt 2, then killed

    [result] = sweeper.sweep().results
    outcome = promoter.promote_key(layout.bucket, layout.manifest_key(attempt(2)), trigger="test")

    assert result.action is Action.SWEPT
    assert outcome.status is Status.PROMOTED
    # last.pt is attempt 2's (the highest epoch); best.pt stays attempt 1's epoch 18, which it still is
    assert {e: p for e, p in paths(engine, 42).items() if p} == {18: URI + "best.pt", 22: URI + "last.pt"}


def test_a_manifest_written_meanwhile_wins(layout, storage, store, s3, trainer):
    backed_up(s3, layout, 1)

    class TrainerWritesFirst:
        """The store, where the trainer's own manifest lands just before the sweeper's write."""

        def __getattr__(self, name: str) -> Any:
            return getattr(storage, name)

        def create(self, key: str, body: bytes, content_type: str) -> bool:
            trainer.finish(attempt(1), status="interrupted")
            return storage.create(key, body, content_type)

    [result] = Sweeper(layout, TrainerWritesFirst(), store, clock=in_the_future()).sweep().results

    assert (result.action, result.reason) == (Action.SKIPPED, "a manifest appeared meanwhile; it stands")
    assert staged_manifest(s3, layout, 1).status == "interrupted"


def test_create_writes_only_where_no_object_is(storage, layout):
    key = layout.manifest_key(attempt(1))
    assert storage.create(key, b"first", "application/json") is True
    assert storage.create(key, b"second", "application/json") is False
    assert storage.read(key, 100) == b"first"


def test_a_file_replaced_after_the_listing_is_left_for_the_next_run(layout, storage, store, s3):
    backed_up(s3, layout, 1)

    class BackupLandsDuringTheSweep:
        def __getattr__(self, name: str) -> Any:
            return getattr(storage, name)

        def head(self, key: str) -> Any:
            backed_up(s3, layout, 1, body=b"a newer last.pt")
            return storage.head(key)

    [result] = Sweeper(layout, BackupLandsDuringTheSweep(), store, clock=in_the_future()).sweep().results

    assert result.action is Action.SKIPPED
    assert "replaced after it was listed" in result.reason
    assert not storage.exists(layout.manifest_key(attempt(1)))


def test_a_store_failure_on_one_folder_is_reported_and_the_others_are_swept(layout, storage, store, s3):
    backed_up(s3, layout, 1)
    other = JobRef(job_id=43, project_id=7)
    Uploader(s3, layout.bucket, UploadPolicy(progress=False)).upload(
        b"weights", layout.staged_key(attempt(1, other), "last")
    )

    class FailsOnJob42:
        def __getattr__(self, name: str) -> Any:
            return getattr(storage, name)

        def head(self, key: str) -> Any:
            if "/jobs/42/" in key:
                raise StorageUnavailable("SlowDown on " + key)
            return storage.head(key)

    report = Sweeper(layout, FailsOnJob42(), store, clock=in_the_future()).sweep()

    assert [(r.ref.job.job_id, r.action) for r in report.results] == [(42, Action.FAILED), (43, Action.SWEPT)]
    assert report.count(Action.FAILED) == 1


def test_the_metric_is_taken_from_another_manifest_of_the_job(sweeper, trainer, s3, layout):
    trainer.finish(attempt(1), metric=Metric(name="val_loss", mode="min"))
    backed_up(s3, layout, 1, name="ignored")
    backed_up(s3, layout, 2, name="best")

    [result] = sweeper.sweep().results

    assert result.action is Action.SWEPT
    assert staged_manifest(s3, layout, 2).metric == Metric(name="val_loss", mode="min")


def test_a_dry_run_says_what_it_would_complete_and_writes_nothing(sweeper, storage, s3, layout):
    backed_up(s3, layout, 1)

    report = sweeper.sweep(dry_run=True)

    assert [r.action for r in report.results] == [Action.WOULD_SWEEP]
    assert not storage.exists(layout.manifest_key(attempt(1)))
    assert report.summary() == "1 attempt folder, 1 without a manifest: 1 would sweep (older than 6h00m, dry run)"


def test_out_of_time_defers_the_rest_to_the_next_run(sweeper, storage, s3, layout):
    backed_up(s3, layout, 1)

    [result] = sweeper.sweep(out_of_time=lambda: True).results

    assert result.action is Action.DEFERRED
    assert not storage.exists(layout.manifest_key(attempt(1)))


# --- ckpt sweep ------------------------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch, database_url, engine, s3):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CHECKPOINT_BUCKET", "vision-platform-prod")


def test_ckpt_sweep_prints_what_it_would_do_then_does_it(cli_env, s3, layout, capsys):
    backed_up(s3, layout, 1)
    folder = layout.attempt_folder(attempt(1))

    assert main(["sweep", "--older-than", "1h", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"skipped      {folder}  changed ")
    assert lines[-1] == "1 attempt folder, 1 without a manifest: 1 skipped (older than 1h00m, dry run)"

    assert main(["sweep", "--older-than", "0s", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(f"would sweep  {folder}  last.pt, no manifest")
    assert not S3Storage(s3, layout.bucket).exists(layout.manifest_key(attempt(1)))

    assert main(["sweep", "--older-than", "0s"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"swept        {folder}manifest.json  abandoned: last.pt, no manifest")
    assert lines[-1] == "1 attempt folder, 1 without a manifest: 1 swept (older than 0s)"
    assert staged_manifest(s3, layout, 1).status == "abandoned"

    assert main(["sweep", "--older-than", "0s"]) == 0  # the folder has its manifest now
    assert capsys.readouterr().out.splitlines() == ["1 attempt folder, 0 without a manifest (older than 0s)"]


def test_ckpt_sweep_refuses_a_duration_it_cannot_read(cli_env, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--older-than", "6 hours"])
    assert exit_.value.code == 2
    assert "e.g. 90s, 30m, 6h" in capsys.readouterr().err


# --- SweeperFunction's handler ---------------------------------------------------------------------------------------


@pytest.fixture
def sweeper_function(monkeypatch, database_url, engine, s3):
    from sweeper import handler

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CHECKPOINT_BUCKET", "vision-platform-prod")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    monkeypatch.setattr(handler, "_sweeper", None)
    return handler


def test_the_scheduled_function_completes_abandoned_attempts_and_publishes_its_counts(
    sweeper_function, monkeypatch, s3, layout, capsys
):
    monkeypatch.setenv("SWEEP_OLDER_THAN", "0s")
    backed_up(s3, layout, 1)
    backed_up(s3, layout, 2)
    Uploader(s3, layout.bucket, UploadPolicy(progress=False)).upload(b"{}", layout.manifest_key(attempt(2)))

    answer = sweeper_function.lambda_handler(
        json.loads((EVENTS / "sweeper-schedule.json").read_text()), ScheduledContext()
    )

    assert answer == {
        "older_than": 0,
        "examined": 2,
        "swept": [layout.attempt_folder(attempt(1))],
        "skipped": 0,
        "deferred": 0,
        "failed": 0,
    }
    assert staged_manifest(s3, layout, 1).status == "abandoned"
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    [emf] = [blob for blob in emitted if "SweepFindings" in blob]  # (the cold start has a blob of its own)
    [directive] = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "CheckpointPipeline"
    assert ["service"] in directive["Dimensions"] and emf["service"] == "checkpoint-promotion"
    assert (emf["SweptAttempts"], emf["SweepFindings"], emf["SweepFailures"]) == ([2.0], [1.0], [0.0])


def test_the_scheduled_function_waits_the_configured_age(sweeper_function, monkeypatch, s3, layout):
    monkeypatch.setenv("SWEEP_OLDER_THAN", "6h")
    backed_up(s3, layout, 1)

    answer = sweeper_function.lambda_handler({}, ScheduledContext())

    assert (answer["swept"], answer["skipped"]) == ([], 1)


def test_a_malformed_age_fails_the_run_with_the_setting_named(sweeper_function, monkeypatch):
    from ckpt.errors import ConfigurationError

    monkeypatch.setenv("SWEEP_OLDER_THAN", "six hours")
    with pytest.raises(ConfigurationError, match="SWEEP_OLDER_THAN"):
        sweeper_function.lambda_handler({}, ScheduledContext())


def test_the_abandoned_manifest_carries_the_files_as_staged_by_a_trainer(sweeper, trainer, s3, layout):
    # best.pt and last.pt staged at the end of training, then the trainer was killed before its manifest
    files = {"best": Checkpoint(weights("best-1")), "last": Checkpoint(weights("last-1"))}
    trainer.finish(attempt(1), files=files)
    s3.delete_object(Bucket=layout.bucket, Key=layout.manifest_key(attempt(1)))

    [result] = sweeper.sweep().results

    assert result.action is Action.SWEPT
    manifest = staged_manifest(s3, layout, 1)
    assert {name: entry.sha256 for name, entry in manifest.checkpoints.present().items()} == {
        name: hashlib.sha256(checkpoint.read()).hexdigest() for name, checkpoint in files.items()
    }
