"""Issue 9, item 6, through the real handler (moto's S3, SQLite and PostgreSQL): the metrics it publishes in
CloudWatch's embedded metric format (what template.yaml's alarm and dashboard read), and log lines keyed by
project, job and attempt, the ckpt package's included."""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ckpt.adapters.storage import S3Storage
from ckpt.errors import StorageUnavailable
from tests.support import BUCKET, LambdaContext, add_epochs, attempt, configured_handler, weights

EVENTS = Path(__file__).parents[2] / "events"
MANIFEST = "staging/projects/7/jobs/42/attempts/1/manifest.json"
FILE_BYTES = len(weights("best-1")) + len(weights("last-1"))  # what tests.support.Trainer stages


def sqs_record(key: str | None, message_id: str) -> dict[str, Any]:
    """An SQS record of the manifest notification at ``key`` (None: a body that is no notification at all)."""
    record = copy.deepcopy(json.loads((EVENTS / "sqs-s3-notification.json").read_text())["Records"][0])
    body = json.loads(record["body"])
    body["Records"][0]["s3"]["object"]["key"] = key
    record.update(body=json.dumps(body) if key else "this is not JSON", messageId=message_id)
    return record


def published(stdout: str) -> list[dict[str, Any]]:
    """The EMF documents Powertools printed."""
    return [json.loads(line) for line in stdout.splitlines() if '"_aws"' in line]


def metric_values(stdout: str) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for document in published(stdout):
        for definition in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
            value = document[definition["Name"]]
            values.setdefault(definition["Name"], []).extend(value if isinstance(value, list) else [value])
    return values


@pytest.fixture
def handler(monkeypatch, database_url, engine, s3):
    return configured_handler(monkeypatch, database_url)


@pytest.fixture
def log_lines(handler, monkeypatch) -> io.StringIO:
    """What the function's log handler writes (the one handler the Powertools logger and the ckpt package's
    loggers share), redirected from stdout to a buffer."""
    buffer = io.StringIO()
    for stream_handler in handler.logger.handlers:
        monkeypatch.setattr(stream_handler, "stream", buffer)
    return buffer


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]


def invoke(handler: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    return handler.lambda_handler({"Records": records}, LambdaContext())


@pytest.fixture
def staged(engine, trainer) -> datetime:
    """Job 42's attempt 1, whose training ended 90 seconds ago."""
    add_epochs(engine, 42, {18: 0.5, 20: 0.4})
    finished = datetime.now(UTC) - timedelta(seconds=90)
    trainer.finish(attempt(1), finished_at=finished)
    return finished


def test_a_promotion_publishes_its_outcome_bytes_and_latency_where_the_alarm_and_dashboard_look(
    handler, staged, capsys
):
    assert invoke(handler, [sqs_record(MANIFEST, "m-1")]) == {"batchItemFailures": []}

    stdout = capsys.readouterr().out
    metrics = metric_values(stdout)
    assert metrics["ManifestsPromoted"] == [1]
    assert metrics["BytesVerified"] == metrics["BytesCopied"] == [FILE_BYTES]
    assert metrics["BytesHashed"] == [0]  # single-request uploads: the store's SHA-256, no byte read
    assert sum(metrics["ChecksumFromStore"]) == 2
    [latency] = metrics["PromotionLatency"]
    assert 90_000 <= latency < 150_000
    assert "StagedFilesDeleted" not in metrics and "PromotionFailures" not in metrics
    # The namespace and dimension template.yaml's alarm and dashboard name, and the units they chart.
    for document in published(stdout):
        [directive] = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "CheckpointPipeline"
        if any(m["Name"] == "ManifestsPromoted" for m in directive["Metrics"]):
            assert directive["Dimensions"] == [["service"]] and document["service"] == "checkpoint-promotion"
            units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
            assert units["BytesCopied"] == units["BytesVerified"] == units["BytesHashed"] == "Bytes"
            assert units["PromotionLatency"] == "Milliseconds"


def test_a_record_that_fails_transiently_counts_as_a_promotion_failure(handler, staged, monkeypatch, capsys):
    def store_down(*_: Any, **__: Any) -> Any:
        raise StorageUnavailable("injected: 503 Slow Down")

    monkeypatch.setattr(handler.get_promoter().storage, "copy", store_down)

    answer = invoke(handler, [sqs_record(MANIFEST, "m-1"), sqs_record("checkpoints/elsewhere.json", "m-2")])

    assert answer == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
    metrics = metric_values(capsys.readouterr().out)
    assert metrics["PromotionFailures"] == [1]
    assert metrics["ManifestsRejected"] == [1]  # its sibling, outside staging: answered, not a failure
    assert "ManifestsPromoted" not in metrics


def test_the_cleanup_after_a_promotion_is_counted(handler, staged, monkeypatch, capsys, s3):
    monkeypatch.setenv("DELETE_STAGED_AFTER_PROMOTION", "true")

    assert invoke(handler, [sqs_record(MANIFEST, "m-1")]) == {"batchItemFailures": []}

    metrics = metric_values(capsys.readouterr().out)
    assert (metrics["StagedFilesDeleted"], metrics["StagedDeletionFailures"]) == ([2], [0])
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="staging/")
    assert [item["Key"] for item in listing["Contents"]] == [MANIFEST]


def test_a_deletion_the_store_refuses_leaves_the_record_promoted_and_is_counted(
    handler, staged, monkeypatch, capsys, engine
):
    monkeypatch.setenv("DELETE_STAGED_AFTER_PROMOTION", "true")

    def access_denied(self: Any, key: str, etag: str) -> None:
        raise StorageUnavailable(f"AccessDenied on {key}: the role has no s3:DeleteObject")

    monkeypatch.setattr(S3Storage, "delete", access_denied)

    assert invoke(handler, [sqs_record(MANIFEST, "m-1")]) == {"batchItemFailures": []}

    metrics = metric_values(capsys.readouterr().out)
    assert metrics["ManifestsPromoted"] == [1]
    assert (metrics["StagedFilesDeleted"], metrics["StagedDeletionFailures"]) == ([0], [2])
    assert "PromotionFailures" not in metrics


def test_every_log_line_of_a_promotion_carries_its_project_job_and_attempt(handler, staged, monkeypatch, log_lines):
    monkeypatch.setenv("DELETE_STAGED_AFTER_PROMOTION", "true")  # the cleanup's lines are the ckpt package's too

    invoke(handler, [sqs_record(MANIFEST, "m-1"), sqs_record(None, "m-2")])

    logged = lines(log_lines)
    promotion = [line for line in logged if line["message"].startswith(("manifest promoted", "cleanup after"))]
    # Written by the ckpt package (Promoter._logged, StagingCleanup.after_commit), through the function's handler.
    assert [line["location"].split(":")[0] for line in promotion] == ["_logged", "after_commit"]
    for line in promotion:
        assert (line["project_id"], line["job_id"], line["attempt"]) == (7, 42, 1), line
        assert line["function_request_id"] == LambdaContext.aws_request_id
    # The keys end with the promotion: the next record's line is not taken for job 42's.
    [rejected] = [line for line in logged if line["message"].startswith("event rejected")]
    assert "job_id" not in rejected and "attempt" not in rejected


def test_a_reprocess_logs_under_its_job(handler, staged, monkeypatch, log_lines):
    monkeypatch.setenv("DELETE_STAGED_AFTER_PROMOTION", "true")

    handler.lambda_handler({"action": "reprocess", "project_id": 7, "job_id": 42, "attempt": 1}, LambdaContext())

    [cleanup] = [line for line in lines(log_lines) if line["message"].startswith("cleanup after")]
    assert (cleanup["project_id"], cleanup["job_id"], cleanup["attempt"]) == (7, 42, 1)
