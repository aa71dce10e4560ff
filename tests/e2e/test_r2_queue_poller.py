"""End to end: a trainer stages on moto's standalone S3, R2's notification waits on a local Cloudflare Queue
(tests/cloudflare_queues_server.py), the real poller handler pulls it and promotes into PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aws_lambda_powertools.utilities import parameters

from ckpt.adapters.db.engine import make_engine
from ckpt.adapters.db.store import PromotionStore
from ckpt.contract.keys import Layout
from tests.cloudflare_queues_server import (
    LocalQueue,
    ManualClock,
    RateLimit,
    RunningQueue,
    queues_server,
    send_r2_notification,
)
from tests.e2e.local_stack import REPO_ROOT, function_stack
from tests.support import LambdaContext, Trainer, add_epochs, attempt, paths, records

TOKEN_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:cloudflare-queues-token-AbCdEf"
MANIFEST = "staging/projects/7/jobs/42/attempts/1/manifest.json"


@dataclass
class PollerContext(LambdaContext):
    """Lambda's context with the clock the poller budgets its run by."""

    function_name: str = "R2QueuePollerFunction"
    timeout_ms: int = 120_000
    started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self.timeout_ms - (time.monotonic() - self.started) * 1000))


@dataclass
class Stack:
    bucket: str
    s3: Any
    engine: Any
    server: RunningQueue
    clock: ManualClock

    @property
    def queue(self) -> LocalQueue:
        return self.server.queue

    def stage(self) -> str:
        add_epochs(self.engine, 42, {18: 0.6, 19: 0.59, 20: 0.5})
        Trainer(self.s3, Layout(bucket=self.bucket)).finish(attempt(1))
        return MANIFEST

    def poll(self) -> dict[str, Any]:
        from r2_queue_poller import handler

        answer: dict[str, Any] = handler.lambda_handler(scheduled_event(), PollerContext())
        return answer

    def promoted_paths(self) -> dict[int, str | None]:
        return {
            18: f"r2://{self.bucket}/checkpoints/projects/7/jobs/42/best.pt",
            19: None,
            20: f"r2://{self.bucket}/checkpoints/projects/7/jobs/42/last.pt",
        }


def published_metrics(stdout: str) -> dict[str, float]:
    """The metric values in the CloudWatch embedded metric format lines Powertools printed."""
    values: dict[str, float] = {}
    for line in stdout.splitlines():
        if '"_aws"' in line:
            document = json.loads(line)
            for definition in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                value = document[definition["Name"]]
                values[definition["Name"]] = sum(value) if isinstance(value, list) else value
    return values


def scheduled_event() -> dict[str, Any]:
    """The EventBridge event the schedule sends (events/r2-queue-poll.json, also used by sam local invoke)."""
    event: dict[str, Any] = json.loads((REPO_ROOT / "events" / "r2-queue-poll.json").read_text())
    return event


@pytest.fixture
def stack(endpoint, pg_url, clean_environment, monkeypatch) -> Iterator[Stack]:
    bucket = f"r2-poller-{uuid.uuid4().hex[:12]}"
    pipeline, engine, _ = function_stack(endpoint, bucket, pg_url)
    clock = ManualClock()
    secrets_read: list[str] = []

    def get_secret(name: str, **kwargs: Any) -> str:
        secrets_read.append(name)
        assert name == TOKEN_SECRET_ARN
        return server.token

    monkeypatch.setattr(parameters, "get_secret", get_secret)
    with queues_server(LocalQueue(clock=clock, max_retries=3)) as server:
        monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", server.account_id)
        monkeypatch.setenv("CLOUDFLARE_QUEUE_ID", server.queue_id)
        monkeypatch.setenv("CLOUDFLARE_API_TOKEN_SECRET_ARN", TOKEN_SECRET_ARN)
        monkeypatch.setenv("CLOUDFLARE_API_BASE_URL", server.base_url)
        yield Stack(bucket=bucket, s3=pipeline.s3, engine=engine, server=server, clock=clock)
    engine.dispose()


@pytest.mark.parametrize("content_type", ["json", "text"])
def test_a_queued_r2_notification_is_promoted_and_acknowledged(stack, content_type, caplog, capsys):
    key = stack.stage()
    send_r2_notification(stack.queue, stack.bucket, key, content_type=content_type)

    answer = stack.poll()

    assert answer["pulled"] == 1 and answer["acked"] == 1 and answer["outcomes"] == {"promoted": 1}
    assert answer["stopped"] == "empty"
    assert paths(stack.engine, 42) == stack.promoted_paths()
    [record] = records(stack.engine, 42)
    assert (record["outcome"], record["trigger"]) == ("promoted", "r2-queue")
    assert stack.queue.pending() == [] and len(stack.queue.acked) == 1
    # the Bearer token is in no log line and no metric
    assert caplog.records and not [r for r in caplog.records if stack.server.token in repr(r.__dict__)]
    assert stack.server.token not in capsys.readouterr().out


def test_a_url_encoded_key_is_promoted_under_its_decoded_name(stack):
    stack.stage()
    send_r2_notification(stack.queue, stack.bucket, MANIFEST.replace("/", "%2F"))

    assert stack.poll()["outcomes"] == {"promoted": 1}

    assert [r["manifest_key"] for r in records(stack.engine, 42)] == [MANIFEST]


def test_a_message_delivered_twice_is_promoted_then_a_duplicate_and_both_are_acknowledged(stack):
    key = stack.stage()
    send_r2_notification(stack.queue, stack.bucket, key, copies=2)

    answer = stack.poll()

    assert (answer["pulled"], answer["acked"]) == (2, 2)
    assert [r["outcome"] for r in records(stack.engine, 42)] == ["promoted", "duplicate"]
    assert paths(stack.engine, 42) == stack.promoted_paths()
    assert stack.queue.pending() == []


def test_a_transient_database_failure_is_retried_later_then_promoted(stack):
    from promote_checkpoints import handler as promotion

    key = stack.stage()
    send_r2_notification(stack.queue, stack.bucket, key)
    promoter = promotion.get_promoter()
    working_store = promoter.store
    promoter.store = PromotionStore(make_engine("postgresql+pg8000://postgres@127.0.0.1:1/gone?sslmode=disable"))

    failed = stack.poll()

    assert (failed["pulled"], failed["acked"], failed["retried"], failed["stopped"]) == (1, 0, 1, "transient")
    [ack] = stack.queue.acks_and_retries()
    assert ack["acks"] == [] and [r["delay_seconds"] for r in ack["retries"]] == [30]
    [waiting] = stack.queue.pending()
    assert waiting.attempts == 1 and stack.queue.visible() == []  # invisible until the delay passes

    promoter.store = working_store
    assert stack.poll()["pulled"] == 0  # still within its delay
    stack.clock.advance(31)
    recovered = stack.poll()

    assert (recovered["pulled"], recovered["acked"], recovered["outcomes"]) == (1, 1, {"promoted": 1})
    assert stack.queue.pending() == [] and stack.queue.acked[0].attempts == 2
    assert paths(stack.engine, 42) == stack.promoted_paths()


def test_an_unreachable_database_leaves_the_messages_unleased(stack, monkeypatch):
    key = stack.stage()
    send_r2_notification(stack.queue, stack.bucket, key)
    monkeypatch.setenv("DATABASE_URL", "postgresql+pg8000://postgres@127.0.0.1:1/gone?sslmode=disable")

    answer = stack.poll()

    assert answer["stopped"] == "unavailable"
    assert stack.queue.requests == []  # nothing pulled: no attempt of the message spent on a run that cannot work
    assert [m.attempts for m in stack.queue.visible()] == [0]


def test_bodies_that_are_no_notification_are_acknowledged_and_counted_and_deletes_skipped(stack, caplog, capsys):
    stack.queue.send("hello, not json", content_type="text")
    stack.queue.send({"detail": "some other event"})
    stack.queue.send("{}", content_type="v8")
    send_r2_notification(stack.queue, stack.bucket, MANIFEST, action="DeleteObject")

    answer = stack.poll()

    assert (answer["pulled"], answer["acked"], answer["rejected"], answer["skipped"]) == (4, 4, 3, 1)
    assert stack.queue.pending() == [] and records(stack.engine) == []
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 3 and all(e.startswith("message rejected, acknowledged: ") for e in errors)
    assert "content type 'v8' cannot be read" in errors[2]
    metrics = published_metrics(capsys.readouterr().out)
    assert (metrics["EventsRejected"], metrics["MessagesAcked"], metrics["MessagesRetried"]) == (3, 4, 0)


def test_throttling_by_the_queues_api_is_waited_out(stack):
    key = stack.stage()
    send_r2_notification(stack.queue, stack.bucket, key)
    stack.queue.rate_limit = RateLimit(requests=1, window_seconds=1.0)

    answer = stack.poll()

    assert (answer["acked"], answer["outcomes"], answer["stopped"]) == (1, {"promoted": 1}, "empty")
    assert 429 in stack.queue.statuses()
    assert stack.queue.pending() == []
