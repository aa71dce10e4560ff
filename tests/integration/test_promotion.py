"""The promotion against moto's S3 and a real database (each test runs on SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest

from ckpt.adapters.storage import MiB
from ckpt.contract.keys import JobRef
from ckpt.contract.manifest import Metric
from ckpt.contract.outcome import Status
from ckpt.trainer.staging import Checkpoint
from ckpt.trainer.upload import UploadPolicy
from tests.support import JOB, add_epochs, attempt, canonical_bytes, paths, records, weights

URI_BEST = "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/best.pt"
URI_LAST = "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/last.pt"


def test_interrupted_job_gets_best_and_last_rows_and_canonical_files(engine, promoter, trainer, s3, layout):
    add_epochs(engine, 42, {epoch: epoch / 100 for epoch in range(1, 21)} | {19: 0.10, 20: 0.12})
    trainer.finish(attempt(1), status="interrupted")

    outcome = promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")

    assert outcome.status is Status.PROMOTED
    expected = dict.fromkeys(range(1, 21)) | {18: URI_BEST, 20: URI_LAST}
    assert paths(engine, 42) == expected
    assert canonical_bytes(s3, layout, JOB, "best") == weights("best-1")
    assert canonical_bytes(s3, layout, JOB, "last") == weights("last-1")
    [record] = records(engine, 42)
    assert (record["outcome"], record["attempt"], record["best_epoch"], record["last_epoch"]) == ("promoted", 1, 18, 20)


def test_staged_files_stay_after_promotion(engine, promoter, trainer, s3, layout):
    trainer.finish(attempt(1))
    promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")
    staged = s3.list_objects_v2(Bucket=layout.bucket, Prefix=layout.attempt_folder(attempt(1)))["Contents"]
    assert sorted(obj["Key"].rsplit("/", 1)[1] for obj in staged) == ["best.pt", "last.pt", "manifest.json"]


def test_checksum_source_is_the_store_when_it_keeps_sha256_and_a_stream_hash_otherwise(
    engine, promoter, trainer, s3, layout
):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    trainer.finish(attempt(1))
    # Replace last.pt by an upload that carries no checksum: same bytes, so the manifest still holds.
    key = layout.staged_key(attempt(1), "last")
    s3.put_object(Bucket=layout.bucket, Key=key, Body=weights("last-1"))

    outcome = promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")

    assert {name: f.checksum_source for name, f in outcome.files.items()} == {"best": "store", "last": "stream"}
    [record] = records(engine, 42)
    assert record["details"]["files"]["last"]["checksum_source"] == "stream"


MULTIPART = UploadPolicy(multipart_threshold=5 * MiB, part_size=5 * MiB)


def test_a_multipart_file_is_verified_by_the_stores_crc64nvme_without_reading_it(
    engine, promoter, trainer, s3, layout, monkeypatch
):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    big = weights("last-1", 11 * MiB)
    trainer.finish(attempt(1), files={"last": Checkpoint(big, epoch=20)}, policy=MULTIPART)
    reads = []
    monkeypatch.setattr(promoter.storage, "stream_digests", lambda *args, **kwargs: reads.append(args))

    outcome = promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")

    assert outcome.status is Status.PROMOTED
    assert outcome.files["last"].checksum_source == "crc64nvme"
    assert reads == []
    assert canonical_bytes(s3, layout, JOB, "last") == big


def test_a_store_crc64nvme_that_differs_from_the_manifests_is_a_recorded_rejection(
    engine, promoter, trainer, s3, layout
):
    trainer.finish(attempt(1), files={"last": Checkpoint(weights("last-1", 11 * MiB), epoch=20)}, policy=MULTIPART)
    manifest = json.loads(s3.get_object(Bucket=layout.bucket, Key=layout.manifest_key(attempt(1)))["Body"].read())
    manifest["checkpoints"]["last"]["crc64nvme"] = "AAAAAAAAAAA="
    trainer.put_manifest(attempt(1), json.dumps(manifest).encode())

    outcome = promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")

    assert outcome.status is Status.REJECTED
    assert "CRC-64/NVME" in outcome.reason and "AAAAAAAAAAA=" in outcome.reason
    assert canonical_bytes(s3, layout, JOB, "last") is None


def test_unknown_epochs_come_from_the_database(engine, promoter, trainer, layout):
    add_epochs(engine, 42, {1: 0.30, 2: 0.25, 3: 0.20, 4: None})
    files = {"best": Checkpoint(weights("b"), epoch=None), "last": Checkpoint(weights("l"), epoch=None)}
    trainer.finish(attempt(1), files=files, metric=Metric(name="loss", mode="min"))

    promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")

    assert paths(engine, 42) == {1: None, 2: None, 3: URI_BEST, 4: URI_LAST}


def test_best_and_last_on_the_same_epoch_share_one_row_holding_the_best_uri(engine, promoter, trainer, layout):
    add_epochs(engine, 42, {1: 0.1, 2: 0.2})
    files = {"best": Checkpoint(weights("b"), epoch=2), "last": Checkpoint(weights("l"), epoch=2)}
    trainer.finish(attempt(1), status="completed", files=files)

    promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")

    assert paths(engine, 42) == {1: None, 2: URI_BEST}


def test_early_stop_with_last_only(engine, promoter, trainer, s3, layout):
    add_epochs(engine, 42, {1: None, 2: None})
    trainer.finish(attempt(1), files={"last": Checkpoint(weights("l"), epoch=2)})

    outcome = promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")

    assert outcome.status is Status.PROMOTED
    assert paths(engine, 42) == {1: None, 2: URI_LAST}
    assert canonical_bytes(s3, layout, JOB, "best") is None


def test_crash_before_any_checkpoint_is_recorded_with_its_error(engine, promoter, trainer, layout):
    add_epochs(engine, 42, {1: None})
    trainer.finish(attempt(1), status="failed", files={}, error="CUDA out of memory")

    outcome = promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")

    assert outcome.status is Status.PROMOTED
    assert "no checkpoints" in outcome.reason
    assert paths(engine, 42) == {1: None}


def test_test_jobs_use_their_own_layout(engine, promoter, trainer, s3, layout):
    job = JobRef(job_id=9)
    add_epochs(engine, 9, {1: 0.5, 2: 0.6})
    files = {"best": Checkpoint(weights("b"), epoch=2), "last": Checkpoint(weights("l"), epoch=2)}
    trainer.finish(attempt(1, job), files=files)

    promoter.promote_key(layout.bucket, "staging/test-jobs/job_9/attempts/1/manifest.json", trigger="test")

    assert paths(engine, 9) == {1: None, 2: "r2://vision-platform-prod/checkpoints/test-jobs/job_9/best.pt"}
    assert canonical_bytes(s3, layout, job, "last") == weights("l")


def test_rows_the_platform_has_not_written_are_reported_not_invented(engine, promoter, trainer, layout):
    add_epochs(engine, 42, {18: 0.9})
    trainer.finish(attempt(1))  # best 18, last 20: no row for epoch 20

    outcome = promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")

    assert outcome.missing_rows == [20]
    assert paths(engine, 42) == {18: URI_BEST}
    assert records(engine, 42)[0]["details"]["missing_rows"] == [20]


def test_other_jobs_rows_are_never_touched(engine, promoter, trainer, layout):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    add_epochs(engine, 43, {18: 0.5, 20: 0.4})
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE validation_results SET checkpoint_path = 'r2://x/other' WHERE job_id = 43 AND epoch = 18"
        )
    trainer.finish(attempt(1))

    promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")

    assert paths(engine, 43) == {18: "r2://x/other", 20: None}


def test_a_newer_attempt_moves_the_paths_and_clears_the_old_rows(engine, promoter, trainer, s3, layout):
    add_epochs(engine, 42, {epoch: epoch / 100 for epoch in range(1, 31)})
    trainer.finish(attempt(1))  # best 18, last 20
    promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")
    files = {"best": Checkpoint(weights("best-2"), epoch=29), "last": Checkpoint(weights("last-2"), epoch=30)}
    trainer.finish(attempt(2), status="completed", files=files)

    promoter.promote_key(layout.bucket, layout.manifest_key(attempt(2)), trigger="test")

    assert {e: p for e, p in paths(engine, 42).items() if p} == {29: URI_BEST, 30: URI_LAST}
    assert canonical_bytes(s3, layout, JOB, "best") == weights("best-2")


def test_an_attempt_without_best_keeps_the_best_an_earlier_attempt_promoted(engine, promoter, trainer, s3, layout):
    add_epochs(engine, 42, {epoch: epoch / 100 for epoch in range(1, 23)})
    trainer.finish(attempt(1))  # best 18, last 20
    promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")
    trainer.finish(attempt(2), status="failed", files={"last": Checkpoint(weights("last-2"), epoch=22)})

    promoter.promote_key(layout.bucket, layout.manifest_key(attempt(2)), trigger="test")

    assert {e: p for e, p in paths(engine, 42).items() if p} == {18: URI_BEST, 22: URI_LAST}
    assert canonical_bytes(s3, layout, JOB, "best") == weights("best-1")


@pytest.mark.parametrize("dry_run", [True, False])
def test_reprocess_promotes_the_newest_staged_attempt(engine, promoter, trainer, s3, layout, dry_run):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    trainer.finish(attempt(1))
    trainer.finish(attempt(3))
    s3.put_object(Bucket=layout.bucket, Key="staging/projects/7/jobs/42/attempts/4/best.pt", Body=b"no manifest")

    outcome = promoter.reprocess(JOB, dry_run=dry_run)

    assert outcome.ref == attempt(3)
    if dry_run:
        assert outcome.status is Status.PLANNED
        assert outcome.row_paths == {18: URI_BEST, 20: URI_LAST}
        assert paths(engine, 42) == {18: None, 20: None}
        assert canonical_bytes(s3, layout, JOB, "best") is None
        assert records(engine, 42) == []
    else:
        assert outcome.status is Status.PROMOTED
        assert paths(engine, 42) == {18: URI_BEST, 20: URI_LAST}


def test_reprocess_reruns_a_promotion_that_was_already_done(engine, promoter, trainer, layout):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    trainer.finish(attempt(1))
    promoter.promote_key(layout.bucket, layout.manifest_key(attempt(1)), trigger="test")
    add_epochs(engine, 42, {21: 0.1})  # nothing points at it; a re-run leaves the same state

    outcome = promoter.reprocess(JOB, attempt=1)

    assert outcome.status is Status.PROMOTED
    assert paths(engine, 42) == {18: URI_BEST, 20: URI_LAST, 21: None}


def test_reprocess_without_any_staged_manifest_is_rejected(engine, promoter):
    from ckpt.errors import Rejected

    with pytest.raises(Rejected, match="no staged manifest"):
        promoter.reprocess(JOB)


def test_in_a_versioned_bucket_each_promotion_records_the_version_it_wrote_and_older_ones_stay(
    engine, promoter, trainer, s3, layout
):
    s3.put_bucket_versioning(Bucket=layout.bucket, VersioningConfiguration={"Status": "Enabled"})
    add_epochs(engine, 42, {epoch: epoch / 100 for epoch in range(1, 31)})
    key = layout.canonical_key(JOB, "last")
    written = []
    for n, epochs in ((1, (18, 20)), (2, (29, 30))):
        files = {
            "best": Checkpoint(weights(f"best-{n}"), epochs[0]),
            "last": Checkpoint(weights(f"last-{n}"), epochs[1]),
        }
        trainer.finish(attempt(n), files=files)
        promoter.promote_key(layout.bucket, layout.manifest_key(attempt(n)), trigger="test")
        written.append(records(engine, 42)[-1]["details"]["files"]["last"]["canonical_version_id"])

    versions = s3.list_object_versions(Bucket=layout.bucket, Prefix=key)["Versions"]
    assert sorted(written) == sorted(v["VersionId"] for v in versions) and len(set(written)) == 2
    first = s3.get_object(Bucket=layout.bucket, Key=key, VersionId=written[0])["Body"].read()
    assert first == weights("last-1")  # the promotion it replaced is still there, as a noncurrent version
    assert canonical_bytes(s3, layout, JOB, "last") == weights("last-2")
