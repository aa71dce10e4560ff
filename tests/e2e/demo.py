"""``make demo``: the main job end to end on embedded defaults, no cloud account, no Docker.

A trainer's job 42 (project 7) is interrupted at epoch 20 with its best epoch at 18. The trainer stages
best.pt and last.pt and writes the manifest; the bucket notifies SQS; the real handler receives the SQS
batch and promotes; the job's validation_results then show ✓ on the two epochs whose checkpoints are in
durable storage. Exits non-zero if any link of that chain fails.

    python -m tests.e2e.demo [--database-url URL] [--size-mb 6]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import insert

from ckpt.db import migrate
from ckpt.db.engine import make_engine
from ckpt.db.schema import platform_metadata, validation_results
from ckpt.db.store import PromotionStore
from ckpt.keys import AttemptRef, JobRef, Layout
from ckpt.manifest import Metric
from ckpt.staging import Checkpoint, stage_attempt
from tests.e2e.local_stack import Pipeline, moto_server

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


def run(database_url: str, size_mb: float = 6.0, say: Callable[[str], None] = print) -> None:
    with moto_server() as endpoint:
        say(f"· moto S3 + SQS on {endpoint}; database {database_url}")
        pipeline = Pipeline(endpoint, BUCKET).create()
        say(f"· bucket {BUCKET}: notification on staging/…manifest.json → SQS {pipeline.queue_arn}")
        os.environ.update(pipeline.function_environment(database_url))
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")

        engine = make_engine(database_url)
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

        layout = Layout(bucket=BUCKET)
        ref = AttemptRef(job=JOB, attempt=1)
        size = int(size_mb * 1024 * 1024)
        files = {
            "best": Checkpoint(fake_weights("best", size), epoch=BEST_EPOCH),
            "last": Checkpoint(fake_weights("last", size), epoch=INTERRUPTED_AT),
        }
        stage_attempt(
            pipeline.s3,
            layout,
            ref,
            "interrupted",
            files,
            metric=Metric(name="mAP50-95", mode="max"),
            error="KeyboardInterrupt",
        )
        say(f"· trainer: Ctrl+C at epoch {INTERRUPTED_AT}; staged best.pt (epoch {BEST_EPOCH}) and last.pt, then")
        say(f"  {layout.manifest_key(ref)}")

        # S3 sends an s3:TestEvent when the notification is configured; then one message per manifest.
        messages = pipeline.receive(expect=3, wait_seconds=5)
        manifests = [m for m in messages if "manifest.json" in m["Body"]]
        if len(manifests) != 1:
            raise DemoFailed(f"expected exactly one manifest notification, got {len(manifests)} of {len(messages)}")
        say(
            f"· SQS: {len(messages)} messages: the manifest's and S3's s3:TestEvent (checkpoint uploads do not trigger)"
        )

        from promote_checkpoints import handler  # imported once the environment is the function's

        answer = pipeline.deliver(handler, messages)
        if answer != {"batchItemFailures": []}:
            raise DemoFailed(f"the handler reported failures: {answer}")
        say("· PromoteCheckpointsFunction: SQS batch processed, no failures\n")

        _check_canonical(pipeline, layout, files)
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


def _check_canonical(pipeline: Pipeline, layout: Layout, files: dict[str, Checkpoint]) -> None:
    for name, checkpoint in files.items():
        key = layout.canonical_key(JOB, name)  # type: ignore[arg-type]
        body = pipeline.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
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
    args = parser.parse_args(argv)
    database_url = args.database_url
    if database_url is None:
        folder = Path(".demo")
        folder.mkdir(exist_ok=True)
        (folder / "ckpt.db").unlink(missing_ok=True)
        database_url = f"sqlite:///{folder / 'ckpt.db'}"
    try:
        run(database_url, args.size_mb)
    except Exception as exc:
        print(f"\nDEMO FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("\nDemo passed: both checkpoints are in durable storage and the database says which epochs they are.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
