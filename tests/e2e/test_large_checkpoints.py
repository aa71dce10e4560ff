"""Checkpoints of real sizes (YOLO's run from 5 to 230 MB) end to end: `ckpt stage` on the trainer's side (one PUT up
to 64 MiB, a multipart upload above), the bucket notification, the handler on the SQS batch, PostgreSQL; then the
canonical bytes hashed again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from ckpt.adapters.storage import MiB
from ckpt.cli import main as ckpt
from tests.e2e.local_stack import function_stack
from tests.support import add_epochs, paths, records

SIZES = {"64MiB+1": 64 * MiB + 1, "100MB": 100_000_000, "257MiB": 257 * MiB}


def write_random(path: Path, size: int) -> str:
    """A file of ``size`` random bytes; returns its SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        while size > 0:
            block = os.urandom(min(size, 8 * MiB))
            digest.update(block)
            f.write(block)
            size -= len(block)
    return digest.hexdigest()


def stored_sha256(s3: Any, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(8 * MiB):
        digest.update(chunk)
    return digest.hexdigest()


CASES = [
    *(("s3", size, "crc64nvme") for size in SIZES.values()),
    ("r2", SIZES["100MB"], "crc64nvme"),
    ("s3", SIZES["100MB"], "stream"),
    ("r2", SIZES["100MB"], "stream"),
]
# What checks the copy: on S3 a SHA-256 the store computes over it, and the content-MD5 ETag when the bytes'
# MD5 is known (they were hashed); on R2 the size, and that ETag.
COPY_EVIDENCE = {
    ("s3", "crc64nvme"): ["sha256"],
    ("s3", "stream"): ["sha256", "md5"],
    ("r2", "crc64nvme"): ["size"],
    ("r2", "stream"): ["size", "md5"],
}


@pytest.mark.parametrize(("profile", "size", "verified_by"), CASES)
def test_a_checkpoint_of_real_size_staged_with_ckpt_stage_is_promoted_intact(
    endpoint, pg_url, tmp_path, clean_environment, monkeypatch, profile, size, verified_by
):
    """Above 64 MiB the trainer uploads in parts with a full-object CRC-64/NVME, which the function checks
    against the manifest's without reading the file; a trainer without awscrt gives none, and the function
    hashes the bytes instead."""
    if verified_by == "stream":
        monkeypatch.setattr("ckpt.trainer.checksums._crc64nvme", lambda: None)
    bucket = f"large-{profile}-{size}-{verified_by}"
    pipeline, engine, handler = function_stack(endpoint, bucket, pg_url)
    monkeypatch.setenv("STORAGE_PROFILE", profile)
    add_epochs(engine, 42, {4: 0.7, 5: 0.6})
    weights = tmp_path / "weights"
    weights.mkdir()
    best_sha256 = write_random(weights / "best.pt", 5 * MiB)
    last_sha256 = write_random(weights / "last.pt", size)

    where = ["--project-id", "7", "--job-id", "42", "--weights-dir", str(weights)]
    staged = ckpt(["stage", *where, "--status", "completed", "--best-epoch", "4", "--last-epoch", "5", "--no-progress"])
    messages = [m for m in pipeline.receive(expect=2) if "manifest.json" in m["Body"]]
    answer = pipeline.deliver(handler, messages)

    assert staged == 0
    assert answer == {"batchItemFailures": []}
    assert [r["outcome"] for r in records(engine, 42)] == ["promoted"]
    canonical = "checkpoints/projects/7/jobs/42/"
    assert stored_sha256(pipeline.s3, bucket, canonical + "last.pt") == last_sha256
    assert stored_sha256(pipeline.s3, bucket, canonical + "best.pt") == best_sha256
    assert paths(engine, 42) == {4: f"r2://{bucket}/{canonical}best.pt", 5: f"r2://{bucket}/{canonical}last.pt"}
    last = records(engine, 42)[0]["details"]["files"]["last"]
    assert last["checksum_source"] == verified_by
    assert last["copy_verified_by"] == COPY_EVIDENCE[profile, verified_by]
    engine.dispose()
