"""The rule that decides a job's promoted checkpoints from its record (pure: no database, no store)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from ckpt.contract.keys import JobRef, Layout
from ckpt.promotion.promoted import (
    CheckpointNotPromoted,
    JobInAnotherProject,
    NothingPromoted,
    PromotionRow,
    StateRow,
    check_project,
    promoted_from_record,
)
from ckpt.trainer.training import resume_reports

LAYOUT = Layout(bucket="vision-platform-prod")
JOB = JobRef(job_id=42, project_id=7)
T1 = datetime(2025, 11, 5, 14, 30)  # SQLite hands times back without their zone
T2 = datetime(2025, 11, 6, 9, 0, tzinfo=UTC)


def file(label: str, size: int = 100, epoch: int | None = None, version: str | None = None) -> dict[str, Any]:
    return {"size": size, "sha256": label * 64, "epoch": epoch, "canonical_version_id": version}


def state(best: int | None = 18, last: int | None = 20, attempt: int = 1, project_id: int | None = 7) -> StateRow:
    return StateRow(
        project_id=project_id, attempt=attempt, best_epoch=best, last_epoch=last, promotion_id=2, updated_at=T1
    )


def record(id: int, attempt: int, project_id: int | None = 7, **files: dict[str, Any]) -> PromotionRow:
    return PromotionRow(
        id=id,
        created_at=T1 if id == 1 else T2,
        project_id=project_id,
        attempt=attempt,
        details={"files": files, "row_paths": {}},
    )


def test_each_file_is_the_newest_promoted_record_that_lists_it_at_the_states_epoch():
    newest_first = [record(2, attempt=2, last=file("b", 300)), record(1, attempt=1, best=file("a"), last=file("c"))]

    promoted = promoted_from_record(JOB, LAYOUT, state(best=18, last=21, attempt=2), newest_first, {18: 0.6, 21: 0.5})

    best, last = promoted.checkpoint("best"), promoted.checkpoint("last")
    assert (best.attempt, best.epoch, best.sha256, best.metric_value, best.promotion_id) == (1, 18, "a" * 64, 0.6, 1)
    assert (last.attempt, last.epoch, last.size, last.metric_value, last.promotion_id) == (2, 21, 300, 0.5, 2)
    assert last.key == "checkpoints/projects/7/jobs/42/last.pt"
    assert last.uri == "r2://vision-platform-prod/checkpoints/projects/7/jobs/42/last.pt"
    assert best.promoted_at == T1.replace(tzinfo=UTC) and last.promoted_at == T2
    assert promoted.attempt == 2 and promoted.updated_at.tzinfo is UTC
    assert list(promoted.checkpoints) == ["best", "last"]


def test_the_epoch_is_the_states_even_when_the_record_said_none():
    promoted = promoted_from_record(JOB, LAYOUT, state(best=None, last=20), [record(1, 1, last=file("c"))], {})

    assert promoted.checkpoint("last").epoch == 20
    assert promoted.checkpoint("last").metric_value is None


@pytest.mark.parametrize("value", [math.nan, math.inf, None])
def test_a_metric_that_is_no_number_is_none(value):
    promoted = promoted_from_record(JOB, LAYOUT, state(), [record(1, 1, best=file("a"))], {18: value})

    assert promoted.checkpoint("best").metric_value is None


def test_the_version_the_promotion_wrote_is_kept():
    promoted = promoted_from_record(JOB, LAYOUT, state(), [record(1, 1, last=file("c", version="v-1"))], {})

    assert promoted.checkpoint("last").version_id == "v-1"


def test_a_checkpoint_no_record_lists_is_not_promoted():
    promoted = promoted_from_record(JOB, LAYOUT, state(), [record(1, 1, last=file("c"))], {})

    with pytest.raises(CheckpointNotPromoted, match=r"has no promoted best.pt \(promoted: last.pt\)"):
        promoted.checkpoint("best")


def test_promotions_that_listed_no_file_leave_nothing_promoted():
    with pytest.raises(NothingPromoted, match="no promotion listed a checkpoint file"):
        promoted_from_record(JOB, LAYOUT, state(best=None, last=None), [record(1, 1)], {})


def test_a_record_entry_that_is_not_a_file_of_ours_is_never_served():
    broken = {"size": "100", "sha256": "a" * 64}, {"size": 100, "sha256": "A" * 64}, {"size": -1, "sha256": "a" * 64}
    for entry in broken:
        with pytest.raises(NothingPromoted):
            promoted_from_record(JOB, LAYOUT, state(), [record(1, 1, best=entry)], {})


def test_a_record_of_another_project_is_never_served():
    with pytest.raises(NothingPromoted):
        promoted_from_record(JOB, LAYOUT, state(), [record(1, 1, project_id=8, best=file("a"))], {})


def test_test_jobs_have_their_own_keys():
    job = JobRef(job_id=9)
    promoted = promoted_from_record(job, LAYOUT, state(project_id=None), [record(1, 1, None, last=file("c"))], {})

    assert promoted.checkpoint("last").key == "checkpoints/test-jobs/job_9/last.pt"


@pytest.mark.parametrize(
    ("job", "recorded", "message"),
    [
        (JobRef(job_id=42, project_id=8), 7, "job 42 is not a job of project 8"),
        (JobRef(job_id=42), 7, "job 42 is a job of a project, not a test job"),
        (JobRef(job_id=42, project_id=7), None, "job 42 is a test job, not a job of project 7"),
    ],
)
def test_a_job_is_only_served_under_its_own_project(job, recorded, message):
    with pytest.raises(JobInAnotherProject, match=message):
        check_project(job, recorded)
    with pytest.raises(JobInAnotherProject):
        promoted_from_record(job, LAYOUT, state(project_id=recorded), [record(1, 1, recorded, best=file("a"))], {})


def test_a_resumed_run_starts_from_the_promoted_best_then_last():
    promoted = promoted_from_record(
        JOB, LAYOUT, state(best=18, last=20), [record(1, 1, best=file("a"), last=file("c"))], {18: 0.6, 20: 0.5}
    )

    reports = resume_reports(promoted)

    assert [(r.epoch, r.value) for r in reports] == [(18, 0.6), (20, 0.5)]


def test_a_resumed_run_whose_best_is_its_last_reports_the_epoch_once():
    promoted = promoted_from_record(
        JOB, LAYOUT, state(best=20, last=20), [record(1, 1, best=file("a"), last=file("c"))], {20: 0.5}
    )

    assert [(r.epoch, r.value) for r in resume_reports(promoted)] == [(20, 0.5)]


def test_an_unreadable_newest_entry_is_not_replaced_by_an_older_record():
    newest_first = [record(2, 2, best={"size": "?"}), record(1, 1, best=file("a"), last=file("c"))]

    promoted = promoted_from_record(JOB, LAYOUT, state(), newest_first, {})

    assert list(promoted.checkpoints) == ["last"]  # the key holds attempt 2's best.pt, not attempt 1's


def test_the_records_are_read_only_until_each_file_is_found():
    read: list[int] = []

    def records():  # type: ignore[no-untyped-def]
        for row in (record(3, 3, best=file("a"), last=file("b")), record(2, 2, last=file("c")), record(1, 1)):
            read.append(row.id)
            yield row

    promoted_from_record(JOB, LAYOUT, state(), records(), {})

    assert read == [3]
