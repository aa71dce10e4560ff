"""The storage adapter against moto's S3, and its translation of store errors into domain errors."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from botocore.stub import Stubber

from ckpt.adapters.storage import MiB, S3Storage, make_client
from ckpt.errors import ObjectChanged, ObjectMissing, StorageUnavailable
from tests.support import BUCKET


def test_head_reports_the_store_sha256_only_for_single_part_uploads(s3, storage):
    data = os.urandom(1024)
    s3.put_object(Bucket=BUCKET, Key="a", Body=data, ChecksumAlgorithm="SHA256")
    s3.put_object(Bucket=BUCKET, Key="b", Body=data)

    assert storage.head("a").sha256 == hashlib.sha256(data).hexdigest()
    assert storage.head("b").sha256 is None


def test_stream_hash_reads_the_whole_object_in_chunks(s3, storage, monkeypatch):
    monkeypatch.setattr("ckpt.adapters.storage.HASH_CHUNK_BYTES", 1000)
    data = os.urandom(10_500)
    s3.put_object(Bucket=BUCKET, Key="k", Body=data)

    streamed = storage.stream_digests("k", storage.head("k").etag)
    assert (streamed.sha256, streamed.md5, streamed.length) == (
        hashlib.sha256(data).hexdigest(),
        hashlib.md5(data).hexdigest(),
        len(data),
    )


def test_stream_hash_of_a_replaced_version_is_refused(s3, storage):
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"one")
    etag = storage.head("k").etag
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"two")

    with pytest.raises(ObjectChanged):
        storage.stream_digests("k", etag)


@pytest.mark.parametrize("size", [3 * MiB, 12 * MiB], ids=["CopyObject", "multipart-UploadPartCopy"])
def test_copy_is_conditional_on_the_verified_etag(s3, size):
    storage = S3Storage(s3, BUCKET, multipart_copy_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    data = os.urandom(size)
    s3.put_object(Bucket=BUCKET, Key="src", Body=data)
    source = storage.head("src")

    storage.copy(source, "dst", {"sha256": "x"})
    assert storage.head("dst").metadata["sha256"] == "x"
    assert s3.get_object(Bucket=BUCKET, Key="dst")["Body"].read() == data

    s3.put_object(Bucket=BUCKET, Key="src", Body=b"replaced")
    with pytest.raises(ObjectChanged):
        storage.copy(source, "dst2", {})
    with pytest.raises(ObjectMissing):
        storage.head("dst2")


def test_read_is_bounded(s3, storage):
    s3.put_object(Bucket=BUCKET, Key="big", Body=b"x" * 5000)
    body = storage.read("big", max_bytes=100)
    assert len(body) == 101  # one byte more than the limit: enough to tell it is too large


def test_list_folders_lists_one_level(s3, storage):
    for key in ("p/attempts/1/manifest.json", "p/attempts/2/best.pt", "p/attempts/10/x/y"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"")
    assert sorted(storage.list_folders("p/attempts/")) == ["p/attempts/1/", "p/attempts/10/", "p/attempts/2/"]


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("NoSuchKey", 404, ObjectMissing),
        ("PreconditionFailed", 412, ObjectChanged),
        ("InternalError", 500, StorageUnavailable),
        ("SlowDown", 503, StorageUnavailable),
        ("AccessDenied", 403, StorageUnavailable),
    ],
)
def test_store_errors_become_domain_errors(aws_credentials, code, status, error):
    client = make_client(region="us-east-1")
    storage = S3Storage(client, BUCKET)
    with Stubber(client) as stub:
        stub.add_client_error("head_object", service_error_code=code, http_status_code=status)
        with pytest.raises(error):
            storage.head("k")


def test_an_unreachable_store_is_a_transient_error(aws_credentials):
    client = make_client("http://127.0.0.1:1", region="auto", max_attempts=1)
    with pytest.raises(StorageUnavailable):
        S3Storage(client, BUCKET).head("k")


def test_the_client_is_configured_for_r2(aws_credentials):
    client = make_client("https://account.r2.cloudflarestorage.com", region="auto")
    assert client.meta.config.request_checksum_calculation == "when_required"
    assert client.meta.region_name == "auto"
    assert client.meta.endpoint_url == "https://account.r2.cloudflarestorage.com"


def _multipart_with_sha256_parts(s3, key: str, data: bytes) -> None:
    """A multipart upload whose parts carry SHA-256s (as an S3 tool may make one): its store checksum is a
    checksum of the parts' checksums."""
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key, ChecksumAlgorithm="SHA256")["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(data), 5 * MiB), start=1):
        chunk = data[start : start + 5 * MiB]
        checksum = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
        answer = s3.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk, ChecksumSHA256=checksum
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum})
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})


def test_a_multipart_objects_checksum_is_never_taken_for_the_files_sha256(s3, storage):
    data = os.urandom(11 * MiB)
    _multipart_with_sha256_parts(s3, "mp", data)

    # moto reports a checksum of checksums with no COMPOSITE marker; the '-N' ETag gives it away
    assert s3.head_object(Bucket=BUCKET, Key="mp", ChecksumMode="ENABLED").get("ChecksumSHA256")
    assert storage.head("mp").sha256 is None
    assert storage.stream_digests("mp", storage.head("mp").etag).sha256 == hashlib.sha256(data).hexdigest()


def _multipart_source(s3, storage, data):
    _multipart_with_sha256_parts(s3, "mp", data)
    return storage.head("mp")


def test_a_copy_of_a_multipart_object_reports_the_checksum_the_store_computed_for_it(s3, storage):
    data = os.urandom(11 * MiB)
    source = _multipart_source(s3, storage, data)

    copied = storage.copy(source, "dst", {})

    # the S3 profile asks CopyObject for a SHA-256 of the copied bytes: the file's own digest, not the
    # source's checksum of parts that a plain copy carries over
    assert copied.sha256 == hashlib.sha256(data).hexdigest()


def test_a_checksum_the_copy_carried_over_from_its_source_is_not_reported(s3):
    from ckpt.adapters.profiles import R2

    storage = S3Storage(s3, BUCKET, profile=R2)
    data = os.urandom(11 * MiB)
    source = _multipart_source(s3, storage, data)

    copied = storage.copy(source, "dst", {})

    carried = s3.head_object(Bucket=BUCKET, Key="dst", ChecksumMode="ENABLED")["ChecksumSHA256"]
    assert carried != base64.b64encode(hashlib.sha256(data).digest()).decode()  # moto copies the parts' checksum
    assert copied.sha256 is None
    assert (copied.size, copied.md5) == (len(data), hashlib.md5(data).hexdigest())


def test_the_etag_of_an_object_encrypted_with_a_kms_key_is_not_taken_for_its_md5(s3, storage):
    s3.put_object(Bucket=BUCKET, Key="plain", Body=b"weights")
    s3.put_object(Bucket=BUCKET, Key="kms", Body=b"weights", ServerSideEncryption="aws:kms")

    assert storage.head("plain").md5 == hashlib.md5(b"weights").hexdigest()
    assert storage.head("kms").md5 is None


def test_on_r2_a_source_replaced_during_a_multipart_copy_fails_the_copy(s3, monkeypatch):
    from ckpt.adapters.profiles import R2

    storage = S3Storage(s3, BUCKET, profile=R2, multipart_copy_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.put_object(Bucket=BUCKET, Key="src", Body=os.urandom(12 * MiB))
    source = storage.head("src")
    real_part_copy = s3.upload_part_copy

    def r2_part_copy(**kwargs):
        kwargs.pop("CopySourceIfMatch", None)  # R2 ignores the condition on UploadPartCopy
        answer = real_part_copy(**kwargs)
        if kwargs["PartNumber"] == 1:
            s3.put_object(Bucket=BUCKET, Key="src", Body=os.urandom(12 * MiB))  # replaced mid-copy
        return answer

    monkeypatch.setattr(s3, "upload_part_copy", r2_part_copy)

    with pytest.raises(ObjectChanged, match="changed while it was being copied"):
        storage.copy(source, "dst", {})


@pytest.mark.parametrize("value", ["abc", "0", "21", "\u0663", "99999999999999999999"])
def test_aws_max_attempts_that_is_not_a_sane_number_is_a_configuration_error(aws_credentials, monkeypatch, value):
    from ckpt.errors import ConfigurationError

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", value)
    with pytest.raises(ConfigurationError, match="AWS_MAX_ATTEMPTS"):
        make_client(region="us-east-1")


def test_aws_max_attempts_sets_the_retries(aws_credentials, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    assert make_client(region="us-east-1").meta.config.retries["total_max_attempts"] == 3
