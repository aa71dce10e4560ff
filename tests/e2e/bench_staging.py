"""End-of-training blocking time: how long ``TrainingRun`` holds the training process after its last epoch
to stage a best.pt/last.pt pair and the manifest; and how long the promotion of that pair takes, on the local
stack (moto's standalone server on loopback, SQLite).

    python -m tests.e2e.bench_staging [--sizes-mb 6 50] [--repeats 5] [--multipart-mb 200]

It also counts the bytes of a multipart checkpoint (200 MB) the function reads to verify it, on the S3 profile
(moto directly) and the R2 profile (through tests/r2_proxy.py, which answers as R2 does), with the trainer's
full-object CRC-64/NVME and without it (a trainer without awscrt).

Loopback has no network latency or bandwidth limit, so these figures are the client's own cost (reading,
hashing, request overhead) plus moto's; against R2 add the transfer time of the bytes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ckpt import checksums
from ckpt.config import Settings
from ckpt.db import migrate
from ckpt.db.engine import make_engine
from ckpt.db.schema import platform_metadata
from ckpt.db.store import PromotionStore
from ckpt.keys import CheckpointName, Layout
from ckpt.ports import StreamedDigests
from ckpt.profiles import R2, S3
from ckpt.promotion import Promoter
from ckpt.staging import Checkpoint
from ckpt.storage import S3Storage, make_client
from ckpt.training import TrainingRun
from ckpt.upload import UploadPolicy
from tests.e2e.local_stack import Pipeline, moto_server
from tests.r2_proxy import R2Proxy
from tests.support import Trainer, attempt


def measure(endpoint: str, size_mb: float, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds to stage the pair at the end of training, and seconds to promote it."""
    bucket = f"bench-{int(size_mb)}mb"
    pipeline = Pipeline(endpoint, bucket).create()
    staging, promoting = [], []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        weights.mkdir()
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        platform_metadata.create_all(engine)
        migrate.upgrade(engine)
        promoter = Promoter(Layout(bucket=bucket), S3Storage(pipeline.s3, bucket), PromotionStore(engine))
        for name in ("best", "last"):
            (weights / f"{name}.pt").write_bytes(os.urandom(int(size_mb * 1024 * 1024)))
        for attempt in range(1, repeats + 1):
            run = TrainingRun(
                job_id=42,
                project_id=7,
                weights_dir=weights,
                attempt=attempt,
                settings=Settings(bucket=bucket),
                client=pipeline.s3,
                handle_sigterm=False,
            )
            with run:
                run.report(1, 0.5)
            assert run.result is not None and run.result.ok, run.result
            staging.append(run.result.seconds)  # from the end of training to the manifest stored
            started = time.perf_counter()
            outcome = promoter.promote_key(bucket, promoter.layout.manifest_key(run.result.ref), trigger="bench")
            promoting.append(time.perf_counter() - started)
            assert outcome.status == "promoted", outcome
        engine.dispose()
    return staging, promoting


class CountingStorage(S3Storage):
    """The storage adapter, counting the bytes the promotion streams to verify files."""

    bytes_read = 0

    def stream_digests(self, key: str, etag: str, sink: Any = None) -> StreamedDigests:
        digests = super().stream_digests(key, etag, sink)
        self.bytes_read += digests.length
        return digests


@contextmanager
def trainer_without_awscrt() -> Iterator[None]:
    original = checksums._crc64nvme
    checksums._crc64nvme = lambda: None  # type: ignore[assignment]
    try:
        yield
    finally:
        checksums._crc64nvme = original


def measure_bytes_read(endpoint: str, size_mb: float) -> list[tuple[str, str, int, float]]:
    """(profile, trainer, bytes the promotion read of the staged file, seconds to promote) per case."""
    rows: list[tuple[str, str, int, float]] = []
    data = os.urandom(int(size_mb * 1024 * 1024))
    with tempfile.TemporaryDirectory() as tmp, R2Proxy(endpoint) as proxy:
        for profile, with_crc in ((S3, True), (S3, False), (R2, True), (R2, False)):
            bucket = f"bench-read-{profile.name}-{'crc' if with_crc else 'nocrc'}"
            Pipeline(endpoint, bucket).create()
            client = make_client(proxy.endpoint if profile is R2 else endpoint, "us-east-1")
            engine = make_engine(f"sqlite:///{tmp}/{bucket}.db")
            platform_metadata.create_all(engine)
            migrate.upgrade(engine)
            storage = CountingStorage(client, bucket, profile=profile)
            promoter = Promoter(Layout(bucket=bucket), storage, PromotionStore(engine))
            with nullcontext() if with_crc else trainer_without_awscrt():
                files: dict[CheckpointName, Checkpoint] = {"last": Checkpoint(data, epoch=1)}
                Trainer(client, Layout(bucket=bucket)).finish(
                    attempt(1), files=files, policy=UploadPolicy(profile=profile)
                )
            started = time.perf_counter()
            outcome = promoter.promote_key(bucket, promoter.layout.manifest_key(attempt(1)), trigger="bench")
            seconds = time.perf_counter() - started
            assert outcome.status == "promoted", outcome
            rows.append((profile.name, "CRC-64/NVME" if with_crc else "no awscrt", storage.bytes_read, seconds))
            engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[6, 50])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--multipart-mb", type=float, default=200)
    args = parser.parse_args()
    with moto_server() as endpoint:
        print(f"{'pair':>10}  {'step':<28} {'median s':>9} {'min s':>7} {'max s':>7}  runs")
        for size in args.sizes_mb:
            staging, promoting = measure(endpoint, size, args.repeats)
            for step, runs in (("stage (blocks training)", staging), ("promote (function)", promoting)):
                print(
                    f"{f'2 x {size:g} MB':>10}  {step:<28} {statistics.median(runs):>9.3f} {min(runs):>7.3f}"
                    f" {max(runs):>7.3f}  {len(runs)}"
                )

        print(f"\n{args.multipart_mb:g} MB multipart last.pt: what the promotion reads to verify it")
        print(f"{'profile':>8}  {'trainer':<12} {'bytes read':>12} {'promote s':>10}")
        for profile, trainer, read, seconds in measure_bytes_read(endpoint, args.multipart_mb):
            print(f"{profile:>8}  {trainer:<12} {read:>12,} {seconds:>10.3f}")


if __name__ == "__main__":
    main()
