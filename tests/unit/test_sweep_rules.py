"""The sweeper's rules, pure: which attempt folders are completed as abandoned, given a listing, the job's promoted
attempt and the time; the manifest written for one; durations as operators write them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from ckpt.contract.keys import AttemptRef, JobRef, Layout
from ckpt.contract.manifest import Metric, parse_manifest
from ckpt.operations.sweep import (
    AttemptFolder,
    StoredFile,
    Verdict,
    abandoned_manifest,
    attempt_folder_of,
    attempt_folders,
    format_duration,
    judge_listing,
    judge_with_record,
    metric_source,
    parse_duration,
)

LAYOUT = Layout(bucket="vision-platform-prod")
NOW = datetime(2025, 11, 5, 15, 0, tzinfo=UTC)
SIX_HOURS = timedelta(hours=6)
JOB = JobRef(job_id=42, project_id=7)
FOLDER = "staging/projects/7/jobs/42/attempts/3/"


@dataclass(frozen=True)
class Obj:
    key: str
    last_modified: datetime
    size: int = 2048
    etag: str = '"0123456789abcdef0123456789abcdef"'


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def folder_of(*objects: Obj) -> AttemptFolder:
    [folder] = attempt_folders(objects, LAYOUT)
    return folder


# --- durations ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("6h", timedelta(hours=6)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("0s", timedelta(0)),
        (" 6h ", timedelta(hours=6)),
    ],
)
def test_durations_are_a_number_and_a_unit(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "6", "h", "6 h", "-6h", "6H", "1.5h", "6hours", "10000000000s", "6h30"])
def test_anything_else_is_no_duration(text):
    with pytest.raises(ValueError, match=r"e\.g\. 90s, 30m, 6h"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("duration", "shown"),
    [
        (timedelta(seconds=45), "45s"),
        (timedelta(minutes=12, seconds=5), "12m05s"),
        (timedelta(hours=7, minutes=2, seconds=59), "7h02m"),
        (timedelta(days=3, hours=4), "3d04h"),
        (timedelta(seconds=-3), "0s"),
    ],
)
def test_durations_are_shown_by_their_two_largest_units(duration, shown):
    assert format_duration(duration) == shown


# --- folders of a listing ----------------------------------------------------------------------------------------


def test_a_listing_is_grouped_by_attempt_folder_with_its_checkpoints_manifest_and_newest_change():
    listing = [
        Obj(FOLDER + "last.pt", ago(hours=8)),
        Obj(FOLDER + "best.pt", ago(hours=9)),
        Obj(FOLDER + "logs/train.log", ago(hours=7)),  # deeper: part of the folder, counts as a change
        Obj("staging/projects/7/jobs/42/attempts/2/last.pt", ago(days=1)),
        Obj("staging/projects/7/jobs/42/attempts/2/manifest.json", ago(days=1)),
        Obj("staging/test-jobs/job_5/attempts/1/last.pt", ago(hours=1)),
        Obj("staging/projects/7/jobs/42/notes.txt", ago(hours=1)),  # in no attempt folder
        Obj("staging/projects/07/jobs/42/attempts/1/last.pt", ago(hours=1)),  # not the layout's ids
    ]

    folders = attempt_folders(listing, LAYOUT)

    assert [f.prefix for f in folders] == [
        "staging/projects/7/jobs/42/attempts/2/",
        FOLDER,
        "staging/test-jobs/job_5/attempts/1/",
    ]
    older, newest, test_job = folders
    assert (older.has_manifest, newest.has_manifest) == (True, False)
    assert newest.ref == AttemptRef(job=JOB, attempt=3)
    assert sorted(newest.checkpoints) == ["best", "last"]
    assert newest.last_modified == ago(hours=7)
    assert test_job.ref == AttemptRef(job=JobRef(job_id=5), attempt=1)
    assert newest.manifest_key == FOLDER + "manifest.json"


@pytest.mark.parametrize(
    ("key", "folder"),
    [
        (FOLDER + "last.pt", FOLDER),
        (FOLDER + "a/b/c.pt", FOLDER),
        (FOLDER, FOLDER),  # a console's folder marker
        ("staging/projects/7/jobs/42/attempts/0/last.pt", None),
        ("staging/projects/7/jobs/42/last.pt", None),
        ("checkpoints/projects/7/jobs/42/attempts/3/last.pt", None),
    ],
)
def test_the_attempt_folder_a_key_lies_in(key, folder):
    found = attempt_folder_of(key, LAYOUT)
    assert (found[1] if found else None) == folder


# --- which folders are completed -----------------------------------------------------------------------------------


def test_checkpoints_without_a_manifest_unchanged_for_longer_than_the_age_are_completed():
    judgement = judge_listing(folder_of(Obj(FOLDER + "last.pt", ago(hours=7))), now=NOW, older_than=SIX_HOURS)

    assert judgement.verdict is Verdict.SWEEP
    assert judgement.reason == "last.pt, no manifest, unchanged for 7h00m"


def test_a_folder_that_changed_within_the_age_is_left_to_its_trainer():
    folder = folder_of(Obj(FOLDER + "best.pt", ago(hours=9)), Obj(FOLDER + "last.pt", ago(minutes=12)))

    judgement = judge_listing(folder, now=NOW, older_than=SIX_HOURS)

    assert judgement.verdict is Verdict.CHANGED_RECENTLY
    assert judgement.reason == "changed 12m00s ago, within 6h00m: its trainer may be alive"


def test_any_object_under_the_folder_counts_as_a_change():
    folder = folder_of(Obj(FOLDER + "last.pt", ago(hours=9)), Obj(FOLDER + "logs/epoch.txt", ago(minutes=1)))
    assert judge_listing(folder, now=NOW, older_than=SIX_HOURS).verdict is Verdict.CHANGED_RECENTLY


def test_exactly_the_age_is_old_enough():
    folder = folder_of(Obj(FOLDER + "last.pt", ago(hours=6)))
    assert judge_listing(folder, now=NOW, older_than=SIX_HOURS).sweep


def test_zero_takes_every_folder_without_a_manifest_even_one_written_this_instant_or_ahead_of_the_clock():
    for when in (NOW, NOW + timedelta(seconds=2)):
        folder = folder_of(Obj(FOLDER + "last.pt", when))
        assert judge_listing(folder, now=NOW, older_than=timedelta(0)).sweep


def test_a_folder_with_its_manifest_is_never_completed_however_old():
    folder = folder_of(Obj(FOLDER + "last.pt", ago(days=30)), Obj(FOLDER + "manifest.json", ago(days=30)))
    assert judge_listing(folder, now=NOW, older_than=timedelta(0)).verdict is Verdict.HAS_MANIFEST


def test_a_folder_without_best_or_last_holds_nothing_to_promote():
    folder = folder_of(Obj(FOLDER + "epoch7.pt", ago(days=2)), Obj(FOLDER + "logs/x", ago(days=2)))
    assert judge_listing(folder, now=NOW, older_than=SIX_HOURS).verdict is Verdict.NO_CHECKPOINTS


@pytest.mark.parametrize(
    ("promoted", "verdict", "reason"),
    [
        (None, Verdict.SWEEP, None),
        (2, Verdict.SWEEP, None),
        (3, Verdict.NOT_NEWER_THAN_PROMOTED, "attempt 3 is the promoted one (its manifest was promoted, then removed)"),
        (4, Verdict.NOT_NEWER_THAN_PROMOTED, "attempt 3 is older than the promoted attempt 4"),
    ],
)
def test_only_an_attempt_newer_than_the_promoted_one_is_completed(promoted, verdict, reason):
    listed = judge_listing(folder_of(Obj(FOLDER + "last.pt", ago(hours=7))), now=NOW, older_than=SIX_HOURS)

    judgement = judge_with_record(listed, promoted)

    assert judgement.verdict is verdict
    assert judgement.reason == (reason or listed.reason)


def test_the_record_does_not_revive_a_folder_the_listing_left():
    listed = judge_listing(folder_of(Obj(FOLDER + "last.pt", ago(minutes=1))), now=NOW, older_than=SIX_HOURS)
    assert judge_with_record(listed, None).verdict is Verdict.CHANGED_RECENTLY


def test_the_metric_comes_from_the_jobs_newest_other_manifest():
    folders = attempt_folders(
        [
            Obj("staging/projects/7/jobs/42/attempts/1/manifest.json", ago(days=3)),
            Obj("staging/projects/7/jobs/42/attempts/2/manifest.json", ago(days=2)),
            Obj(FOLDER + "last.pt", ago(hours=7)),
            Obj("staging/projects/7/jobs/42/attempts/4/manifest.json", ago(hours=1)),
            Obj("staging/projects/8/jobs/43/attempts/9/manifest.json", ago(hours=1)),  # another job
        ],
        LAYOUT,
    )
    this = next(f for f in folders if f.prefix == FOLDER)

    assert metric_source(this, folders) == "staging/projects/7/jobs/42/attempts/4/manifest.json"
    lonely = folder_of(Obj("staging/projects/8/jobs/44/attempts/1/last.pt", ago(hours=7)))
    assert metric_source(lonely, folders) is None


# --- the manifest --------------------------------------------------------------------------------------------------


def test_the_abandoned_manifest_lists_what_is_stored_and_leaves_the_epochs_to_the_database():
    folder = folder_of(Obj(FOLDER + "best.pt", ago(hours=9)), Obj(FOLDER + "last.pt", ago(hours=7)))
    files = {
        "best": StoredFile(size=10, sha256="a" * 64, crc64nvme=None, etag='"1"'),
        "last": StoredFile(size=20, sha256="b" * 64, crc64nvme="AAAAAAAAAAA=", etag='"2"'),
    }

    manifest = abandoned_manifest(
        folder, files, older_than=SIX_HOURS, metric=Metric(name="val_loss", mode="min"), completed_at=NOW
    )

    read_back = parse_manifest(manifest.to_json())  # what the promotion will read
    assert read_back == manifest
    assert (read_back.status, read_back.ref) == ("abandoned", AttemptRef(job=JOB, attempt=3))
    assert read_back.finished_at == NOW  # when the sweeper completed it: the promotion's latency is the pipeline's
    assert read_back.metric == Metric(name="val_loss", mode="min")
    best, last = read_back.checkpoints.best, read_back.checkpoints.last
    assert best is not None and last is not None
    assert (best.epoch, best.size, best.sha256, best.crc64nvme) == (None, 10, "a" * 64, None)
    assert (last.epoch, last.size, last.sha256, last.crc64nvme) == (None, 20, "b" * 64, "AAAAAAAAAAA=")
    assert read_back.error is not None and "sweeper completed it after 6h00m" in read_back.error
    assert f"nothing in the attempt folder changed after {ago(hours=7).isoformat()}" in read_back.error


def test_a_test_jobs_abandoned_manifest_has_no_project():
    folder = folder_of(Obj("staging/test-jobs/job_5/attempts/1/last.pt", ago(hours=7)))
    files = {"last": StoredFile(size=1, sha256="c" * 64, crc64nvme=None, etag='"3"')}

    manifest = abandoned_manifest(folder, files, older_than=SIX_HOURS, metric=None, completed_at=NOW)

    assert (manifest.project_id, manifest.job_id, manifest.checkpoints.best) == (None, 5, None)
