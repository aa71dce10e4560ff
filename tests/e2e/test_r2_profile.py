"""The trainer's staging and the function's promotion through a proxy that answers as Cloudflare R2 does
(tests/r2_proxy.py): with STORAGE_PROFILE=r2 they pass, with the S3 profile the promotion fails where R2 would.

The proxy's size limit stands in for R2's 5 GiB - 5 MiB, so the profile is scaled down to match it: the same
rules, at sizes a test can move."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from ckpt.adapters.profiles import PROFILES, R2
from ckpt.adapters.storage import MiB, make_client
from ckpt.contract.keys import Layout
from ckpt.trainer.staging import Checkpoint
from ckpt.trainer.upload import UploadPolicy
from tests.e2e.local_stack import function_stack
from tests.r2_proxy import R2Proxy
from tests.support import Trainer, add_epochs, attempt, paths, records

LIMIT = 8 * MiB  # stands in for R2's 5 GiB - 5 MiB
SCALED_R2 = dataclasses.replace(R2, max_copy_object_bytes=LIMIT, max_part_bytes=LIMIT)
FILES = {"small": 300_000, "medium": 4 * MiB, "multipart": 20 * MiB}  # one PUT up to 5 MiB here


@pytest.fixture
def r2(endpoint, monkeypatch):
    monkeypatch.setitem(PROFILES, "r2", SCALED_R2)
    with R2Proxy(endpoint, max_upload_bytes=LIMIT, same_key_write_interval=1.0) as proxy:
        yield proxy


def stage(proxy: R2Proxy, bucket: str, sizes: dict[str, int]) -> dict[str, bytes]:
    """Stage best.pt and last.pt of job 42 through the proxy the way the trainer does, with the R2 profile."""
    data = {name: os.urandom(size) for name, size in sizes.items()}
    policy = UploadPolicy(multipart_threshold=5 * MiB, part_size=5 * MiB, profile=SCALED_R2)
    files = {
        name: Checkpoint(content, epoch=epoch) for (name, content), epoch in zip(data.items(), (4, 5), strict=True)
    }
    Trainer(make_client(proxy.endpoint, "us-east-1"), Layout(bucket=bucket)).finish(
        attempt(1), files=files, policy=policy
    )
    return data


@pytest.mark.parametrize("last", FILES)
def test_with_the_r2_profile_staging_and_promotion_pass_rs_rules(
    r2, endpoint, pg_url, clean_environment, monkeypatch, last
):
    bucket = f"r2-profile-{last}"
    pipeline, engine, handler = function_stack(endpoint, bucket, pg_url)
    monkeypatch.setenv("AWS_S3_ENDPOINT_URL", r2.endpoint)
    monkeypatch.setenv("STORAGE_PROFILE", "r2")
    add_epochs(engine, 42, {4: 0.7, 5: 0.6})
    staged = stage(r2, bucket, {"best": FILES["small"], "last": FILES[last]})
    r2.reset_counters()

    answer = pipeline.deliver(handler, [m for m in pipeline.receive(expect=2) if "manifest.json" in m["Body"]])

    assert answer == {"batchItemFailures": []}
    assert r2.rejections == []
    [record] = records(engine, 42)
    assert record["outcome"] == "promoted"
    canonical = "checkpoints/projects/7/jobs/42/"
    assert paths(engine, 42) == {4: f"r2://{bucket}/{canonical}best.pt", 5: f"r2://{bucket}/{canonical}last.pt"}
    for name, content in staged.items():
        stored = pipeline.s3.get_object(Bucket=bucket, Key=f"{canonical}{name}.pt")["Body"].read()
        assert hashlib.sha256(stored).digest() == hashlib.sha256(content).digest()
    # a multipart file is verified by the store's CRC-64/NVME: the function reads none of its bytes
    assert r2.bytes_downloaded_by_key.get(f"{bucket}/staging/projects/7/jobs/42/attempts/1/last.pt", 0) == 0
    assert record["details"]["files"]["last"]["checksum_source"] == ("crc64nvme" if last == "multipart" else "store")
    # the 20 MB file is beyond the (scaled) single-request copy limit: copied in parts, re-checked after
    assert r2.count("UploadPartCopy") == (3 if last == "multipart" else 0)


def test_with_the_s3_profile_the_promotion_fails_on_r2_as_r2_would_fail_it(
    r2, endpoint, pg_url, clean_environment, monkeypatch
):
    bucket = "r2-with-s3-profile"
    pipeline, engine, handler = function_stack(endpoint, bucket, pg_url)
    monkeypatch.setenv("AWS_S3_ENDPOINT_URL", r2.endpoint)
    monkeypatch.setenv("STORAGE_PROFILE", "s3")
    add_epochs(engine, 42, {4: 0.7, 5: 0.6})
    stage(r2, bucket, {"best": FILES["small"], "last": FILES["small"]})
    messages = [m for m in pipeline.receive(expect=2) if "manifest.json" in m["Body"]]

    with pytest.raises(BatchProcessingError):  # the batch's only record failed: Lambda redelivers it
        pipeline.deliver(handler, messages)

    # S3's CopyObject computes a checksum of the copy when asked; R2 answers the header with 501
    assert ("CopyObject", 501, "NotImplemented") in [(op, status, code) for op, _, status, code in r2.rejections]
    assert paths(engine, 42) == {4: None, 5: None}
