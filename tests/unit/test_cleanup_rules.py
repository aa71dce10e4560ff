"""Issue 9, items 4 and 6, their pure parts: which staged files a committed promotion lets go of, the switch that
turns that on, the latency from the end of training to the commit, and what each outcome adds to the metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ckpt.config import Settings
from ckpt.contract.cleanup import CleanupReport, StagedDeletion, staged_deletions
from ckpt.contract.keys import AttemptRef, JobRef, Layout
from ckpt.contract.outcome import FileReport, Outcome, Status
from ckpt.errors import ConfigurationError
from promote_checkpoints.handler import measures

LAYOUT = Layout(bucket="vision-platform-prod")
JOB = JobRef(job_id=42, project_id=7)
FOLDER = "staging/projects/7/jobs/42/attempts"


def ref(n: int, job: JobRef = JOB) -> AttemptRef:
    return AttemptRef(job=job, attempt=n)


# --- what a committed promotion lets go of -------------------------------------------------------------------


def test_the_promoted_attempts_verified_versions_go_then_every_older_attempts_checkpoints():
    verified = {f"{FOLDER}/3/best.pt": '"b3"', f"{FOLDER}/3/last.pt": '"l3"'}

    assert staged_deletions(LAYOUT, ref(3), verified, [1, 2, 3]) == [
        StagedDeletion(f"{FOLDER}/3/best.pt", '"b3"'),
        StagedDeletion(f"{FOLDER}/3/last.pt", '"l3"'),
        StagedDeletion(f"{FOLDER}/1/best.pt", None),
        StagedDeletion(f"{FOLDER}/1/last.pt", None),
        StagedDeletion(f"{FOLDER}/2/best.pt", None),
        StagedDeletion(f"{FOLDER}/2/last.pt", None),
    ]


def test_nothing_of_a_newer_attempt_and_never_a_manifest():
    deletions = staged_deletions(LAYOUT, ref(2), {f"{FOLDER}/2/last.pt": '"l2"'}, [4, 1, 3, 2])

    keys = [d.key for d in deletions]
    assert not any(key.startswith((f"{FOLDER}/3/", f"{FOLDER}/4/")) for key in keys)
    assert not any(key.endswith("manifest.json") for key in keys)
    assert keys == [f"{FOLDER}/2/last.pt", f"{FOLDER}/1/best.pt", f"{FOLDER}/1/last.pt"]


def test_a_file_the_manifest_did_not_list_stays_in_the_promoted_attempt():
    # best.pt was never verified by this promotion (the manifest listed last only): it is nobody's copy.
    deletions = staged_deletions(LAYOUT, ref(1), {f"{FOLDER}/1/last.pt": '"l1"'}, [1])

    assert deletions == [StagedDeletion(f"{FOLDER}/1/last.pt", '"l1"')]


def test_a_promotion_of_no_files_still_lets_older_attempts_go():
    assert [d.key for d in staged_deletions(LAYOUT, ref(2), {}, [1, 2])] == [
        f"{FOLDER}/1/best.pt",
        f"{FOLDER}/1/last.pt",
    ]


def test_test_jobs_stay_in_their_own_folder():
    job = JobRef(job_id=9)

    keys = [d.key for d in staged_deletions(LAYOUT, ref(2, job), {}, [1])]

    assert keys == ["staging/test-jobs/job_9/attempts/1/best.pt", "staging/test-jobs/job_9/attempts/1/last.pt"]


# --- the switch ----------------------------------------------------------------------------------------------


def test_deleting_staged_files_is_off_unless_asked():
    assert Settings().delete_staged_after_promotion is False
    assert Settings.from_env({}).delete_staged_after_promotion is False
    assert Settings.from_env({"DELETE_STAGED_AFTER_PROMOTION": ""}).delete_staged_after_promotion is False


@pytest.mark.parametrize(("value", "on"), [("true", True), ("True", True), ("1", True), ("false", False), ("0", False)])
def test_the_switch_reads_true_and_false(value, on):
    assert Settings.from_env({"DELETE_STAGED_AFTER_PROMOTION": value}).delete_staged_after_promotion is on


@pytest.mark.parametrize("value", ["maybe", "2", "enabled"])
def test_any_other_value_is_refused_rather_than_guessed(value):
    with pytest.raises(ConfigurationError, match="DELETE_STAGED_AFTER_PROMOTION must be true or false"):
        Settings.from_env({"DELETE_STAGED_AFTER_PROMOTION": value})


# --- latency and metrics -------------------------------------------------------------------------------------

FINISHED = datetime(2025, 11, 5, 14, 30, tzinfo=UTC)


def outcome(status: Status = Status.PROMOTED, **fields) -> Outcome:
    return Outcome(status=status, reason="", bucket="b", manifest_key="k", trigger="test", ref=ref(1), **fields)


def report(size: int, source: str) -> FileReport:
    return FileReport(size=size, sha256="0" * 64, checksum_source=source, staged_key="s", canonical_uri="u", epoch=1)


def test_latency_runs_from_the_end_of_training_to_the_commit():
    promoted = outcome(finished_at=FINISHED, committed_at=FINISHED + timedelta(seconds=42, milliseconds=5))

    assert promoted.promotion_latency() == timedelta(seconds=42, milliseconds=5)


def test_a_trainer_clock_ahead_of_the_functions_counts_as_no_latency_rather_than_a_negative_one():
    ahead = outcome(finished_at=FINISHED, committed_at=FINISHED - timedelta(seconds=3))

    assert ahead.promotion_latency() == timedelta(0)


@pytest.mark.parametrize(
    "fields",
    [
        {"committed_at": FINISHED},  # the manifest says nothing of when training ended
        {"finished_at": FINISHED},  # nothing committed
    ],
)
def test_no_latency_without_both_ends(fields):
    assert outcome(**fields).promotion_latency() is None


def test_only_a_promotion_has_a_latency():
    duplicate = outcome(Status.DUPLICATE, finished_at=FINISHED, committed_at=FINISHED + timedelta(seconds=1))

    assert duplicate.promotion_latency() is None


def test_a_promotion_measures_bytes_verified_hashed_copied_latency_and_its_cleanup():
    promoted = outcome(
        files={"best": report(1000, "store"), "last": report(300, "stream")},
        finished_at=FINISHED,
        committed_at=FINISHED + timedelta(seconds=2),
        cleanup=CleanupReport(deleted=("a", "b", "c"), failed=("d",)),
    )

    measured = {name: (str(unit.value), value) for name, unit, value in measures(promoted)}

    assert {name: value for name, value in measured.items() if not name.startswith("ChecksumFrom")} == {
        "BytesVerified": ("Bytes", 1300),
        "BytesHashed": ("Bytes", 300),
        "BytesCopied": ("Bytes", 1300),
        "PromotionLatency": ("Milliseconds", 2000.0),
        "StagedFilesDeleted": ("Count", 3),
        "StagedDeletionFailures": ("Count", 1),
    }
    assert {name: value for name, value in measured.items() if name.startswith("ChecksumFrom")} == {
        "ChecksumFromStore": ("Count", 1),
        "ChecksumFromStream": ("Count", 1),
    }


def test_a_dry_run_verifies_and_copies_nothing():
    planned = outcome(Status.PLANNED, files={"last": report(300, "crc64nvme")})

    assert {name: value for name, _, value in measures(planned)} == {
        "ChecksumFromCrc64Nvme": 1,
        "BytesVerified": 300,
        "BytesHashed": 0,
    }


@pytest.mark.parametrize("status", [Status.DUPLICATE, Status.SUPERSEDED, Status.REJECTED, Status.IGNORED])
def test_outcomes_that_moved_no_bytes_measure_nothing(status):
    assert measures(outcome(status, finished_at=FINISHED)) == []
