"""The trainer's side, and what the function reads of a multipart checkpoint by profile and trainer.

- ``staging``: the time ``TrainingRun`` holds the training process after its last epoch to stage a 200 MiB
  last.pt and the manifest (``StageResult.seconds``), against a plain boto3 ``upload_file`` of the same file
  with boto3's defaults; interleaved.
- ``bytes_by_profile``: the bytes of a multipart checkpoint the promotion reads to verify it, on the S3 profile
  (moto directly) and the R2 profile (through tests/r2_proxy.py, which answers as R2 does), from a trainer
  with awscrt (the full-object CRC-64/NVME) and one without it (the function then hashes the file by
  streaming). This was ``tests/e2e/bench_staging.py``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import boto3

from tests.bench.counting import CostProbe

MiB = 1024 * 1024


def staging(endpoint: str, size: int, repeats: int) -> dict[str, list[float]]:
    """Seconds to stage ``size`` bytes with TrainingRun (file + manifest) and with ``upload_file``."""
    from ckpt.adapters.storage import make_client
    from ckpt.config import Settings
    from ckpt.trainer.training import TrainingRun

    bucket = "bench-staging"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "local")  # moto takes any; a machine without credentials has none
    client = make_client(endpoint, "us-east-1")
    client.create_bucket(Bucket=bucket)
    plain = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    samples: dict[str, list[float]] = {"training_run": [], "upload_file": []}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp)
        path = weights / "last.pt"
        with path.open("wb") as f:
            for _ in range(size // MiB):
                f.write(os.urandom(MiB))
            f.write(os.urandom(size % MiB))

        def ours() -> float:
            run = TrainingRun(
                job_id=9001,
                project_id=7,
                weights_dir=weights,
                attempt=1,
                settings=Settings(bucket=bucket),
                client=client,
                handle_sigterm=False,
            )
            with run:
                run.report(1, 0.5)
            assert run.result is not None and run.result.ok, run.result
            return run.result.seconds

        def baseline() -> float:
            started = time.perf_counter()
            plain.upload_file(str(path), bucket, "plain/last.pt")
            return time.perf_counter() - started

        for round_ in range(repeats):
            order = [("training_run", ours), ("upload_file", baseline)]
            for name, step in order if round_ % 2 == 0 else order[::-1]:
                samples[name].append(step())
    return samples


@contextmanager
def _trainer_without_awscrt() -> Iterator[None]:
    from ckpt.trainer import checksums

    original = checksums._crc64nvme
    checksums._crc64nvme = lambda: None  # type: ignore[assignment]
    try:
        yield
    finally:
        checksums._crc64nvme = original


def bytes_by_profile(endpoint: str, size: int, probe: CostProbe) -> list[dict[str, Any]]:
    """Per (profile, trainer): the bytes of the staged file the promotion read, its S3 calls and seconds."""
    from ckpt.adapters.db import migrate
    from ckpt.adapters.db.engine import make_engine
    from ckpt.adapters.db.schema import platform_metadata
    from ckpt.adapters.db.store import PromotionStore
    from ckpt.adapters.profiles import R2, S3
    from ckpt.adapters.storage import S3Storage, make_client
    from ckpt.contract.keys import CheckpointName, Layout
    from ckpt.promotion.promoter import Promoter
    from ckpt.trainer.staging import Checkpoint
    from ckpt.trainer.upload import UploadPolicy
    from tests.e2e.local_stack import Pipeline
    from tests.r2_proxy import R2Proxy
    from tests.support import Trainer, attempt

    rows: list[dict[str, Any]] = []
    data = os.urandom(size)
    with tempfile.TemporaryDirectory() as tmp, R2Proxy(endpoint) as proxy:
        for profile, with_crc in ((S3, True), (S3, False), (R2, True), (R2, False)):
            bucket = f"bench-read-{profile.name}-{'crc' if with_crc else 'nocrc'}"
            Pipeline(endpoint, bucket).create()
            client = make_client(proxy.endpoint if profile is R2 else endpoint, "us-east-1")
            engine = make_engine(f"sqlite:///{tmp}/{bucket}.db")
            platform_metadata.create_all(engine)
            migrate.upgrade(engine)
            storage = S3Storage(client, bucket, profile=profile)
            promoter = Promoter(Layout(bucket=bucket), storage, PromotionStore(engine))
            with nullcontext() if with_crc else _trainer_without_awscrt():
                files: dict[CheckpointName, Checkpoint] = {"last": Checkpoint(data, epoch=1)}
                Trainer(client, Layout(bucket=bucket)).finish(
                    attempt(1), files=files, policy=UploadPolicy(profile=profile)
                )
            probe.watch_client(client)
            with probe.count() as tally:
                started = time.perf_counter()
                outcome = promoter.promote_key(bucket, promoter.layout.manifest_key(attempt(1)), trigger="bench")
                seconds = time.perf_counter() - started
            assert outcome.status == "promoted", outcome
            rows.append(
                {
                    "profile": profile.name,
                    "trainer": "CRC-64/NVME (awscrt)" if with_crc else "no awscrt",
                    "checksum_source": outcome.files["last"].checksum_source,
                    "bytes_read": tally.bytes_read(".pt"),
                    "s3_operations": dict(tally.s3_operations),
                    "seconds": seconds,
                }
            )
            engine.dispose()
            # free moto's memory: the staged and the canonical copy
            layout = promoter.layout
            for key in (layout.staged_key(attempt(1), "last"), layout.canonical_key(attempt(1).job, "last")):
                client.delete_object(Bucket=bucket, Key=key)
    return rows
