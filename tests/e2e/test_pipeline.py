"""End to end: moto's standalone server (real HTTP S3 and SQS, real bucket notification) → SQS → handler
→ database, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
from urllib.parse import unquote_plus

import pytest

from ckpt.adapters.db.engine import make_engine
from ckpt.contract.keys import Layout
from tests.e2e import demo
from tests.e2e.local_stack import Pipeline, function_stack
from tests.support import Trainer, add_epochs, attempt, paths, records


@pytest.mark.parametrize("r2", [False, True], ids=["aws-sqs", "r2-queue"])
def test_the_demo_passes_on_sqlite_and_postgresql(database_url, clean_environment, r2):
    if database_url.startswith("postgresql"):
        with make_engine(database_url).begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS validation_results")
    lines: list[str] = []

    demo.run(database_url, size_mb=1 if not r2 else 5, say=lines.append, r2=r2)

    marked = [line for line in lines if "✓" in line]
    assert [line.split()[0] for line in marked] == ["18", "20"]


def test_only_manifests_under_staging_notify_the_queue(endpoint, clean_environment):
    pipeline = Pipeline(endpoint, "notify-filter").create()
    s3 = pipeline.s3
    s3.put_object(Bucket="notify-filter", Key="staging/projects/7/jobs/42/attempts/1/best.pt", Body=b"w")
    s3.put_object(Bucket="notify-filter", Key="checkpoints/projects/7/jobs/42/manifest.json", Body=b"{}")
    s3.put_object(Bucket="notify-filter", Key="staging/projects/7/jobs/42/attempts/1/manifest.json", Body=b"{}")

    bodies = [json.loads(m["Body"]) for m in pipeline.receive(expect=4, wait_seconds=4)]

    # moto encodes '/' as %2F where S3 leaves it; both decode to the key
    keys = [unquote_plus(record["s3"]["object"]["key"]) for body in bodies for record in body.get("Records", [])]
    assert keys == ["staging/projects/7/jobs/42/attempts/1/manifest.json"]
    assert [body.get("Event") for body in bodies if "Records" not in body] == ["s3:TestEvent"]


def test_a_redelivered_notification_is_recorded_as_a_duplicate(endpoint, database_url, clean_environment):
    bucket = f"redelivery-{'pg' if database_url.startswith('postgresql') else 'lite'}"
    pipeline, engine, handler = function_stack(endpoint, bucket, database_url)
    add_epochs(engine, 42, {18: 0.6, 20: 0.5})
    Trainer(pipeline.s3, Layout(bucket=bucket)).finish(attempt(1))
    messages = [m for m in pipeline.receive(expect=2) if "manifest.json" in m["Body"]]

    pipeline.deliver(handler, messages)
    pipeline.deliver(handler, messages)

    assert [r["outcome"] for r in records(engine, 42)][-2:] == ["promoted", "duplicate"]
    assert paths(engine, 42) == {
        18: f"r2://{bucket}/checkpoints/projects/7/jobs/42/best.pt",
        20: f"r2://{bucket}/checkpoints/projects/7/jobs/42/last.pt",
    }
    engine.dispose()


def test_large_checkpoints_are_promoted_with_a_multipart_copy(endpoint, tmp_path, clean_environment):
    from ckpt.adapters.storage import MiB, S3Storage
    from ckpt.trainer.staging import Checkpoint

    database_url = f"sqlite:///{tmp_path / 'ckpt.db'}"
    pipeline, engine, handler = function_stack(endpoint, "multipart", database_url)
    add_epochs(engine, 42, {1: 0.1})
    promoter = handler.get_promoter()
    promoter.storage = S3Storage(
        pipeline.s3, "multipart", multipart_copy_threshold=5 * MiB, multipart_chunksize=5 * MiB
    )
    big = os.urandom(11 * MiB)
    Trainer(pipeline.s3, Layout(bucket="multipart")).finish(attempt(1), files={"last": Checkpoint(big, epoch=1)})
    messages = [m for m in pipeline.receive(expect=2) if "manifest.json" in m["Body"]]

    assert pipeline.deliver(handler, messages) == {"batchItemFailures": []}

    copied = pipeline.s3.head_object(Bucket="multipart", Key="checkpoints/projects/7/jobs/42/last.pt")
    assert copied["ETag"].endswith('-3"')  # three parts: a multipart copy, not CopyObject
    assert copied["ContentLength"] == len(big)
    assert paths(engine, 42) == {1: "r2://multipart/checkpoints/projects/7/jobs/42/last.pt"}
    engine.dispose()


def test_a_store_that_fails_twice_then_recovers_still_gets_everything_staged(endpoint, tmp_path, clean_environment):
    from ckpt.adapters.storage import make_client
    from ckpt.config import Settings
    from ckpt.trainer.training import TrainingRun
    from tests.e2e.local_stack import FlakyProxy

    Pipeline(endpoint, "flaky-store").create()
    (tmp_path / "best.pt").write_bytes(b"best weights")
    (tmp_path / "last.pt").write_bytes(b"last weights")

    with FlakyProxy(endpoint, failures=2) as proxy:
        client = make_client(proxy.endpoint, "us-east-1")
        with TrainingRun(
            job_id=42, project_id=7, weights_dir=tmp_path, settings=Settings(bucket="flaky-store"), client=client
        ) as run:
            run.report(1, 0.5)

    assert proxy.failed == 2
    assert run.result is not None and run.result.ok
    listing = Pipeline(endpoint, "flaky-store").s3.list_objects_v2(Bucket="flaky-store", Prefix="staging/")
    assert sorted(obj["Key"].rsplit("/", 1)[1] for obj in listing["Contents"]) == [
        "best.pt",
        "last.pt",
        "manifest.json",
    ]


def test_a_bare_429_is_retried_with_backoff_where_botocores_standard_mode_would_give_up(endpoint, clean_environment):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    from ckpt.adapters.storage import make_client
    from tests.e2e.local_stack import FlakyProxy

    Pipeline(endpoint, "too-many-requests").create()
    with FlakyProxy(endpoint, failures=2, status=429, code="TooManyRequests") as proxy:
        plain = boto3.client("s3", endpoint_url=proxy.endpoint, config=Config(retries={"mode": "standard"}))
        try:
            plain.put_object(Bucket="too-many-requests", Key="k", Body=b"x")
        except ClientError as exc:
            refused = exc.response["ResponseMetadata"]["HTTPStatusCode"]
        make_client(proxy.endpoint, "us-east-1").put_object(Bucket="too-many-requests", Key="k", Body=b"y")

    assert refused == 429  # botocore alone gives up on the first 429 it does not know by its code
    assert proxy.failed == 2  # then ours met the second 429, waited, and its retry got through
