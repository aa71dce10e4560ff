"""End-of-training blocking time: how long ``TrainingRun`` holds the training process after its last epoch
to stage a best.pt/last.pt pair and the manifest; and how long the promotion of that pair takes, on the local
stack (moto's standalone server on loopback, SQLite).

    python -m tests.e2e.bench_staging [--sizes-mb 6 50] [--repeats 5]

Loopback has no network latency or bandwidth limit, so these figures are the client's own cost (reading,
hashing, request overhead) plus moto's; against R2 add the transfer time of the bytes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from ckpt.config import Settings
from ckpt.db import migrate
from ckpt.db.engine import make_engine
from ckpt.db.schema import platform_metadata
from ckpt.db.store import PromotionStore
from ckpt.keys import Layout
from ckpt.promotion import Promoter
from ckpt.storage import S3Storage
from ckpt.training import TrainingRun
from tests.e2e.local_stack import Pipeline, moto_server


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[6, 50])
    parser.add_argument("--repeats", type=int, default=5)
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


if __name__ == "__main__":
    main()
