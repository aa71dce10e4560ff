"""Trainer uploads against moto's S3: what is sent, what is stored, what happens on failure."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from ckpt.adapters.storage import MiB, make_client
from ckpt.errors import StorageUnavailable
from ckpt.trainer.upload import Uploader, UploadPolicy
from tests.support import BUCKET

SMALL_PARTS = UploadPolicy(multipart_threshold=5 * MiB, part_size=5 * MiB, concurrency=2)


def _sent_checksums(s3, header: str = "x-amz-checksum-sha256") -> list[tuple[str, str | None]]:
    """(operation, the checksum ``header``) of every request the client sends."""
    sent: list[tuple[str, str | None]] = []

    def capture(request, event_name, **_):
        checksum = request.headers.get(header)
        sent.append((event_name.rsplit(".", 1)[-1], checksum.decode() if isinstance(checksum, bytes) else checksum))

    s3.meta.events.register("before-send.s3.*", capture)
    return sent


def crc64nvme(data: bytes) -> str:
    from awscrt.checksums import crc64nvme as crc

    return base64.b64encode(crc(data).to_bytes(8, "big")).decode()


def test_a_small_file_is_one_put_carrying_its_sha256_for_the_store_to_verify(s3, tmp_path: Path):
    data = os.urandom(300_000)
    path = tmp_path / "best.pt"
    path.write_bytes(data)
    sent = _sent_checksums(s3)

    uploaded = Uploader(s3, BUCKET).upload(path, "staging/x/best.pt")

    digest = hashlib.sha256(data)
    assert (uploaded.sha256, uploaded.size, uploaded.parts) == (digest.hexdigest(), len(data), 0)
    assert sent == [("PutObject", base64.b64encode(digest.digest()).decode())]
    stored = s3.head_object(Bucket=BUCKET, Key="staging/x/best.pt", ChecksumMode="ENABLED")
    assert stored["ChecksumSHA256"] == base64.b64encode(digest.digest()).decode()


def test_a_large_file_goes_up_in_equal_parts_with_a_full_object_crc64nvme(s3, tmp_path: Path):
    data = os.urandom(12 * MiB)
    path = tmp_path / "last.pt"
    path.write_bytes(data)
    sent = _sent_checksums(s3, "x-amz-checksum-crc64nvme")

    uploaded = Uploader(s3, BUCKET, SMALL_PARTS).upload(path, "staging/x/last.pt")

    assert (uploaded.parts, uploaded.sha256) == (3, hashlib.sha256(data).hexdigest())
    assert uploaded.crc64nvme == crc64nvme(data)
    parts = [data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    assert [len(p) for p in parts] == [5 * MiB, 5 * MiB, 2 * MiB]  # all equal but the last (R2 requires it)
    part_checksums = sorted(checksum for op, checksum in sent if op == "UploadPart")
    assert part_checksums == sorted(crc64nvme(p) for p in parts)
    assert [checksum for op, checksum in sent if op == "CompleteMultipartUpload"] == [crc64nvme(data)]
    stored = s3.head_object(Bucket=BUCKET, Key="staging/x/last.pt", ChecksumMode="ENABLED")
    assert (stored["ChecksumCRC64NVME"], stored["ChecksumType"]) == (crc64nvme(data), "FULL_OBJECT")
    assert s3.get_object(Bucket=BUCKET, Key="staging/x/last.pt")["Body"].read() == data


def test_without_awscrt_parts_carry_a_crc32_and_no_sha256(s3, monkeypatch):
    import zlib

    monkeypatch.setattr("ckpt.trainer.checksums._crc64nvme", lambda: None)
    data = os.urandom(12 * MiB)
    sent = _sent_checksums(s3, "x-amz-checksum-crc32")
    sent_sha256 = _sent_checksums(s3)

    uploaded = Uploader(s3, BUCKET, SMALL_PARTS).upload(data, "staging/x/last.pt")

    assert (uploaded.parts, uploaded.crc64nvme) == (3, None)
    parts = [data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    expected = sorted(base64.b64encode(zlib.crc32(p).to_bytes(4, "big")).decode() for p in parts)
    assert sorted(checksum for op, checksum in sent if op == "UploadPart") == expected
    assert [checksum for op, checksum in sent_sha256 if op == "UploadPart"] == [None, None, None]


def test_a_failed_multipart_upload_is_aborted_and_reported(s3, monkeypatch):
    real_upload_part = s3.upload_part
    calls = {"n": 0}

    def failing_second_part(**kwargs):
        calls["n"] += 1
        if kwargs["PartNumber"] == 2:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="http://store")
        return real_upload_part(**kwargs)

    monkeypatch.setattr(s3, "upload_part", failing_second_part)

    with pytest.raises(StorageUnavailable):
        Uploader(s3, BUCKET, SMALL_PARTS).upload(os.urandom(12 * MiB), "staging/x/last.pt")

    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="staging/x/")


def test_an_unreachable_store_fails_after_bounded_retries(aws_credentials):
    client = make_client("http://127.0.0.1:1", region="us-east-1", max_attempts=2)
    with pytest.raises(StorageUnavailable):
        Uploader(client, BUCKET).upload(b"weights", "staging/x/best.pt")


def test_the_progress_bar_stays_quiet_off_a_terminal(s3, capsys):
    Uploader(s3, BUCKET).upload(os.urandom(1000), "k")
    assert capsys.readouterr().err == ""


def test_the_progress_bar_counts_every_byte_once_when_shown(s3, capsys):
    Uploader(s3, BUCKET, UploadPolicy(progress=True)).upload(os.urandom(4096), "k", label="best.pt")
    assert "best.pt: 100%" in capsys.readouterr().err
