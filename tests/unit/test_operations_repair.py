"""The pure rules of backfill, redrive, migrate-local-paths and status (ckpt/operations/)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ckpt.adapters.storage import ListedObject
from ckpt.contract.keys import JobRef, Layout
from ckpt.errors import ConfigurationError
from ckpt.operations import backfill, local_paths, redrive, status
from ckpt.promotion.promoted import NothingPromoted, PromotedCheckpoint, PromotedJob

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LAYOUT = Layout(bucket="vision-platform-prod")

# --- backfill -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2d", NOW - timedelta(days=2)),
        ("6h", NOW - timedelta(hours=6)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("90s", NOW - timedelta(seconds=90)),
        ("2025-11-05", datetime(2025, 11, 5, tzinfo=UTC)),
        ("2025-11-05T14:30:00Z", datetime(2025, 11, 5, 14, 30, tzinfo=UTC)),
        ("2025-11-05T14:30:00", datetime(2025, 11, 5, 14, 30, tzinfo=UTC)),  # no zone: UTC
        ("2025-11-05T16:30:00+02:00", datetime(2025, 11, 5, 14, 30, tzinfo=UTC)),
    ],
)
def test_since_takes_durations_and_iso_times(text, moment):
    assert backfill.parse_since(text, NOW) == moment


@pytest.mark.parametrize("text", ["", "yesterday", "2 days", "-2d", "2x", "d", "2025-13-01"])
def test_since_refuses_anything_else(text):
    with pytest.raises(ValueError, match="neither a duration"):
        backfill.parse_since(text, NOW)


def listed(key: str, minutes_ago: int = 0) -> ListedObject:
    return ListedObject(key=key, size=100, etag='"e"', last_modified=NOW - timedelta(minutes=minutes_ago))


def test_selection_keeps_the_layouts_manifests_modified_since():
    objects = [
        listed("staging/projects/7/jobs/42/attempts/1/best.pt"),
        listed("staging/projects/7/jobs/42/attempts/1/manifest.json", minutes_ago=120),
        listed("staging/projects/7/jobs/42/attempts/2/manifest.json", minutes_ago=10),
        listed("staging/test-jobs/job_9/attempts/1/manifest.json"),
        listed("staging/projects/07/jobs/42/attempts/1/manifest.json"),
        listed("staging/projects/7/jobs/42/attempts/1/old-manifest.json"),
    ]

    selection = backfill.select_manifests(objects, LAYOUT, since=NOW - timedelta(hours=1))

    assert [m.key for m in selection.manifests] == [
        "staging/projects/7/jobs/42/attempts/2/manifest.json",
        "staging/test-jobs/job_9/attempts/1/manifest.json",
    ]
    assert selection.before_since == 1
    assert selection.not_of_layout == ["staging/projects/07/jobs/42/attempts/1/manifest.json"]


def test_backfill_order_is_job_by_job_newest_attempt_first():
    selection = backfill.select_manifests(
        [
            listed("staging/projects/7/jobs/43/attempts/1/manifest.json"),
            listed("staging/projects/7/jobs/42/attempts/1/manifest.json"),
            listed("staging/test-jobs/job_42/attempts/3/manifest.json"),
            listed("staging/projects/7/jobs/42/attempts/2/manifest.json"),
        ],
        LAYOUT,
        since=None,
    )

    ordered = [
        (m.ref.job.job_id, m.ref.job.project_id, m.ref.attempt) for m in backfill.backfill_order(selection.manifests)
    ]

    assert ordered == [(42, None, 3), (42, 7, 2), (42, 7, 1), (43, 7, 1)]


# --- redrive --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/dlq", "eu-west-1"),
        ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/dlq", "cn-north-1"),
        ("https://us-east-2.queue.amazonaws.com/123456789012/dlq", "us-east-2"),
        ("http://127.0.0.1:5000/123456789012/dlq", None),
    ],
)
def test_the_region_is_read_from_the_queue_url(url, region):
    assert redrive.region_of(url) == region


def test_queue_urls_come_from_the_stacks_outputs():
    outputs = [
        {"OutputKey": "CheckpointBucketName", "OutputValue": "vision-platform-prod"},
        {"OutputKey": "PromotionQueueUrl", "OutputValue": "https://sqs.x/q"},
        {"OutputKey": "PromotionDeadLetterQueueUrl", "OutputValue": "https://sqs.x/dlq"},
    ]

    assert redrive.queue_urls_from_outputs("ckpt", outputs) == redrive.QueueUrls("https://sqs.x/dlq", "https://sqs.x/q")
    with pytest.raises(ConfigurationError, match="has no output PromotionDeadLetterQueueUrl"):
        redrive.queue_urls_from_outputs("other", outputs[:1])


class MoveTaskSqs:
    """SQS where StartMessageMoveTask exists: the task runs for a few polls, then ends as told."""

    def __init__(self, end: str = "COMPLETED", moved: int = 7, polls: int = 2, start_error: Exception | None = None):
        self.end, self.moved, self.polls, self.start_error = end, moved, polls, start_error
        self.started: dict[str, Any] | None = None

    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        return {"Attributes": {"QueueArn": "arn:aws:sqs:us-east-1:1:" + QueueUrl.rsplit("/", 1)[-1]}}

    def start_message_move_task(self, **request: Any) -> dict[str, Any]:
        if self.start_error is not None:
            raise self.start_error
        self.started = request
        return {"TaskHandle": "handle-1"}

    def list_message_move_tasks(self, SourceArn: str, MaxResults: int) -> dict[str, Any]:
        self.polls -= 1
        if self.polls > 0:
            return {"Results": [{"Status": "RUNNING", "ApproximateNumberOfMessagesMoved": 3}]}
        result = {"Status": self.end, "ApproximateNumberOfMessagesMoved": self.moved}
        return {"Results": [result | ({"FailureReason": "AccessDenied"} if self.end == "FAILED" else {})]}

    def receive_message(self, **_: Any) -> dict[str, Any]:
        return {"Messages": []}


def test_the_move_task_is_started_and_waited_for():
    sqs = MoveTaskSqs()

    report = redrive.redrive(sqs, "https://sqs.x/dlq", "https://sqs.x/queue", sleep=lambda _: None)

    assert sqs.started == {
        "SourceArn": "arn:aws:sqs:us-east-1:1:dlq",
        "DestinationArn": "arn:aws:sqs:us-east-1:1:queue",
    }
    assert (report.method, report.moved, report.ok, report.note) == ("move-task", 7, True, None)


def test_a_failed_move_task_is_reported():
    report = redrive.redrive(
        MoveTaskSqs(end="FAILED", moved=2), "https://sqs.x/dlq", "https://sqs.x/q", sleep=lambda _: None
    )

    assert (report.moved, report.failures) == (2, ["the move task ended FAILED: AccessDenied"])


def test_without_the_move_task_auto_falls_back_and_move_task_fails():
    unknown = ClientError({"Error": {"Code": "InvalidAction", "Message": "no such action"}}, "StartMessageMoveTask")

    report = redrive.redrive(MoveTaskSqs(start_error=unknown), "https://sqs.x/dlq", "https://sqs.x/q")
    assert (report.method, report.moved) == ("receive-send", 0)
    assert report.note == (
        "StartMessageMoveTask is not available here (InvalidAction no such action): moved by receive, send, delete"
    )

    with pytest.raises(redrive.RedriveFailed, match="StartMessageMoveTask failed: InvalidAction"):
        redrive.redrive(MoveTaskSqs(start_error=unknown), "https://sqs.x/dlq", "https://sqs.x/q", "move-task")


# --- migrate-local-paths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "cleared"),
    [
        (None, False),
        ("r2://vision-platform-prod/checkpoints/projects/7/jobs/42/best.pt", False),
        ("s3://vision-platform-prod/checkpoints/projects/7/jobs/42/best.pt", False),  # the configured scheme
        ("/data/outputs/job_42/weights/best.pt", True),
        ("runs\\job_42\\weights\\last.pt", True),
        ("file:///data/best.pt", True),
        ("R2://vision-platform-prod/x", True),  # the UI's rule is case-sensitive
        ("gs://old/written-by-a-promotion.pt", False),  # a promotion record names it
        ("", True),
    ],
)
def test_what_the_migration_clears(path, cleared):
    schemes = local_paths.kept_schemes("s3")
    assert schemes == ("r2", "s3")
    assert local_paths.clears(path, schemes, {"gs://old/written-by-a-promotion.pt"}) is cleared


def test_paths_written_reads_row_paths_and_canonical_uris():
    details = [
        {"row_paths": {"18": "r2://b/best.pt", "20": "r2://b/last.pt"}, "files": {}},
        {"files": {"best": {"canonical_uri": "gs://b/best.pt"}, "last": "garbage"}, "row_paths": None},
        "not a mapping",
    ]

    assert local_paths.paths_written(details) == {"r2://b/best.pt", "r2://b/last.pt", "gs://b/best.pt"}  # type: ignore[arg-type]


def test_the_sample_spreads_over_jobs():
    rows = [local_paths.LocalPath(row_id=i, job_id=41, epoch=i, path="/x") for i in range(1, 6)]
    rows += [local_paths.LocalPath(row_id=10, job_id=42, epoch=1, path="/y")]
    plan = local_paths.LocalPathPlan(schemes=("r2",), rows=rows)

    assert [(row.job_id, row.epoch) for row in plan.sample(3)] == [(41, 1), (41, 2), (42, 1)]
    assert plan.per_job == {41: 5, 42: 1}


# --- status ---------------------------------------------------------------------------------------------------


def test_status_json_has_no_nan_and_marks_only_r2_uris():
    job = JobRef(job_id=42, project_id=7)
    checkpoint = PromotedCheckpoint(
        job=job,
        name="best",
        key="checkpoints/projects/7/jobs/42/best.pt",
        uri="r2://vision-platform-prod/checkpoints/projects/7/jobs/42/best.pt",
        epoch=18,
        metric_value=0.6,
        size=10,
        sha256="a" * 64,
        attempt=2,
        promoted_at=NOW,
        promotion_id=5,
    )
    promoted = PromotedJob(job=job, attempt=2, updated_at=NOW, checkpoints={"best": checkpoint})
    rows = [(17, math.nan, "/data/best.pt"), (18, 0.6, checkpoint.uri), (19, None, "s3://x/best.pt")]

    answer = status.build_status(job, False, promoted, {5: {"best": "crc64nvme"}}, rows, [])

    document = status.as_json(answer)
    assert document["promoted"]["checkpoints"]["best"]["checksum_source"] == "crc64nvme"
    assert document["promoted"]["checkpoints"]["best"]["promoted_at"] == "2026-11-29T12:00:00Z"
    assert [(row["metric_value"], row["in_r2"]) for row in document["epochs"]] == [
        (None, False),
        (0.6, True),
        (None, False),
    ]
    lines = status.render(answer)
    assert "    17       nan  · /data/best.pt" in lines
    assert "    19         —  · s3://x/best.pt" in lines


def test_status_of_a_job_with_nothing_promoted():
    job = JobRef(job_id=42)
    answer = status.build_status(job, True, NothingPromoted("job 42 has no promoted checkpoints yet"), {}, [], [])

    assert answer.known
    assert status.as_json(answer)["promoted"] is None
    assert status.render(answer)[:3] == ["job 42", "", "promoted: nothing. job 42 has no promoted checkpoints yet"]
    assert "  no validation_results rows" in status.render(answer)


def test_the_progress_bar_goes_to_stderr_and_the_lines_to_stdout(capsys):
    with backfill.progress_bar(2, enabled=True) as bar:
        bar.write("promoted    staging/…/manifest.json")
        bar.advance()
        bar.advance()

    captured = capsys.readouterr()
    assert captured.out == "promoted    staging/…/manifest.json\n"
    assert "backfill" in captured.err and "2/2" in captured.err

    with backfill.progress_bar(2, enabled=False) as bar:
        bar.advance()
    assert capsys.readouterr().err == ""
