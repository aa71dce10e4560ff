"""``make demo``: the main job end to end on embedded defaults, no cloud account, no Docker.

A trainer's job 42 (project 7) is interrupted at epoch 20 with its best epoch at 18. The trainer stages
best.pt and last.pt and writes the manifest; the bucket notifies SQS; the real handler receives the SQS
batch and promotes; the job's validation_results then show ✓ on the two epochs whose checkpoints are in
durable storage. Exits non-zero if any link of that chain fails.

    python -m tests.e2e.demo [--database-url URL] [--size-mb 6] [--r2]

With ``--r2`` (``make demo R2=1``) the same job goes R2's way: the store answers as Cloudflare R2 does
(tests/r2_proxy.py in front of moto), the manifest's event notification lands on a local Cloudflare Queue
(tests/cloudflare_queues_server.py), and R2QueuePollerFunction's real handler pulls it and promotes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import boto3
from sqlalchemy import Engine, insert

from ckpt.adapters.db import migrate
from ckpt.adapters.db.engine import make_engine
from ckpt.adapters.db.schema import platform_metadata, validation_results
from ckpt.adapters.db.store import PromotionStore
from ckpt.adapters.profiles import R2
from ckpt.adapters.storage import make_client
from ckpt.contract.keys import AttemptRef, CheckpointName, JobRef, Layout
from ckpt.contract.manifest import Metric
from ckpt.trainer.staging import Checkpoint, stage_attempt
from ckpt.trainer.upload import UploadPolicy
from tests.e2e.local_stack import CREDENTIALS, REGION, Pipeline, moto_server
from tests.support import LambdaContext

BUCKET = "vision-platform-prod"
JOB = JobRef(job_id=42, project_id=7)
INTERRUPTED_AT, BEST_EPOCH = 20, 18


class DemoFailed(RuntimeError):
    pass


def validation_curve(epochs: int, best: int) -> dict[int, float]:
    """mAP50-95 per epoch: rising, peaking at ``best``, then slightly lower (the run was overfitting)."""
    curve = {epoch: round(0.62 * (1 - 0.85**epoch), 4) for epoch in range(1, epochs + 1)}
    peak = curve[best] + 0.01
    return {epoch: (peak if epoch == best else min(value, peak - 0.002)) for epoch, value in curve.items()}


def fake_weights(label: str, size: int) -> bytes:
    return random.Random(label).randbytes(size)


def run(database_url: str, size_mb: float = 6.0, say: Callable[[str], None] = print, r2: bool = False) -> None:
    with moto_server() as endpoint:
        say(f"· moto S3 + SQS on {endpoint}; database {database_url}")
        engine = make_engine(database_url)
        _platform_rows(engine, say)
        size = int(size_mb * 1024 * 1024)
        files = {
            "best": Checkpoint(fake_weights("best", size), epoch=BEST_EPOCH),
            "last": Checkpoint(fake_weights("last", size), epoch=INTERRUPTED_AT),
        }
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        deliver = _through_r2 if r2 else _through_sqs
        s3 = deliver(endpoint, database_url, files, say)

        layout = Layout(bucket=BUCKET)
        _check_canonical(s3, layout, files)
        rows = PromotionStore(engine).checkpoint_paths(JOB.job_id)
        _print_table(rows, say)
        expected = {
            BEST_EPOCH: layout.canonical_uri(JOB, "best"),
            INTERRUPTED_AT: layout.canonical_uri(JOB, "last"),
        }
        actual = {epoch: path for epoch, _, path in rows if path}
        if actual != expected:
            raise DemoFailed(f"validation_results paths are {actual}, expected {expected}")
        [record] = PromotionStore(engine).history(JOB.job_id, limit=1)
        say(f"\n· recorded outcome: {record['outcome']} — {record['reason']}")
        engine.dispose()


def _platform_rows(engine: Engine, say: Callable[[str], None]) -> None:
    platform_metadata.create_all(engine)  # the platform's table, as the platform would have it
    migrate.upgrade(engine)  # what `ckpt db upgrade` does
    curve = validation_curve(INTERRUPTED_AT, BEST_EPOCH)
    with engine.begin() as connection:
        connection.execute(validation_results.delete().where(validation_results.c.job_id == JOB.job_id))
        connection.execute(
            insert(validation_results),
            [{"job_id": JOB.job_id, "epoch": e, "primary_metric_value": v} for e, v in curve.items()],
        )
    say(f"· platform: job {JOB.job_id} has validation results for epochs 1-{INTERRUPTED_AT}")


def _stage(client: Any, files: dict[CheckpointName, Checkpoint], say: Callable[[str], None], **policy: Any) -> None:
    layout = Layout(bucket=BUCKET)
    ref = AttemptRef(job=JOB, attempt=1)
    stage_attempt(
        client,
        layout,
        ref,
        "interrupted",
        files,
        metric=Metric(name="mAP50-95", mode="max"),
        error="KeyboardInterrupt",
        policy=UploadPolicy(progress=False, **policy),
    )
    say(f"· trainer: Ctrl+C at epoch {INTERRUPTED_AT}; staged best.pt (epoch {BEST_EPOCH}) and last.pt, then")
    say(f"  {layout.manifest_key(ref)}")


def _through_sqs(
    endpoint: str, database_url: str, files: dict[CheckpointName, Checkpoint], say: Callable[[str], None]
) -> Any:
    """AWS S3's way: the bucket notifies SQS, and Lambda hands the SQS batch to PromoteCheckpointsFunction."""
    pipeline = Pipeline(endpoint, BUCKET).create()
    say(f"· bucket {BUCKET}: notification on staging/…manifest.json → SQS {pipeline.queue_arn}")
    os.environ.update(pipeline.function_environment(database_url))
    _stage(pipeline.s3, files, say)

    # S3 sends an s3:TestEvent when the notification is configured; then one message per manifest.
    messages = pipeline.receive(expect=3, wait_seconds=5)
    manifests = [m for m in messages if "manifest.json" in m["Body"]]
    if len(manifests) != 1:
        raise DemoFailed(f"expected exactly one manifest notification, got {len(manifests)} of {len(messages)}")
    say(f"· SQS: {len(messages)} messages: the manifest's and S3's s3:TestEvent (checkpoint uploads do not trigger)")

    from promote_checkpoints import handler  # imported once the environment is the function's

    answer = pipeline.deliver(handler, messages)
    if answer != {"batchItemFailures": []}:
        raise DemoFailed(f"the handler reported failures: {answer}")
    say("· PromoteCheckpointsFunction: SQS batch processed, no failures\n")
    return pipeline.s3


def _through_r2(
    endpoint: str, database_url: str, files: dict[CheckpointName, Checkpoint], say: Callable[[str], None]
) -> Any:
    """Cloudflare R2's way: the store is R2 (a proxy in front of moto that answers as R2 does), its event
    notification goes to a Cloudflare Queue (a local one), and R2QueuePollerFunction pulls it and promotes."""
    from tests.cloudflare_queues_server import queues_server, send_r2_notification
    from tests.r2_proxy import R2Proxy

    os.environ.update(CREDENTIALS)
    s3 = make_client(endpoint, REGION)
    s3.create_bucket(Bucket=BUCKET)
    secrets = boto3.client("secretsmanager", endpoint_url=endpoint, region_name=REGION)
    with ExitStack() as stack:
        server = stack.enter_context(queues_server())
        token_arn = secrets.create_secret(Name=f"cloudflare-queues-token-{os.getpid()}", SecretString=server.token)[
            "ARN"
        ]

        def notify(bucket: str, key: str, action: str) -> None:  # R2's rule: prefix staging/, suffix manifest.json
            if key.startswith("staging/") and key.endswith("manifest.json"):
                send_r2_notification(server.queue, bucket, key, action=action)

        proxy = stack.enter_context(R2Proxy(endpoint, on_object_created=notify))
        say(f"· R2 (moto behind a proxy that answers as R2 does) on {proxy.endpoint}")
        say(f"· R2 event notification rule: staging/…manifest.json → Cloudflare Queue {server.base_url}")
        os.environ.update(
            {
                **CREDENTIALS,
                "CHECKPOINT_BUCKET": BUCKET,
                "AWS_S3_ENDPOINT_URL": proxy.endpoint,
                "STORAGE_PROFILE": "r2",
                "DATABASE_URL": database_url,
                "POWERTOOLS_TRACE_DISABLED": "1",
                "POWERTOOLS_METRICS_NAMESPACE": "CheckpointPipeline",
                "CLOUDFLARE_ACCOUNT_ID": server.account_id,
                "CLOUDFLARE_QUEUE_ID": server.queue_id,
                "CLOUDFLARE_API_BASE_URL": server.base_url,
                "CLOUDFLARE_API_TOKEN_SECRET_ARN": token_arn,
                "AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
            }
        )
        _stage(make_client(proxy.endpoint, REGION), files, say, profile=R2, multipart_threshold=4 * 1024 * 1024)
        waiting = len(server.queue.visible())
        say(f"· Cloudflare Queue: {waiting} message (the manifest's; checkpoint uploads do not notify)")

        from r2_queue_poller import handler  # imported once the environment is the function's

        answer = handler.lambda_handler(POLL_EVENT, _PollerContext())
        if (answer.get("acked"), answer.get("retried"), answer.get("unprocessed")) != (1, 0, 0) or proxy.rejections:
            raise DemoFailed(f"the poller did not promote and acknowledge the message: {answer} {proxy.rejections}")
        checkpoint_bytes = sum(n for key, n in proxy.bytes_downloaded_by_key.items() if key.endswith(".pt"))
        if checkpoint_bytes:
            raise DemoFailed(f"the function read {checkpoint_bytes} bytes of checkpoints; their checksums suffice")
        say(
            "· R2QueuePollerFunction: pulled and acknowledged 1 message; it verified the checkpoints by R2's "
            "CRC-64/NVME, reading none of their bytes\n"
        )
    return s3


POLL_EVENT = json.loads((Path(__file__).parents[2] / "events" / "r2-queue-poll.json").read_text())


class _PollerContext(LambdaContext):
    """Lambda's context with the clock the poller budgets its run by: a minute, as the schedule gives it."""

    def __init__(self) -> None:
        super().__init__(function_name="R2QueuePollerFunction")
        self._deadline = time.monotonic() + 60

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _check_canonical(s3: Any, layout: Layout, files: dict[CheckpointName, Checkpoint]) -> None:
    for name, checkpoint in files.items():
        key = layout.canonical_key(JOB, name)
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        if hashlib.sha256(body).digest() != hashlib.sha256(checkpoint.read()).digest():
            raise DemoFailed(f"{key} does not hold the staged {name}.pt")


def _print_table(rows: list[tuple[int, float | None, str | None]], say: Callable[[str], None]) -> None:
    say(f"validation_results of job {JOB.job_id}")
    say(f"{'epoch':>6}  {'mAP50-95':>8}  checkpoint")
    for epoch, value, path in rows:
        mark = "✓" if path and path.startswith("r2://") else "·"
        say(f"{epoch:>6}  {value if value is not None else float('nan'):>8.4f}  {mark} {path or ''}".rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file in .demo/")
    parser.add_argument("--size-mb", type=float, default=6.0, help="size of each fake checkpoint (YOLO11n ≈ 6)")
    parser.add_argument(
        "--r2", action="store_true", help="R2's way: R2's rules, its notification on a Cloudflare Queue, the poller"
    )
    args = parser.parse_args(argv)
    database_url = args.database_url
    if database_url is None:
        folder = Path(".demo")
        folder.mkdir(exist_ok=True)
        (folder / "ckpt.db").unlink(missing_ok=True)
        database_url = f"sqlite:///{folder / 'ckpt.db'}"
    try:
        run(database_url, args.size_mb, r2=args.r2)
    except Exception as exc:
        print(f"\nDEMO FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("\nDemo passed: both checkpoints are in durable storage and the database says which epochs they are.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
