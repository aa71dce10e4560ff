"""``ckpt redrive`` end to end: moto's standalone server (S3 with the bucket notification, SQS with a real redrive
policy), the real handler, SQLite and PostgreSQL. An outage sends the manifests' messages to the dead-letter queue;
once it is over, the redrive moves them back and the handler promotes them."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from ckpt.cli import main
from ckpt.contract.keys import JobRef, Layout
from tests.e2e.local_stack import Pipeline, function_stack
from tests.support import Trainer, add_epochs, attempt, paths, records

MAX_RECEIVES = 2
JOBS = (41, 42, 43)
DATABASE_DOWN = "postgresql+pg8000://postgres@127.0.0.1:1/down"  # nothing listens on port 1


def with_dead_letter_queue(pipeline: Pipeline, name: str) -> str:
    """Give the promotion queue a dead-letter queue after MAX_RECEIVES receives, as template.yaml does (after 5)."""
    sqs = pipeline.sqs
    dead_letter_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    dead_letter_arn = sqs.get_queue_attributes(QueueUrl=dead_letter_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": str(MAX_RECEIVES)}
    sqs.set_queue_attributes(QueueUrl=pipeline.queue_url, Attributes={"RedrivePolicy": json.dumps(policy)})
    return str(dead_letter_url)


def waiting(pipeline: Pipeline, queue_url: str) -> int:
    attributes = pipeline.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def deliver_until_dead_lettered(pipeline: Pipeline, handler: Any, dead_letter_url: str, expect: int) -> int:
    """Lambda's poller against a function that fails every record: each failed message is visible again at once
    (visibility 0), so every round is one more receive, until SQS moves it to the dead-letter queue. Returns the
    number of failed invocations (a batch whose records all fail fails the invocation: nothing is deleted)."""
    failed = 0
    deadline = time.monotonic() + 30
    while waiting(pipeline, dead_letter_url) < expect:
        assert time.monotonic() < deadline, "the messages did not reach the dead-letter queue"
        messages = pipeline.sqs.receive_message(
            QueueUrl=pipeline.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0, AttributeNames=["All"]
        ).get("Messages", [])
        if messages:
            with pytest.raises(BatchProcessingError, match="All records failed processing"):
                pipeline.deliver(handler, messages)
            failed += 1
    return failed


def test_redrive_moves_the_dead_lettered_messages_back_and_the_handler_promotes_them(
    endpoint, database_url, clean_environment, capsys
):
    bucket = f"redrive-{'pg' if database_url.startswith('postgresql') else 'lite'}"
    pipeline, engine, handler = function_stack(endpoint, bucket, database_url)
    dead_letter_url = with_dead_letter_queue(pipeline, f"{bucket}-dlq")
    os.environ["MAX_RECEIVE_COUNT"] = str(MAX_RECEIVES)  # the function's view of the queue's maxReceiveCount
    for message in pipeline.receive(expect=1, wait_seconds=3):  # S3's s3:TestEvent
        pipeline.sqs.delete_message(QueueUrl=pipeline.queue_url, ReceiptHandle=message["ReceiptHandle"])

    # the outage: the database is down while three jobs finish
    os.environ["DATABASE_URL"] = DATABASE_DOWN
    handler._promoter = None
    layout = Layout(bucket=bucket)
    for job_id in JOBS:
        add_epochs(engine, job_id, {18: 0.6, 19: 0.5, 20: 0.55})
        Trainer(pipeline.s3, layout).finish(attempt(1, JobRef(job_id=job_id, project_id=7)))
    assert deliver_until_dead_lettered(pipeline, handler, dead_letter_url, expect=len(JOBS)) >= MAX_RECEIVES
    assert waiting(pipeline, pipeline.queue_url) == 0
    assert records(engine) == []

    # the cause is fixed; the operator redrives (the queue found through the DLQ's redrive policy)
    os.environ["DATABASE_URL"] = database_url
    handler._promoter = None
    os.environ["AWS_ENDPOINT_URL_SQS"] = endpoint
    assert main(["redrive", "--dlq-url", dead_letter_url, "--dry-run"]) == 0
    assert "holds about 3 message(s)" in capsys.readouterr().out
    assert main(["redrive", "--dlq-url", dead_letter_url]) == 0
    out = capsys.readouterr().out
    # moto has no StartMessageMoveTask: the same move by receive, send, delete
    assert "StartMessageMoveTask is not available here" in out
    assert f"moved 3 message(s) from {dead_letter_url} to {pipeline.queue_url} (receive-send)" in out
    assert waiting(pipeline, dead_letter_url) == 0

    messages = [m for m in pipeline.receive(expect=len(JOBS)) if "manifest.json" in m["Body"]]
    assert len(messages) == len(JOBS)
    assert pipeline.deliver(handler, messages) == {"batchItemFailures": []}
    assert sorted((r["job_id"], r["outcome"]) for r in records(engine)) == [(n, "promoted") for n in JOBS]
    for job_id in JOBS:
        assert paths(engine, job_id)[18] == f"r2://{bucket}/checkpoints/projects/7/jobs/{job_id}/best.pt"
    engine.dispose()


def test_redrive_of_an_empty_dead_letter_queue_moves_nothing(endpoint, clean_environment, capsys):
    pipeline = Pipeline(endpoint, "redrive-empty").create()
    dead_letter_url = with_dead_letter_queue(pipeline, "redrive-empty-dlq")
    os.environ["AWS_ENDPOINT_URL_SQS"] = endpoint

    code = main(
        ["redrive", "--dlq-url", dead_letter_url, "--queue-url", pipeline.queue_url, "--method", "receive-send"]
    )

    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        f"moved 0 message(s) from {dead_letter_url} to {pipeline.queue_url} (receive-send)"
    ]


def test_redrive_without_a_queue_url_says_where_to_find_them(clean_environment, capsys, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["redrive"]) == 2
    assert "PromotionDeadLetterQueueUrl" in capsys.readouterr().err
