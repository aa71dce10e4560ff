"""The local stack the bench runs on: moto's standalone server on loopback (S3 with the bucket notification to
SQS), a database of its own on the PostgreSQL server, and the real handler with the function's environment.

Jobs are staged the way a trainer stages them (files, then the manifest); their notifications are received
from the queue and handed over as Lambda's SQS poller hands them: an event of up to 10 records.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from sqlalchemy import create_engine, insert
from sqlalchemy.engine import make_url

from tests.e2e.local_stack import REPO_ROOT, Pipeline

PG_ADMIN_URL = os.environ.get("CKPT_TEST_PG_ADMIN_URL", "postgresql+pg8000://postgres@127.0.0.1:5432/postgres")
PROJECT = 7
MiB = 1024 * 1024
# The platform's rows of every bench job: 20 epochs, the best at 18 (the manifests name best 18, last 20).
EPOCHS = {epoch: 0.4 + epoch / 100 for epoch in range(1, 21)} | {19: 0.5, 20: 0.55}


@contextmanager
def bench_database() -> Iterator[str]:
    """A database of its own on the PostgreSQL server (``CKPT_TEST_PG_ADMIN_URL``), dropped afterwards."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"ckpt_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def plain_postgres_url(database_url: str) -> str:
    """The same database as a driverless URL, for the floor's pg8000."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """The function logs JSON lines and EMF metrics to stdout, as Lambda wants; here they go to /dev/null (at
    the file descriptor, so loggers that hold sys.stdout are silenced too) while the table is being measured."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


@dataclass
class Job:
    job_id: int
    manifest_key: str
    ref: Any = None  # ckpt.contract.keys.AttemptRef
    checkpoints: dict[str, Any] = field(default_factory=dict)  # name -> ckpt.trainer.staging.Checkpoint
    staged: dict[str, Any] | None = None  # name -> ckpt.trainer.upload.Uploaded, when the manifest is not written yet
    message: dict[str, Any] | None = None


@dataclass
class Stack:
    """The bucket and its queue, the database, the handler (configured through its environment as
    template.yaml configures it) and a trainer staging jobs."""

    endpoint: str
    database_url: str
    bucket: str = "bench"
    pipeline: Pipeline = field(init=False)
    engine: Any = field(init=False)
    handler: Any = field(init=False)
    _next_job: int = 1000

    def __post_init__(self) -> None:
        functions = str(REPO_ROOT / "functions")
        if functions not in sys.path:
            sys.path.insert(0, functions)
        from tests.e2e.local_stack import function_stack

        self.pipeline, self.engine, self.handler = function_stack(self.endpoint, self.bucket, self.database_url)
        os.environ.update(
            {
                "POWERTOOLS_SERVICE_NAME": "checkpoint-promotion",
                "POWERTOOLS_LOG_LEVEL": "INFO",  # template.yaml's default LogLevel
                "LOG_LEVEL": "INFO",
            }
        )
        from ckpt.contract.keys import Layout

        self.layout = Layout(bucket=self.bucket)

    def new_jobs(
        self, count: int, files: dict[str, bytes], epochs: dict[str, int] | None = None, *, manifest: bool = True
    ) -> list[Job]:
        """Stage ``count`` new jobs: the platform's rows first, then each job's files and (unless ``manifest`` is
        False, for ``put_manifest`` to write later) its manifest."""
        from ckpt.adapters.db.schema import validation_results
        from ckpt.contract.keys import JobRef
        from ckpt.trainer.staging import Checkpoint, stage_attempt
        from ckpt.trainer.upload import Uploader
        from tests.support import attempt

        epochs = epochs or {"best": 18, "last": 20}
        ids = list(range(self._next_job, self._next_job + count))
        self._next_job += count
        with self.engine.begin() as connection:
            connection.execute(
                insert(validation_results),
                [
                    {"job_id": job_id, "epoch": epoch, "primary_metric_value": value}
                    for job_id in ids
                    for epoch, value in EPOCHS.items()
                ],
            )

        def stage(job_id: int) -> Job:
            ref = attempt(1, JobRef(job_id=job_id, project_id=PROJECT))
            checkpoints = {name: Checkpoint(data, epoch=epochs[name]) for name, data in files.items()}
            job = Job(job_id, self.layout.manifest_key(ref), ref=ref, checkpoints=checkpoints)
            if manifest:
                stage_attempt(self.pipeline.s3, self.layout, ref, "completed", checkpoints)  # type: ignore[arg-type]
            else:
                uploader = Uploader(self.pipeline.s3, self.bucket)
                job.staged = {
                    name: uploader.upload(checkpoint.read(), self.layout.staged_key(ref, name))  # type: ignore[arg-type]
                    for name, checkpoint in checkpoints.items()
                }
            return job

        # several trainers at once (setup only, never timed): the batch figure stages hundreds of jobs
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(stage, ids))

    def put_manifest(self, job: Job) -> None:
        """Write the manifest of a job staged with ``manifest=False`` (its files are there already)."""
        from ckpt.trainer.staging import stage_attempt

        stage_attempt(
            self.pipeline.s3,
            self.layout,
            job.ref,
            "completed",
            job.checkpoints,  # type: ignore[arg-type]
            already_staged=job.staged,  # type: ignore[arg-type]
        )

    def purge(self, jobs: list[Job]) -> None:
        """Delete the jobs' staged and canonical objects (moto keeps them in memory)."""
        keys = []
        for job in jobs:
            keys.append(job.manifest_key)
            for name in job.checkpoints:
                keys.append(self.layout.staged_key(job.ref, name))  # type: ignore[arg-type]
                keys.append(self.layout.canonical_key(job.ref.job, name))  # type: ignore[arg-type]
        for start in range(0, len(keys), 1000):
            self.pipeline.s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in keys[start : start + 1000]]}
            )

    def receive(self, jobs: list[Job], timeout: float = 60) -> None:
        """Receive the jobs' notifications from the queue (each job's ``message``); other messages (the
        bucket's s3:TestEvent) are deleted."""
        wanted = {job.manifest_key: job for job in jobs if job.message is None}
        deadline = time.monotonic() + timeout
        sqs = self.pipeline.sqs
        while wanted and time.monotonic() < deadline:
            answer = sqs.receive_message(
                QueueUrl=self.pipeline.queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                AttributeNames=["All"],
                VisibilityTimeout=3600,
            )
            for message in answer.get("Messages", []):
                job = next((wanted.pop(key) for key in self.keys_of(message) if key in wanted), None)
                if job is None:
                    sqs.delete_message(QueueUrl=self.pipeline.queue_url, ReceiptHandle=message["ReceiptHandle"])
                else:
                    job.message = message
        if wanted:
            raise RuntimeError(f"{len(wanted)} notifications did not arrive within {timeout} s")

    @staticmethod
    def keys_of(message: dict[str, Any]) -> list[str]:
        """The object keys an S3 notification message names (decoded: moto encodes '/' as %2F)."""
        records = json.loads(message["Body"]).get("Records", [])
        return [unquote_plus(record["s3"]["object"]["key"]) for record in records]

    def event(self, jobs: list[Job]) -> dict[str, Any]:
        """The Lambda SQS event of these jobs' messages (a batch of at most 10)."""
        assert len(jobs) <= 10 and all(job.message for job in jobs)
        return self.pipeline.lambda_event([job.message for job in jobs if job.message])

    def delete(self, jobs: list[Job]) -> None:
        """Delete the jobs' messages, as Lambda's poller does after a successful batch (never timed)."""
        for job in jobs:
            if job.message is not None:
                self.pipeline.sqs.delete_message(
                    QueueUrl=self.pipeline.queue_url, ReceiptHandle=job.message["ReceiptHandle"]
                )

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        from tests.support import LambdaContext

        answer: dict[str, Any] = self.handler.lambda_handler(event, LambdaContext())
        if answer.get("batchItemFailures"):
            raise RuntimeError(f"the handler failed records: {answer}")
        return answer

    def outcomes(self, jobs: list[Job]) -> list[str]:
        """The recorded outcomes of these jobs, oldest first."""
        from sqlalchemy import text

        with self.engine.connect() as connection:
            rows = connection.execute(
                text("SELECT outcome FROM ckpt_promotions WHERE job_id = ANY(:ids) ORDER BY id"),
                {"ids": [job.job_id for job in jobs]},
            )
            return [row[0] for row in rows]
