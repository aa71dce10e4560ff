"""Issue 9, item 4: staged files are deleted after a committed promotion (DELETE_STAGED_AFTER_PROMOTION), never
before the commit, never a newer attempt's and never a version a manifest may still need; a failed deletion
never fails the promotion. And a trainer's next attempt counts what was promoted, not only what is staged.
moto's S3 in process; every test that promotes runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from ckpt.contract.outcome import Status
from ckpt.errors import DatabaseUnavailable, StorageUnavailable
from ckpt.promotion.cleanup import StagingCleanup
from ckpt.promotion.promoter import Promoter
from ckpt.trainer.staging import Checkpoint, next_attempt
from tests.support import (
    BUCKET,
    JOB,
    HookedStorage,
    add_epochs,
    attempt,
    canonical_bytes,
    commit_fails,
    records,
    weights,
)

FOLDER = "staging/projects/7/jobs/42/attempts"


def staged(s3: Any) -> list[str]:
    """The job's staged keys, below its attempts folder."""
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{FOLDER}/")
    return sorted(item["Key"][len(FOLDER) + 1 :] for item in listing.get("Contents", []))


def promote(promoter: Promoter, n: int) -> Any:
    return promoter.promote_key(BUCKET, promoter.layout.manifest_key(attempt(n)), trigger="test")


@pytest.fixture
def cleaning(layout, storage, store) -> Promoter:
    """The promotion as the function runs it with DeleteStagedAfterPromotion=true."""
    return Promoter(layout, storage, store, cleanup=StagingCleanup(layout, storage))


@pytest.fixture
def epochs(engine) -> None:
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})


def test_off_by_default_nothing_staged_is_ever_deleted(epochs, promoter, trainer, s3):
    trainer.finish(attempt(1))
    trainer.finish(attempt(2))

    assert promote(promoter, 2).status is Status.PROMOTED

    assert promoter.cleanup is None
    assert staged(s3) == [f"{n}/{f}" for n in (1, 2) for f in ("best.pt", "last.pt", "manifest.json")]


def test_after_the_commit_the_promoted_and_older_attempts_checkpoints_go_and_their_manifests_stay(
    epochs, cleaning, trainer, s3, layout, engine
):
    trainer.finish(attempt(1))
    trainer.finish(attempt(2))

    outcome = promote(cleaning, 2)

    assert outcome.status is Status.PROMOTED
    assert staged(s3) == ["1/manifest.json", "2/manifest.json"]
    assert sorted(outcome.cleanup.deleted) == sorted(
        f"{FOLDER}/{n}/{f}" for n in (1, 2) for f in ("best.pt", "last.pt")
    )
    assert (outcome.cleanup.kept, outcome.cleanup.failed) == ((), ())
    assert canonical_bytes(s3, layout, JOB, "best") == weights("best-2")  # nothing canonical is touched
    assert canonical_bytes(s3, layout, JOB, "last") == weights("last-2")
    # The manifests stay, so every later event about them still ends in its own outcome.
    assert promote(cleaning, 2).status is Status.DUPLICATE
    assert promote(cleaning, 1).status is Status.SUPERSEDED
    assert [r["outcome"] for r in records(engine, 42)] == ["promoted", "duplicate", "superseded"]


def test_a_failure_at_commit_deletes_nothing_and_the_retry_cleans_up(epochs, cleaning, trainer, s3, engine):
    trainer.finish(attempt(1))
    trainer.finish(attempt(2))
    everything = staged(s3)

    with commit_fails(engine), pytest.raises(DatabaseUnavailable, match="injected"):
        promote(cleaning, 2)

    assert staged(s3) == everything  # the retry needs them: nothing went before the commit
    assert records(engine, 42) == []

    assert promote(cleaning, 2).status is Status.PROMOTED
    assert staged(s3) == ["1/manifest.json", "2/manifest.json"]


def test_a_failure_before_the_commit_deletes_nothing(epochs, layout, storage, store, trainer, s3):
    trainer.finish(attempt(1))
    everything = staged(s3)

    class FailingCopy(HookedStorage):
        def copy(self, *args: Any, **kwargs: Any) -> Any:
            raise StorageUnavailable("injected: 503 Slow Down")

    promoter = Promoter(layout, FailingCopy(storage), store, cleanup=StagingCleanup(layout, storage))
    with pytest.raises(StorageUnavailable):
        promote(promoter, 1)

    assert staged(s3) == everything


def test_a_newer_attempt_is_never_touched_staged_or_still_training(epochs, cleaning, trainer, s3):
    trainer.finish(attempt(1))
    trainer.finish(attempt(2))
    trainer.finish(attempt(3))  # staged, its promotion still to come
    s3.put_object(Bucket=BUCKET, Key=f"{FOLDER}/4/last.pt", Body=b"a backup of a run still training")

    assert promote(cleaning, 2).status is Status.PROMOTED

    assert staged(s3) == [
        "1/manifest.json",
        "2/manifest.json",
        "3/best.pt",
        "3/last.pt",
        "3/manifest.json",
        "4/last.pt",
    ]
    assert promote(cleaning, 3).status is Status.PROMOTED  # it still has everything its manifest names
    assert staged(s3) == ["1/manifest.json", "2/manifest.json", "3/manifest.json", "4/last.pt"]


def test_only_what_was_verified_goes_a_file_the_manifest_did_not_list_stays(epochs, cleaning, trainer, s3):
    trainer.finish(attempt(1), files={"last": Checkpoint(weights("last-1"), epoch=20)})
    s3.put_object(Bucket=BUCKET, Key=f"{FOLDER}/1/best.pt", Body=b"written after the manifest, never verified")

    assert promote(cleaning, 1).status is Status.PROMOTED

    assert staged(s3) == ["1/best.pt", "1/manifest.json"]


@pytest.mark.parametrize("moment", ["before the cleanup reads it", "between its read and its deletion"])
def test_a_file_re_staged_after_the_promotion_verified_it_stays_for_the_new_manifest(
    epochs, layout, storage, store, trainer, s3, moment
):
    trainer.finish(attempt(1))
    best = f"{FOLDER}/1/best.pt"

    def re_stage(key: str) -> None:
        if key == best and not restaged:
            restaged.append(key)
            s3.put_object(Bucket=BUCKET, Key=best, Body=weights("best-1, trained again"))

    restaged: list[str] = []
    hooks = {"before_head": re_stage} if moment.startswith("before") else {"before_delete": re_stage}
    promoter = Promoter(layout, storage, store, cleanup=StagingCleanup(layout, HookedStorage(storage, **hooks)))

    outcome = promote(promoter, 1)

    assert outcome.status is Status.PROMOTED
    assert outcome.cleanup.kept == (best,)
    assert staged(s3) == ["1/best.pt", "1/manifest.json"]
    assert s3.get_object(Bucket=BUCKET, Key=best)["Body"].read() == weights("best-1, trained again")


def test_a_deletion_failure_leaves_the_promotion_promoted_recorded_and_counted(
    epochs, layout, storage, store, trainer, s3, engine, caplog
):
    trainer.finish(attempt(1))
    trainer.finish(attempt(2))

    def refuse(key: str) -> None:
        if key.endswith("/1/best.pt") or key.endswith("/2/last.pt"):
            raise StorageUnavailable(f"AccessDenied on {key}: injected")

    promoter = Promoter(
        layout, storage, store, cleanup=StagingCleanup(layout, HookedStorage(storage, before_delete=refuse))
    )

    outcome = promote(promoter, 2)

    assert outcome.status is Status.PROMOTED
    assert sorted(outcome.cleanup.failed) == [f"{FOLDER}/1/best.pt", f"{FOLDER}/2/last.pt"]
    assert sorted(outcome.cleanup.deleted) == [f"{FOLDER}/1/last.pt", f"{FOLDER}/2/best.pt"]
    assert staged(s3) == ["1/best.pt", "1/manifest.json", "2/last.pt", "2/manifest.json"]  # for the lifecycle rule
    assert [r["outcome"] for r in records(engine, 42)] == ["promoted"]
    assert "could not delete staging/projects/7/jobs/42/attempts/1/best.pt" in caplog.text


def test_a_failed_listing_still_lets_the_promoted_attempts_own_files_go(epochs, layout, storage, store, trainer, s3):
    trainer.finish(attempt(1))
    trainer.finish(attempt(2))

    class NoListing(HookedStorage):
        def list_folders(self, prefix: str) -> list[str]:
            raise StorageUnavailable("injected: 503 on the listing")

    promoter = Promoter(layout, storage, store, cleanup=StagingCleanup(layout, NoListing(storage)))

    outcome = promote(promoter, 2)

    assert outcome.status is Status.PROMOTED
    assert outcome.cleanup.failed == (f"{FOLDER}/",)
    assert staged(s3) == ["1/best.pt", "1/last.pt", "1/manifest.json", "2/manifest.json"]


def test_nothing_is_deleted_for_an_outcome_that_is_no_promotion(epochs, cleaning, trainer, s3):
    trainer.finish(attempt(1))
    trainer.finish(attempt(2))
    everything = staged(s3)

    planned = cleaning.reprocess(JOB, 2, dry_run=True)
    s3.put_object(Bucket=BUCKET, Key=f"{FOLDER}/2/best.pt", Body=b"not the bytes the manifest names")
    rejected = promote(cleaning, 2)

    assert (planned.status, planned.cleanup) == (Status.PLANNED, None)
    assert (rejected.status, rejected.cleanup) == (Status.REJECTED, None)
    assert staged(s3) == everything


# --- the next attempt counts what was promoted ------------------------------------------------------------


def test_with_staging_emptied_a_restarted_job_runs_as_the_attempt_after_the_promoted_one(
    epochs, promoter, trainer, s3, layout
):
    trainer.finish(attempt(3))
    assert promote(promoter, 3).status is Status.PROMOTED
    for key in staged(s3):  # what a staging lifecycle rule does after StagingExpirationDays
        s3.delete_object(Bucket=BUCKET, Key=f"{FOLDER}/{key}")
    assert staged(s3) == []

    n = next_attempt(s3, layout, JOB)

    assert n == 4
    trainer.finish(attempt(n))
    assert promote(promoter, n).status is Status.PROMOTED  # not superseded by its own job's past


def test_the_next_attempt_is_one_more_than_the_highest_of_staged_and_promoted(s3, layout, trainer):
    def canonical(name: str, metadata: dict[str, str]) -> None:
        s3.put_object(Bucket=BUCKET, Key=layout.canonical_key(JOB, name), Body=b"w", Metadata=metadata)

    assert next_attempt(s3, layout, JOB) == 1
    canonical("best", {"attempt": "3"})
    canonical("last", {"attempt": "5"})  # a later promotion that listed last.pt only
    assert next_attempt(s3, layout, JOB) == 6
    trainer.finish(attempt(7))
    assert next_attempt(s3, layout, JOB) == 8
    canonical("last", {"attempt": "07"})  # not an attempt as the promotion writes one: ignored, never misread
    canonical("best", {})  # written by hand
    assert next_attempt(s3, layout, JOB) == 8


def test_keys_that_may_not_read_the_canonical_prefix_number_from_staging_alone_and_say_so(
    s3, layout, trainer, monkeypatch, caplog
):
    from ckpt.adapters.storage import S3Storage

    s3.put_object(Bucket=BUCKET, Key=layout.canonical_key(JOB, "last"), Body=b"w", Metadata={"attempt": "5"})
    trainer.finish(attempt(2))
    real_head = S3Storage.head

    def forbidden_outside_staging(self: S3Storage, key: str) -> Any:
        if not key.startswith("staging/"):
            raise StorageUnavailable(f"403 on {key}: Forbidden")
        return real_head(self, key)

    monkeypatch.setattr(S3Storage, "head", forbidden_outside_staging)

    assert next_attempt(s3, layout, JOB) == 3  # staging alone, as before: the run still stages
    assert "numbering from staging alone" in caplog.text
