"""The contract's guarantees, each with a test that fails without the mechanism behind it.
Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ckpt.contract.outcome import Status
from ckpt.errors import DatabaseUnavailable, ObjectChanged, StorageUnavailable
from ckpt.promotion.promoter import Promoter
from ckpt.trainer.staging import Checkpoint
from tests.support import (
    JOB,
    HookedStorage,
    add_epochs,
    attempt,
    canonical_bytes,
    commit_fails,
    paths,
    records,
    weights,
)

URI_BEST = "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/best.pt"
URI_LAST = "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/last.pt"


class WrappedStore:
    """The real store with a hook run just before a promotion takes the job's lock."""

    def __init__(self, inner: Any, *, before_lock: Any) -> None:
        self.inner = inner
        self.before_lock = before_lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @contextmanager
    def job(self, job: Any) -> Iterator[Any]:
        self.before_lock(job)
        with self.inner.job(job) as tx:
            yield tx


def promote(promoter: Promoter, n: int = 1) -> Any:
    return promoter.promote_key(promoter.layout.bucket, promoter.layout.manifest_key(attempt(n)), trigger="test")


def state(engine: Any) -> tuple[Any, ...]:
    """Everything the database says about job 42 except the audit trail."""
    with engine.connect() as connection:
        job_state = connection.exec_driver_sql(
            "SELECT attempt, manifest_sha256, best_epoch, last_epoch FROM ckpt_job_state WHERE job_id = 42"
        ).all()
    return paths(engine, 42), job_state


# --- idempotent -------------------------------------------------------------------------------------------


def test_same_manifest_three_times_promotes_once(engine, promoter, trainer, s3, layout):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    trainer.finish(attempt(1))
    counting = HookedStorage(promoter.storage)
    promoter.storage = counting

    outcomes = [promote(promoter).status for _ in range(3)]
    end_state = state(engine)

    assert outcomes == [Status.PROMOTED, Status.DUPLICATE, Status.DUPLICATE]
    assert counting.copies == 2
    assert end_state[0] == {18: URI_BEST, 20: URI_LAST}
    assert [r["outcome"] for r in records(engine, 42)] == ["promoted", "duplicate", "duplicate"]


def test_two_workers_on_the_same_manifest_at_once_promote_once(engine, layout, storage, store, trainer):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    trainer.finish(attempt(1))
    # Both workers reach the job's lock at the same moment; the one that gets it second reads the state the
    # first committed.
    both_at_the_lock = threading.Barrier(2, timeout=20)
    wrapped = [HookedStorage(storage) for _ in range(2)]
    workers = [
        Promoter(layout, w, WrappedStore(store, before_lock=lambda job: both_at_the_lock.wait())) for w in wrapped
    ]
    outcomes: list[Any] = [None, None]

    def run(i: int) -> None:
        outcomes[i] = promote(workers[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(o.status for o in outcomes) == [Status.DUPLICATE, Status.PROMOTED]
    assert wrapped[0].copies + wrapped[1].copies == 2
    assert paths(engine, 42) == {18: URI_BEST, 20: URI_LAST}


# --- ordered ----------------------------------------------------------------------------------------------


def test_an_older_attempt_processed_after_a_newer_one_changes_nothing(engine, promoter, trainer, s3, layout):
    add_epochs(engine, 42, {epoch: epoch / 100 for epoch in range(1, 31)})
    trainer.finish(attempt(1))
    trainer.finish(
        attempt(2), files={"best": Checkpoint(weights("best-2"), 29), "last": Checkpoint(weights("last-2"), 30)}
    )
    promote(promoter, 2)
    before = state(engine)

    outcome = promote(promoter, 1)

    assert outcome.status is Status.SUPERSEDED
    assert state(engine) == before
    assert canonical_bytes(s3, layout, JOB, "best") == weights("best-2")


def test_an_older_attempt_overtaken_before_it_takes_the_lock_does_not_overwrite_the_newer_files(
    engine, layout, storage, store, trainer, s3
):
    add_epochs(engine, 42, {epoch: epoch / 100 for epoch in range(1, 31)})
    trainer.finish(attempt(1))
    trainer.finish(
        attempt(2), files={"best": Checkpoint(weights("best-2"), 29), "last": Checkpoint(weights("last-2"), 30)}
    )
    newer = Promoter(layout, storage, store)

    def newer_attempt_wins(job: Any) -> None:
        # Attempt 1's event is being handled; attempt 2 is promoted before attempt 1's worker takes the lock.
        assert promote(newer, 2).status is Status.PROMOTED

    older_storage = HookedStorage(storage)
    outcome = promote(Promoter(layout, older_storage, WrappedStore(store, before_lock=newer_attempt_wins)), 1)

    assert outcome.status is Status.SUPERSEDED
    assert older_storage.copies == 0
    assert canonical_bytes(s3, layout, JOB, "best") == weights("best-2")
    assert canonical_bytes(s3, layout, JOB, "last") == weights("last-2")
    assert {e: p for e, p in paths(engine, 42).items() if p} == {29: URI_BEST, 30: URI_LAST}


CORRECTED = {"best": Checkpoint(weights("best-1"), 17), "last": Checkpoint(weights("last-1"), 19)}  # same files


def test_a_manifest_re_staged_and_promoted_before_the_lock_is_read_anew_under_it(
    engine, layout, storage, store, trainer, s3
):
    add_epochs(engine, 42, {epoch: epoch / 100 for epoch in range(1, 21)})
    trainer.finish(
        attempt(1), files={"best": Checkpoint(weights("best-1"), 18), "last": Checkpoint(weights("last-1"), 20)}
    )

    def trainer_re_stages_and_another_worker_promotes_it(job: Any) -> None:
        # Worker A has v1's event; the trainer re-stages attempt 1 with corrected epochs (v2, same files), and
        # worker B promotes v2, before A takes the job's lock.
        trainer.finish(attempt(1), files=CORRECTED)
        assert promote(Promoter(layout, storage, store), 1).status is Status.PROMOTED

    worker_a = HookedStorage(storage)
    outcome = promote(
        Promoter(layout, worker_a, WrappedStore(store, before_lock=trainer_re_stages_and_another_worker_promotes_it))
    )

    assert outcome.status is Status.DUPLICATE  # A read v2, already promoted, not the v1 its event announced
    assert worker_a.copies == 0
    assert {e: p for e, p in paths(engine, 42).items() if p} == {17: URI_BEST, 19: URI_LAST}
    assert [(r["outcome"], r["best_epoch"]) for r in records(engine, 42)] == [("promoted", 17), ("duplicate", None)]


def test_a_manifest_re_staged_while_a_worker_holds_the_lock_is_promoted_after_it(
    engine, layout, storage, store, trainer, s3
):
    add_epochs(engine, 42, {epoch: epoch / 100 for epoch in range(1, 21)})
    trainer.finish(
        attempt(1), files={"best": Checkpoint(weights("best-1"), 18), "last": Checkpoint(weights("last-1"), 20)}
    )
    outcomes: dict[str, Any] = {}
    b_at_the_lock = threading.Event()
    worker_b = Promoter(layout, storage, WrappedStore(store, before_lock=lambda job: b_at_the_lock.set()))
    thread_b = threading.Thread(target=lambda: outcomes.__setitem__("b", promote(worker_b)))

    def trainer_re_stages_while_a_verifies(key: str) -> None:
        # A holds the lock and has read v1; the trainer re-stages attempt 1 (v2) and B, on v2's event, goes
        # for the lock.
        if not thread_b.is_alive() and "b" not in outcomes:
            trainer.finish(attempt(1), files=CORRECTED)
            thread_b.start()
            assert b_at_the_lock.wait(timeout=20)

    outcomes["a"] = promote(
        Promoter(layout, HookedStorage(storage, before_head=trainer_re_stages_while_a_verifies), store)
    )
    thread_b.join(timeout=60)

    assert (outcomes["a"].status, outcomes["b"].status) == (Status.PROMOTED, Status.PROMOTED)
    # B waited for A's commit, then read v2: the newer version is what stands.
    assert [(r["outcome"], r["best_epoch"]) for r in records(engine, 42)] == [("promoted", 18), ("promoted", 17)]
    assert {e: p for e, p in paths(engine, 42).items() if p} == {17: URI_BEST, 19: URI_LAST}


# --- verified ---------------------------------------------------------------------------------------------


def _tamper(trainer: Any, s3: Any, layout: Any, change: Any) -> None:
    trainer.finish(attempt(1))
    key = layout.manifest_key(attempt(1))
    manifest = json.loads(s3.get_object(Bucket=layout.bucket, Key=key)["Body"].read())
    change(manifest)
    trainer.put_manifest(attempt(1), json.dumps(manifest).encode())


@pytest.mark.parametrize(
    ("change", "checksum_free_upload", "reason"),
    [
        (lambda m: m["checkpoints"]["best"].update(size=m["checkpoints"]["best"]["size"] + 1), False, "bytes"),
        (lambda m: m["checkpoints"]["last"].update(sha256="0" * 64), False, "SHA-256"),
        (lambda m: m["checkpoints"]["last"].update(sha256="0" * 64), True, "SHA-256"),
    ],
    ids=["size", "sha256-from-store", "sha256-streamed"],
)
def test_a_file_that_does_not_match_its_manifest_is_not_promoted(
    engine, promoter, trainer, s3, layout, change, checksum_free_upload, reason
):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    _tamper(trainer, s3, layout, change)
    if checksum_free_upload:
        s3.put_object(Bucket=layout.bucket, Key=layout.staged_key(attempt(1), "last"), Body=weights("last-1"))

    outcome = promote(promoter)

    assert outcome.status is Status.REJECTED
    assert reason in outcome.reason
    assert paths(engine, 42) == {18: None, 20: None}
    assert canonical_bytes(s3, layout, JOB, "best") is None
    assert canonical_bytes(s3, layout, JOB, "last") is None


def test_a_file_swapped_after_verification_is_not_promoted(engine, layout, storage, store, trainer, s3):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    trainer.finish(attempt(1))

    def swap(copy_number: int, source: Any, *_: Any) -> None:
        s3.put_object(Bucket=layout.bucket, Key=source.key, Body=b"something else entirely")

    with pytest.raises(ObjectChanged):
        promote(Promoter(layout, HookedStorage(storage, before_copy=swap), store))

    assert paths(engine, 42) == {18: None, 20: None}
    assert canonical_bytes(s3, layout, JOB, "best") is None


# --- all or nothing -----------------------------------------------------------------------------------------


def test_a_storage_failure_after_the_first_copy_leaves_the_database_as_it_was_and_a_retry_converges(
    engine, layout, storage, store, trainer, s3
):
    add_epochs(engine, 42, {epoch: epoch / 100 for epoch in range(1, 31)})
    trainer.finish(attempt(1))
    promote(Promoter(layout, storage, store), 1)
    before = state(engine)
    trainer.finish(
        attempt(2), files={"best": Checkpoint(weights("best-2"), 29), "last": Checkpoint(weights("last-2"), 30)}
    )

    def fail_second(copy_number: int, *_: Any) -> None:
        if copy_number == 2:
            raise StorageUnavailable("injected: 503 Slow Down")

    with pytest.raises(StorageUnavailable):
        promote(Promoter(layout, HookedStorage(storage, before_copy=fail_second), store), 2)
    assert state(engine) == before
    assert [r["outcome"] for r in records(engine, 42)] == ["promoted"]

    assert promote(Promoter(layout, storage, store), 2).status is Status.PROMOTED
    assert {e: p for e, p in paths(engine, 42).items() if p} == {29: URI_BEST, 30: URI_LAST}
    assert canonical_bytes(s3, layout, JOB, "last") == weights("last-2")


def test_a_failure_at_commit_leaves_the_database_as_it_was_and_a_retry_converges(engine, promoter, trainer):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    trainer.finish(attempt(1))

    with (
        commit_fails(engine),
        pytest.raises(DatabaseUnavailable, match="injected"),
    ):  # transient: the message is redelivered
        promote(promoter)
    assert state(engine) == ({18: None, 20: None}, [])
    assert records(engine, 42) == []

    assert promote(promoter).status is Status.PROMOTED
    assert paths(engine, 42) == {18: URI_BEST, 20: URI_LAST}


# --- isolated -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("project_id", 8), ("job_id", 43), ("attempt", 2), ("project_id", None)],
)
def test_a_manifest_whose_ids_differ_from_its_key_is_rejected(engine, promoter, trainer, s3, layout, field, value):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    _tamper(trainer, s3, layout, lambda m: m.update({field: value}))

    outcome = promote(promoter)

    assert outcome.status is Status.REJECTED
    assert "differ from its key" in outcome.reason
    assert paths(engine, 42) == {18: None, 20: None}
    assert canonical_bytes(s3, layout, JOB, "best") is None


def test_a_job_cannot_be_moved_to_another_project(engine, promoter, trainer, s3, layout):
    from ckpt.contract.keys import JobRef

    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    trainer.finish(attempt(1))
    promote(promoter)
    other = JobRef(job_id=42, project_id=8)
    trainer.finish(attempt(2, other))

    outcome = promoter.promote_key(layout.bucket, layout.manifest_key(attempt(2, other)), trigger="test")

    assert outcome.status is Status.REJECTED
    assert "project 7" in outcome.reason
    assert canonical_bytes(s3, layout, other, "best") is None


def test_a_manifest_cannot_promote_files_from_another_attempts_folder(engine, promoter, trainer, s3, layout):
    trainer.finish(attempt(1))
    body = s3.get_object(Bucket=layout.bucket, Key=layout.manifest_key(attempt(1)))["Body"].read()
    trainer.put_manifest(attempt(2), body.replace(b'"attempt": 1', b'"attempt": 2'))

    outcome = promote(promoter, 2)

    assert outcome.status is Status.REJECTED
    assert "attempts/2/best.pt does not exist" in outcome.reason
    assert canonical_bytes(s3, layout, JOB, "best") is None


# --- explained ----------------------------------------------------------------------------------------------


BAD_MANIFESTS = {
    "malformed JSON": (b'{"schema_version": 1,', "not valid JSON"),
    "empty": (b"", "not valid JSON"),
    "unknown schema version": (b'{"schema_version": 2}', "unsupported schema_version 2"),
    "missing fields": (b'{"schema_version": 1, "project_id": 7, "attempt": 1, "status": "completed"}', "job_id"),
    "NaN": (
        b'{"schema_version": 1, "project_id": 7, "job_id": 42, "attempt": 1, "status": "completed", "x": NaN}',
        "NaN",
    ),
    "oversized": (b'{"schema_version": 1, "pad": "' + b"x" * 70_000 + b'"}', "64 KiB"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS, ids=list(BAD_MANIFESTS))
def test_every_bad_manifest_ends_in_a_recorded_rejection_with_its_reason(engine, promoter, trainer, case):
    body, reason = BAD_MANIFESTS[case]
    key = trainer.put_manifest(attempt(1), body)

    outcome = promoter.promote_key(promoter.layout.bucket, key, trigger="test")

    assert outcome.status is Status.REJECTED
    [record] = records(engine, 42)
    assert (record["outcome"], record["manifest_key"], record["attempt"]) == ("rejected", key, 1)
    assert reason in record["reason"]


@pytest.mark.parametrize(
    ("bucket", "key", "reason"),
    [
        ("someone-elses-bucket", "staging/projects/7/jobs/42/attempts/1/manifest.json", "not the configured bucket"),
        ("vision-platform-prod", "checkpoints/projects/7/jobs/42/manifest.json", "outside the staging prefix"),
        ("vision-platform-prod", "staging/projects/7/jobs/42/attempts/1/manifest.json", "there is no manifest at"),
    ],
)
def test_events_for_foreign_or_missing_objects_are_recorded_rejections(engine, promoter, bucket, key, reason):
    outcome = promoter.promote_key(bucket, key, trigger="test")

    assert outcome.status is Status.REJECTED
    [record] = records(engine)
    assert record["outcome"] == "rejected"
    assert reason in record["reason"]


@pytest.mark.parametrize(
    "key",
    [
        "staging/projects/7/jobs/42/attempts/1/best.pt",
        "staging/projects/7/jobs/42/attempts/0/manifest.json",
        "staging/projects/07/jobs/42/attempts/1/manifest.json",
        "staging/notes/manifest.json",
    ],
)
def test_non_manifest_staging_keys_are_ignored_and_not_recorded(engine, promoter, key):
    outcome = promoter.promote_key(promoter.layout.bucket, key, trigger="test")

    assert outcome.status is Status.IGNORED
    assert records(engine) == []


def test_a_listed_file_that_is_missing_is_a_recorded_rejection(engine, promoter, trainer, s3, layout):
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    trainer.finish(attempt(1))
    s3.delete_object(Bucket=layout.bucket, Key=layout.staged_key(attempt(1), "last"))

    outcome = promote(promoter)

    assert outcome.status is Status.REJECTED
    assert "last.pt is listed in the manifest but" in records(engine, 42)[0]["reason"]
    assert canonical_bytes(s3, layout, JOB, "best") is None  # nothing promoted, not even the file that exists


def test_a_duplicate_gives_rows_written_after_the_promotion_their_paths(engine, promoter, trainer, s3, layout):
    add_epochs(engine, 42, {18: 0.5})
    trainer.finish(attempt(1))  # best 18, last 20: the platform has not written epoch 20 yet
    assert promote(promoter).missing_rows == [20]
    add_epochs(engine, 42, {20: 0.4})
    counting = HookedStorage(promoter.storage)
    promoter.storage = counting

    outcome = promote(promoter)

    assert (outcome.status, outcome.missing_rows, counting.copies) == (Status.DUPLICATE, [], 0)
    assert paths(engine, 42) == {18: URI_BEST, 20: URI_LAST}


def test_epochs_left_to_the_database_are_resolved_again_when_a_duplicate_finds_the_rows(
    engine, promoter, trainer, s3, layout
):
    files = {"best": Checkpoint(weights("best-1"), epoch=None), "last": Checkpoint(weights("last-1"), epoch=None)}
    trainer.finish(attempt(1), files=files)  # `ckpt stage` without --best-epoch/--last-epoch
    assert promote(promoter).status is Status.PROMOTED  # before the platform wrote any row: epochs unknown
    add_epochs(engine, 42, {1: 0.2, 2: 0.9, 3: 0.5})

    outcome = promote(promoter)

    assert outcome.status is Status.DUPLICATE
    assert paths(engine, 42) == {1: None, 2: URI_BEST, 3: URI_LAST}
    assert state(engine)[1] == [(1, records(engine, 42)[0]["manifest_sha256"], 2, 3)]
