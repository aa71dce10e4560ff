"""What a promotion costs through the handler, counted (issue 10): S3 calls, database round trips, bytes of the
checkpoints read. The counts are deterministic, so they are asserted here against the issue's targets (never
a time: ``make bench`` measures those, next to the floor, with the same counters from tests/bench/counting.py).

The handler runs as Lambda runs it: an SQS event, the function's environment, a warm execution environment
(one promotion first, so the connection it keeps is open), PostgreSQL (round trips are pg8000's) and moto's S3.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from ckpt.contract.keys import AttemptRef, JobRef
from ckpt.trainer.staging import Checkpoint
from tests.bench.counting import CostProbe, Tally, s3_notification_body, sqs_event
from tests.support import BUCKET, LambdaContext, add_epochs, attempt, configured_handler, records

pytestmark = pytest.mark.postgres

KiB = 1024
MB = 1000 * 1000
WARM = JobRef(job_id=41, project_id=7)
JOB = JobRef(job_id=42, project_id=7)

# The floor's calls (tests/bench/floor.py): GET the manifest, HEAD each file, one CopyObject each.
ESSENTIAL_PROMOTION_CALLS = {"GetObject": 1, "HeadObject": 2, "CopyObject": 2}
# "No storage call beyond what identifies the manifest."
ESSENTIAL_DUPLICATE_CALLS = {"GetObject": 1}
MAX_ROUND_TRIPS = 12
MAX_CHECKPOINT_BYTES_READ = 64 * KiB


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch, pg_url: str, pg_engine: Any, s3: Any) -> Any:
    """The handler module, configured through the environment as template.yaml configures it."""
    return configured_handler(monkeypatch, pg_url)


@pytest.fixture
def probe(handler: Any) -> Iterator[CostProbe]:
    with CostProbe() as probe:
        probe.watch_promoter(handler.get_promoter())
        yield probe


def deliver(handler: Any, ref: AttemptRef, layout: Any) -> dict[str, Any]:
    """The SQS event of the manifest's notification, as Lambda's poller hands it to the function."""
    event = sqs_event([s3_notification_body(BUCKET, layout.manifest_key(ref))])
    answer: dict[str, Any] = handler.lambda_handler(event, LambdaContext())
    assert answer == {"batchItemFailures": []}
    return answer


@pytest.fixture
def warm(handler: Any, probe: CostProbe, pg_engine: Any, trainer: Any, layout: Any) -> None:
    """One promotion before the counted one: the execution environment is warm, its connection open."""
    add_epochs(pg_engine, WARM.job_id, {18: 0.6, 20: 0.5})
    trainer.finish(attempt(1, WARM))
    deliver(handler, attempt(1, WARM), layout)


def counted_pair(handler: Any, probe: CostProbe, pg_engine: Any, trainer: Any, layout: Any) -> tuple[Tally, Tally]:
    """A promotion of 2 checkpoints, then the same notification delivered again."""
    add_epochs(pg_engine, JOB.job_id, {epoch: epoch / 100 for epoch in range(1, 21)} | {18: 0.6})
    trainer.finish(attempt(1, JOB))
    with probe.count() as promotion:
        deliver(handler, attempt(1, JOB), layout)
    with probe.count() as duplicate:
        deliver(handler, attempt(1, JOB), layout)
    assert [r["outcome"] for r in records(pg_engine, JOB.job_id)] == ["promoted", "duplicate"]
    return promotion, duplicate


def explained(tally: Tally) -> str:
    trace = "\n".join(f"  {n + 1}. {line[:160]}" for n, line in enumerate(tally.wire_trace))
    return f"S3 {dict(tally.s3_operations)}; {tally.round_trips} round trips, {tally.statements} statements:\n{trace}"


def test_a_promotion_makes_only_the_essential_storage_calls(handler, probe, warm, pg_engine, trainer, layout):
    promotion, _ = counted_pair(handler, probe, pg_engine, trainer, layout)

    assert dict(promotion.s3_operations) == ESSENTIAL_PROMOTION_CALLS, explained(promotion)


def test_a_duplicate_delivery_reads_the_manifest_and_nothing_else(handler, probe, warm, pg_engine, trainer, layout):
    _, duplicate = counted_pair(handler, probe, pg_engine, trainer, layout)

    assert dict(duplicate.s3_operations) == ESSENTIAL_DUPLICATE_CALLS, explained(duplicate)


def test_a_promotion_and_a_duplicate_each_take_at_most_12_database_round_trips(
    handler, probe, warm, pg_engine, trainer, layout
):
    promotion, duplicate = counted_pair(handler, probe, pg_engine, trainer, layout)

    assert promotion.connects == duplicate.connects == 0  # the warm connection, not a new one
    assert promotion.round_trips <= MAX_ROUND_TRIPS, explained(promotion)
    assert duplicate.round_trips <= MAX_ROUND_TRIPS, explained(duplicate)


@pytest.mark.parametrize("size", [8 * MB, 300 * MB], ids=["8MB-single-put", "300MB-multipart"])
def test_the_function_reads_at_most_64_KiB_of_a_checkpoint_at_any_size(
    handler, probe, warm, pg_engine, trainer, layout, size
):
    add_epochs(pg_engine, JOB.job_id, {20: 0.5})
    trainer.finish(attempt(1, JOB), files={"last": Checkpoint(os.urandom(size), epoch=20)})

    with probe.count() as tally:
        deliver(handler, attempt(1, JOB), layout)

    assert [r["outcome"] for r in records(pg_engine, JOB.job_id)] == ["promoted"]
    assert tally.bytes_read(".pt") <= MAX_CHECKPOINT_BYTES_READ, explained(tally)
